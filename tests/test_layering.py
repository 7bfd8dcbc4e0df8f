"""The import graph of moemt's sources, read with ast (nothing is imported): the workflows in
layers without a cycle, the model code below the commands.

Every import counts, those inside functions too: an import put off until a call still makes the
importing module depend on the imported one.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

#: Source folders and the package each installs as (setup.cfg's package_dir).
PACKAGE_DIRS = {"moe_mt": REPO / "moe_mt", "moe_mt.cli": REPO / "cli",
                "moe_mt.data_prep": REPO / "data_prep"}  # fmt: skip

WORKFLOWS = "moe_mt.workflows"
#: The subpackages of moe_mt.workflows, lowest first: each may import those before it, never one
#: after it (docs/layout.md, "Layers").
LAYERS = ("common", "prep", "train", "translate", "export", "evaluate", "distill", "compare")

#: Imports against the layers that stay for now: (importing module, imported module) -> why.
ALLOWED_UPWARD: dict[tuple[str, str], str] = {}

#: Packages that never import the commands: the model code, and the workflows (the CLI's).
BELOW_THE_COMMANDS = {
    "moe_mt.moe": (WORKFLOWS, "moe_mt.cli"),
    "moe_mt.models": (WORKFLOWS, "moe_mt.cli"),
    "moe_mt.criterions": (WORKFLOWS, "moe_mt.cli"),
    WORKFLOWS: ("moe_mt.cli",),
}


@dataclass(frozen=True)
class Import:
    importer: str
    imported: str
    path: Path
    line: int

    def __str__(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line} imports {self.imported}"


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


@functools.cache
def _modules() -> dict[str, Path]:
    modules = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The modules an import statement names: ``from a import b`` names module ``a.b`` where
    that is one of ours, else ``a`` (b is a name in it)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        parent = module.split(".") if is_package else module.split(".")[:-1]
        parent = parent[: len(parent) - (node.level - 1)]
        base = ".".join(parent + ([node.module] if node.module else []))
    known = _modules()
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]


@functools.cache
def _imports() -> tuple[Import, ...]:
    found = []
    for module, path in _modules().items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import | ast.ImportFrom):
                found += [
                    Import(module, target, path, node.lineno)
                    for target in _targets(node, module, is_package)
                ]
    return tuple(found)


def _layer(module: str) -> int | None:
    """The index in LAYERS of the workflows subpackage holding ``module``; None outside them."""
    parts = module.split(".")
    if not _within(module, WORKFLOWS) or len(parts) < 3:
        return None
    return LAYERS.index(parts[2]) if parts[2] in LAYERS else None


def _cycle(graph: dict[str, list[Import]]) -> list[Import] | None:
    """One import cycle of ``graph`` (its imports in turn), or None: depth-first, a module met
    again while its own imports are being followed closes a cycle."""
    open_, done = set(), set()

    def follow(module: str, path: list[Import]) -> list[Import] | None:
        open_.add(module)
        for edge in graph.get(module, ()):
            if edge.imported in open_:
                begin = next(
                    (i for i, e in enumerate(path) if e.importer == edge.imported), len(path)
                )
                return [*path[begin:], edge]
            if edge.imported not in done:
                found = follow(edge.imported, [*path, edge])
                if found:
                    return found
        open_.discard(module)
        done.add(module)
        return None

    for start in sorted(graph):
        if start not in done:
            found = follow(start, [])
            if found:
                return found
    return None


def test_the_sources_are_found():
    modules = _modules()
    assert "moe_mt.cli.main" in modules and "moe_mt.data_prep.sources" in modules
    assert "moe_mt.workflows.translate.translator" in modules
    assert len(_imports()) > 500


def test_every_workflows_subpackage_has_a_layer():
    on_disk = {
        p.name for p in (REPO / "moe_mt" / "workflows").iterdir() if (p / "__init__.py").is_file()
    }
    assert on_disk == set(LAYERS), (
        f"place each subpackage in LAYERS: {sorted(on_disk ^ set(LAYERS))}"
    )


def test_no_import_cycle_in_the_workflows():
    graph: dict[str, list[Import]] = {}
    for edge in _imports():
        if _within(edge.importer, WORKFLOWS) and _within(edge.imported, WORKFLOWS):
            if edge.imported != edge.importer:
                graph.setdefault(edge.importer, []).append(edge)
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + "; ".join(map(str, cycle))


def test_no_workflows_subpackage_imports_one_above_it():
    upward = [
        edge
        for edge in _imports()
        if (low := _layer(edge.importer)) is not None
        and (high := _layer(edge.imported)) is not None
        and high > low
    ]
    unexpected = [e for e in upward if (e.importer, e.imported) not in ALLOWED_UPWARD]
    assert not unexpected, (
        "against the layers ("
        + " < ".join(LAYERS)
        + "):\n"
        + "\n".join(
            f"{e} ({LAYERS[_layer(e.importer)]} is below {LAYERS[_layer(e.imported)]})"
            for e in unexpected
        )
    )
    gone = set(ALLOWED_UPWARD) - {(e.importer, e.imported) for e in upward}
    assert not gone, f"no longer imported, remove from ALLOWED_UPWARD: {sorted(gone)}"


def test_the_model_code_and_the_workflows_do_not_import_the_commands():
    wrong = [
        edge
        for edge in _imports()
        for package, never in BELOW_THE_COMMANDS.items()
        if _within(edge.importer, package) and any(_within(edge.imported, n) for n in never)
    ]
    assert not wrong, "imports of code above the importer (BELOW_THE_COMMANDS):\n" + "\n".join(
        map(str, wrong)
    )


def test_the_layers_are_the_ones_documented():
    layout = (REPO / "docs" / "layout.md").read_text(encoding="utf-8")
    assert " < ".join(LAYERS) in layout, "docs/layout.md's Layers paragraph names another order"


def test_a_cycle_is_found_and_named():
    def edge(importer: str, imported: str) -> Import:
        return Import(importer, imported, REPO / "moe_mt" / "x.py", 1)

    graph = {"a": [edge("a", "b")], "b": [edge("b", "c"), edge("b", "d")], "d": [edge("d", "b")]}
    assert [(e.importer, e.imported) for e in _cycle(graph)] == [("b", "d"), ("d", "b")]
    assert _cycle({"a": [edge("a", "b")], "b": [edge("b", "c")]}) is None


#: The built-in families whose knowledge belongs in their records and model files.
FAMILY_NAMES = ("switch", "xmoe", "thor", "mhmoe", "soft_moe")
#: Their model and record modules, which the workflows and the CLI never import.
FAMILY_MODULES = {
    f"moe_mt.models.{name}{suffix}"
    for name in ("switch", "thor", "mhmoe", "soft_moe")
    for suffix in ("", "_options")
}
#: Modules that still special-case a family, and why; the list only shrinks.
FAMILY_SPECIAL_CASES: dict[str, str] = {}


def _names_a_family(text: str) -> bool:
    """``thor``, ``thor_models``, ``_is_thor``: a family's name as a ``_``-separated part."""
    parts = text.lower().split("_")
    joined = [f"{a}_{b}" for a, b in zip(parts, parts[1:], strict=False)]
    return any(part in FAMILY_NAMES for part in parts + joined)


