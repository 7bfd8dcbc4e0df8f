"""moe_mt.moe imports torch only, never fairseq."""

import ast
import subprocess
import sys
from pathlib import Path

import moe_mt.moe

MOE_DIR = Path(moe_mt.moe.__file__).parent


def test_no_module_of_moe_imports_fairseq():
    for path in sorted(MOE_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                # torch, moe_mt itself and the standard library: nothing else (no fairseq)
                allowed = top in {"torch", "moe_mt"} or top in sys.stdlib_module_names
                assert allowed, f"{path.name} imports {name}"
                assert not name.startswith("moe_mt.") or name.startswith("moe_mt.moe"), name


def test_importing_moe_does_not_load_fairseq():
    code = "import sys, moe_mt.moe; assert 'fairseq' not in sys.modules, 'fairseq loaded'"
    subprocess.run([sys.executable, "-c", code], check=True)
