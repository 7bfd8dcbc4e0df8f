"""Packaging: every package is listed in setup.cfg, and nothing installs as a generic
top-level module (cli/ and data_prep/ live under the moe_mt namespace)."""

from __future__ import annotations

import configparser
import importlib.util

from tests.conftest import REPO


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
