"""Packaging: every package is listed in setup.cfg, and nothing installs as a generic
top-level module (cli/ and data_prep/ live under the moe_mt namespace). And the tree's own
references: docs/layout.md names every benchmark and script, a path a recipe's comment cites
exists, and the packages hold one file lock."""

from __future__ import annotations

import configparser
import importlib.util
import re

import pytest

from tests.conftest import REPO

#: The repository's top-level folders: where a path cited in a comment starts.
_TOP_FOLDERS = "benchmarks cli corpora data_prep docs moe_mt recipes scripts tests".split()


def _setup_cfg():
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    return parser


def _listed_packages() -> set[str]:
    return {p.strip() for p in _setup_cfg()["options"]["packages"].split() if p.strip()}


def _package_dirs() -> dict[str, str]:
    mapping = {}
    for line in _setup_cfg()["options"]["package_dir"].strip().splitlines():
        name, _, folder = (part.strip() for part in line.partition("="))
        mapping[name] = folder
    return mapping


def test_every_package_on_disk_is_listed():
    on_disk = set()
    for name, folder in _package_dirs().items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder)
            parts = [p for p in relative.parts if p]
            on_disk.add(".".join([name, *parts]))
    assert on_disk == _listed_packages()


def test_no_generic_top_level_modules():
    assert all(p == "moe_mt" or p.startswith("moe_mt.") for p in _listed_packages())
    assert importlib.util.find_spec("moe_mt.cli") is not None
    assert importlib.util.find_spec("moe_mt.data_prep") is not None


def test_console_script_and_pinned_dependencies():
    cfg = _setup_cfg()
    assert "moemt = moe_mt.cli.main:app" in cfg["options.entry_points"]["console_scripts"]
    requires = cfg["options"]["install_requires"]
    assert "fairseq==0.12.2" in requires
    setup_sh = (REPO / "scripts" / "setup.sh").read_text()
    # torch is installed pinned before the package, and pip is never upgraded.
    assert setup_sh.index('pip_install "torch==$TORCH_VERSION"') < setup_sh.index("pip_install -e")
    assert "--upgrade pip" not in setup_sh and "-U pip" not in setup_sh


def test_readme_test_command_is_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in readme and "bash scripts/test.sh" in ci


def _layout_entry(folder: str) -> str:
    """The lines of docs/layout.md's tree from ``folder/`` to the next top-level entry."""
    tree = (REPO / "docs" / "layout.md").read_text(encoding="utf-8").split("```")[1]
    lines = tree.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{folder}/ "))
    end = next(
        (i for i in range(start + 1, len(lines)) if lines[i][:1] not in ("", " ")), len(lines)
    )
    return "\n".join(lines[start:end])


@pytest.mark.parametrize("folder", ["benchmarks", "scripts"])
def test_layout_names_every_benchmark_and_script(folder):
    """One line per file, each file on disk and no other: the list grows with the folder."""
    listed = re.findall(r"^  (\S+)\s", _layout_entry(folder), re.MULTILINE)
    on_disk = [p.name for p in (REPO / folder).iterdir() if p.is_file()]
    assert sorted(listed) == sorted(n for n in on_disk if not n.startswith("."))


def test_paths_cited_in_recipe_comments_exist():
    """A recipe's comment that names a file of the repository (``data_prep/sources.py``) names
    one that is there; globs (``recipes/demo*.yaml``) and run directories are not checked."""
    path = re.compile(rf"(?<![\w./-])((?:{'|'.join(_TOP_FOLDERS)})/[\w./-]*\w)(?![\w/*{{<-]|\.\w)")
    missing = []
    for recipe in sorted((REPO / "recipes").rglob("*")):
        if recipe.suffix not in (".yaml", ".sh"):
            continue
        for number, line in enumerate(recipe.read_text(encoding="utf-8").splitlines(), 1):
            for cited in path.findall(line.partition("#")[2]):
                if not (REPO / cited).exists():
                    missing.append(f"{recipe.relative_to(REPO)}:{number}: {cited}")
    assert missing == []


def test_one_file_lock_in_the_packages():
    """The run directory and the download cache lock through moe_mt/locking.py; a second flock
    implementation in the installed packages would drift from it."""
    users = sorted(
        str(source.relative_to(REPO))
        for folder in ("moe_mt", "data_prep", "cli")
        for source in (REPO / folder).rglob("*.py")
        if re.search(r"^\s*(import|from) fcntl\b", source.read_text(encoding="utf-8"), re.M)
    )
    assert users == ["moe_mt/locking.py"]