def _family_mentions(path: Path) -> list[str]:
    """Where the code of ``path`` (not its docstrings, comments or prose) names a family: an
    import of a family's module, a string that is a family's name or architecture prefix, an
    identifier made of one."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    found = []
    for node in ast.walk(tree):
        what = None
        if isinstance(node, ast.Import):
            what = next((a.name for a in node.names if a.name in FAMILY_MODULES), None)
        elif isinstance(node, ast.ImportFrom):
            modules = {node.module or ""} | {f"{node.module}.{a.name}" for a in node.names}
            what = next(iter(sorted(modules & FAMILY_MODULES)), None)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            token = node.value.strip().rstrip("_")
            if id(node) not in docstrings and " " not in token and _names_a_family(token):
                what = repr(node.value)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)) and _names_a_family(node.name):
            what = node.name
        elif isinstance(node, ast.Name) and _names_a_family(node.id):
            what = node.id
        elif isinstance(node, ast.Attribute) and _names_a_family(node.attr):
            what = node.attr
        if what is not None:
            found.append(f"{path.relative_to(REPO)}:{node.lineno}: {what}")
    return found


def test_no_workflow_or_command_special_cases_a_model_family():
    """What a family does differently lives in its record (moe_mt/models/<name>_options.py) and
    model file; the workflows and the CLI ask the registry or the model."""
    mentions, special = [], set()
    for folder in (REPO / "moe_mt" / "workflows", REPO / "cli"):
        for path in sorted(folder.rglob("*.py")):
            found = _family_mentions(path)
            key = str(path.relative_to(REPO))
            if key in FAMILY_SPECIAL_CASES:
                special.add(key)
                assert found, f"{key} no longer names a family: drop it from FAMILY_SPECIAL_CASES"
            else:
                mentions += found
    assert not mentions, "\n".join(mentions)
    assert special == set(FAMILY_SPECIAL_CASES)
