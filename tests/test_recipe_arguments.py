"""Every recipe, with every piece and family, resolves to the fairseq arguments recorded in
``tests/recorded/fairseq_arguments.json``: the argument list ``moemt train`` passes and the
namespace fairseq builds from it (after the architecture fills its defaults).

The record guards refactors of the schema, the option declarations and the family records: a
change to what fairseq receives shows here as a diff, case by case. After a change that is meant
to alter the arguments, rewrite the record with ``MOEMT_RECORD_ARGUMENTS=1 pytest
tests/test_recipe_arguments.py`` and say in the commit which cases changed and why.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import moe_mt
from moe_mt.config import load_config
from moe_mt.workflows.common.rundir import RunDir
from moe_mt.workflows.train.fairseq_args import train_args

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
RECORD = Path(__file__).with_name("recorded") / "fairseq_arguments.json"
RECORD_ENV = "MOEMT_RECORD_ARGUMENTS"
#: Recipes the family pieces are tried on: one with a schedule piece, one without.
FAMILY_BASES = ("iwslt/iwslt14_de_en.yaml", "europarl/en_ro.yaml")
FAMILY_PIECES = sorted(p.name for p in (RECIPES / "families").glob("*.yaml"))
MOE_PIECES = sorted(p.name for p in (RECIPES / "pieces" / "moe").glob("*.yaml"))
#: ``model.family`` given as an override, at the demo size.
FAMILIES = ("dense", "switch", "xmoe", "thor", "mhmoe", "soft_moe")


def _cases() -> dict[str, tuple[str, tuple[str, ...]]]:
    """case name -> (recipe, pieces and overrides), all relative to ``recipes/``."""
    cases = {}
    for path in sorted(RECIPES.rglob("*.yaml")):
        rel = path.relative_to(RECIPES)
        if rel.parts[0] not in ("pieces", "families"):
            cases[str(rel)] = (str(rel), ())
    for base in FAMILY_BASES:
        for piece in FAMILY_PIECES:
            cases[f"{base} + families/{piece}"] = (base, (f"families/{piece}",))
    for piece in MOE_PIECES:
        piece = f"pieces/moe/{piece}"
        cases[f"demo_switch.yaml + {piece}"] = ("demo_switch.yaml", (piece,))
    for family in FAMILIES:
        cases[f"demo.yaml model.family={family}"] = ("demo.yaml", (f"model.family={family}",))
    return cases


def _portable(value):
    """Paths of this checkout written as ``<repo>`` so the record holds on every machine."""
    if isinstance(value, str):
        return value.replace(str(REPO), "<repo>")
    if isinstance(value, (list, tuple)):
        return [_portable(v) for v in value]
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return repr(value)


def _plugin_options() -> set[str]:
    """``moe_<name>`` of the options only test plugins declare (tests/toy_router.py joins every
    routed family once imported): left out, so the record holds whichever tests ran before."""
    from moe_mt.models import families

    built_in = {o.name for f in families.families() if f.model_module for o in f.options}
    declared = {o.name for f in families.families() for o in f.all_options()}
    return {f"moe_{name}" for name in declared - built_in}


def _without(argv: list[str], keys: set[str]) -> list[str]:
    flags = {"--" + key.replace("_", "-") for key in keys}
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in flags:
            skip = True  # and its value
        else:
            out.append(arg)
    return out


def resolve(recipe: str, extra: tuple[str, ...]) -> dict:
    """The argument list and fairseq's parsed namespace for one case."""
    from fairseq import options

    moe_mt.register()
    arguments = [str(RECIPES / e) if e.endswith(".yaml") else e for e in extra]
    cfg = load_config(RECIPES / recipe, arguments)
    plugins = _plugin_options()
    argv = train_args(cfg, RunDir(cfg.run_dir))
    namespace = vars(options.parse_args_and_arch(options.get_training_parser(), argv))
    namespace = {k: v for k, v in sorted(namespace.items()) if k not in plugins}
    return {"argv": _portable(_without(argv, plugins)), "namespace": _portable(namespace)}


CASES = _cases()


@pytest.fixture(scope="module")
def record():
    if os.environ.get(RECORD_ENV):
        return None
    return json.loads(RECORD.read_text())


@pytest.mark.parametrize("case", sorted(CASES))
def test_recipe_resolves_to_the_recorded_arguments(case, record, monkeypatch):
    monkeypatch.chdir(REPO)
    got = resolve(*CASES[case])
    if record is None:  # MOEMT_RECORD_ARGUMENTS=1: rewrite the record
        written = json.loads(RECORD.read_text()) if RECORD.is_file() else {}
        written[case] = got
        RECORD.parent.mkdir(exist_ok=True)
        RECORD.write_text(json.dumps(dict(sorted(written.items())), indent=1) + "\n")
        return
    assert case in record, f"{case}: not recorded; rerun with {RECORD_ENV}=1"
    want = record[case]
    assert got["argv"] == want["argv"]
    changed = {
        k: (want["namespace"].get(k), got["namespace"].get(k))
        for k in set(want["namespace"]) | set(got["namespace"])
        if want["namespace"].get(k, "<absent>") != got["namespace"].get(k, "<absent>")
    }
    assert not changed, f"{case}: fairseq's namespace changed (recorded, now): {changed}"


def test_every_case_is_recorded_and_every_record_is_a_case(record):
    if record is None:
        pytest.skip(f"{RECORD_ENV} is set: the record is being rewritten")
    assert sorted(record) == sorted(CASES)
