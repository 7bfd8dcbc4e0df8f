"""The CLI explains itself: schema help, `moemt config` with provenance, `moemt ls`, help texts
with true examples, commands in pipeline order, one-line usage errors. No training here."""

from __future__ import annotations

import dataclasses
import re
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from moe_mt.cli.main import app
from moe_mt.config import (
    DEFAULT_ORIGIN,
    OVERRIDE_ORIGIN,
    ExperimentConfig,
    MoEConfig,
    family_default_origin,
    load_config,
    load_config_with_origins,
    schema_keys,
)
from tests.conftest import REPO

PIPELINE_ORDER = ["prep", "train", "eval", "translate", "distill", "export", "compare", "config",
                  "ls", "version"]  # fmt: skip
RECIPES = REPO / "recipes"


def _invoke(*args: str):
    result = CliRunner().invoke(app, list(args))
    # Every outcome, error or not, is an exit with a code; any other exception is a traceback.
    assert isinstance(result.exception, SystemExit | None), result.exception
    return result


def _dataclasses(cls):
    yield cls
    for item in dataclasses.fields(cls):
        if dataclasses.is_dataclass(item.type):
            yield from _dataclasses(item.type)


def test_every_schema_field_has_help():
    for cls in _dataclasses(ExperimentConfig):
        if cls is MoEConfig:
            continue  # generated from the model families' option specs
        for item in dataclasses.fields(cls):
            assert item.metadata.get("help", "").strip(), f"{cls.__name__}.{item.name}: no help"
    keys = schema_keys()
    assert keys["eval.beam"].help and not keys["eval.beam"].section
    assert keys["model.moe"].section and "model.moe.top_k" in keys


def test_origins_name_recipe_piece_override_and_default():
    recipe = RECIPES / "iwslt" / "iwslt14_de_en.yaml"
    family = RECIPES / "families" / "switch.yaml"  # a piece named on the command line
    cfg, origins = load_config_with_origins(recipe, [str(family), "eval.beam=4"])
    # one loading path, the same result
    assert cfg == load_config(recipe, [str(family), "eval.beam=4"])
    assert origins["model.size"] == str(recipe)
    assert origins["model.family"] == str(family)
    assert origins["model.moe.num_experts"] == family_default_origin("switch")  # not restated
    assert Path(origins["data.source"]).name == "iwslt14_de_en.yaml"
    assert origins["eval.beam"] == OVERRIDE_ORIGIN
    assert origins["train.fairseq_args"] == DEFAULT_ORIGIN
    assert set(origins) == {k for k, doc in schema_keys().items() if not doc.section}


def test_origin_of_a_later_piece_wins(tmp_path):
    (tmp_path / "a.yaml").write_text("train:\n  lr: 0.5\n  seed: 3\n")
    (tmp_path / "b.yaml").write_text("train:\n  lr: 0.25\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "include: [a.yaml, b.yaml]\nname: r\ndata: {src: en, tgt: de, train: x, valid: y}\n"
        "model:\n  args: {encoder_normalize_before: true}\n"
    )
    cfg, origins = load_config_with_origins(recipe)
    assert cfg.train.lr == 0.25 and origins["train.lr"] == str(tmp_path / "b.yaml")
    assert origins["train.seed"] == str(tmp_path / "a.yaml")
    assert origins["model.args"] == str(recipe)  # a dict-valued key is one leaf
    assert origins["data.src"] == str(recipe)


def test_config_command_prints_value_origin_and_help():
    result = _invoke("config", str(RECIPES / "demo.yaml"), "eval", "eval.beam=4")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    beam = lines.index("eval.beam = 4  (override)")
    assert lines[beam + 1].strip() == schema_keys()["eval.beam"].help
    assert any(re.match(r"eval\.checkpoint = last  \(.*recipes/demo\.yaml\)$", ln) for ln in lines)
    assert "eval.lenpen = 1.0  (default)" in lines
    assert not any(line.startswith(("train.", "model.")) for line in lines)

    leaf = _invoke("config", str(RECIPES / "demo_switch.yaml"), "model.moe.num_experts")
    assert leaf.exit_code == 0 and leaf.stdout.startswith("model.moe.num_experts = 8  (")


def test_config_unknown_key_is_one_line_with_closest():
    result = _invoke("config", str(RECIPES / "demo.yaml"), "eval.bem")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        "error: unknown key 'eval.bem' (closest: eval.beam, eval.seed, eval.name)"
    ]


def test_ls_kinds():
    archs = _invoke("ls", "archs")
    assert archs.exit_code == 0, archs.output
    rows = {line.split()[0]: line.split() for line in archs.stdout.splitlines() if line.strip()}
    assert rows["switch_transformer_demo"][1] == "switch"
    assert rows["moemt_transformer_wmt_big"][1:6] == ["dense", "6+6", "1024", "4096", "16"]
    assert "transformer_wmt_en_de" not in rows  # fairseq's own architectures are not moemt's

    recipes = _invoke("ls", "recipes").stdout.splitlines()
    assert "recipes/demo_switch.yaml" in recipes or any(
        line.endswith("recipes/demo_switch.yaml") for line in recipes
    )
    assert not any("/pieces/" in line for line in recipes)
    # The family pieces come last, under their own heading.
    heading = next(i for i, line in enumerate(recipes) if line.startswith("family pieces"))
    listed = [line for line in recipes[heading + 1 :] if not line.startswith(" ")]
    assert [Path(line).name for line in listed] == [
        f"{f}.yaml" for f in ("deepseek", "dense", "mhmoe", "soft_moe", "switch", "thor", "xmoe")
    ]
    demo = next(i for i, line in enumerate(recipes) if line.endswith("demo.yaml"))
    assert recipes[demo + 1].strip().startswith("The shipped demo")

    sources = _invoke("ls", "sources").stdout
    assert "iwslt14_de_en" in sources and "wmt16_en_de" in sources

    criteria = _invoke("ls", "criteria").stdout
    assert "label_smoothed_cross_entropy  (default of dense)" in criteria
    assert "thor_label_smoothed_cross_entropy  (default of thor)" in criteria
    names = [line.split()[0] for line in criteria.splitlines() if not line.startswith(" ")]
    assert "cross_entropy" not in names  # fairseq's other criterions are left out
    assert len(names) == 4


def test_ls_unknown_kind_is_one_line():
    result = _invoke("ls", "models")
    assert result.exit_code == 1
    assert result.stderr.strip() == (
        "error: unknown kind 'models': one of archs, recipes, sources, criteria"
    )


def test_commands_in_pipeline_order():
    result = _invoke("--help")
    assert result.exit_code == 0
    listed = re.findall(r"^│ (\w+) ", result.stdout, flags=re.MULTILINE)
    assert listed == PIPELINE_ORDER


def _examples(command: str) -> list[list[str]]:
    result = _invoke(command, "--help")
    assert result.exit_code == 0, result.output
    text = result.stdout.partition("Examples:")[2]
    commands = []
    for line in text.splitlines():
        line = line.strip().split(" # ")[0]
        if "moemt " in line:
            commands.append(shlex.split(line.split("moemt ", 1)[1].split(" <")[0]))
    return commands


@pytest.mark.parametrize("command", PIPELINE_ORDER)
def test_help_ends_with_true_examples(command):
    examples = _examples(command)
    assert 2 <= len(examples) <= 3, examples
    for argv in examples:
        assert argv[0] == command
        recipes = [a for a in argv if a.startswith("recipes/")]
        if recipes:  # an example's recipe exists and takes its pieces and overrides
            pieces = [str(REPO / piece) for piece in recipes[1:]]
            load_config(REPO / recipes[0], [*pieces, *(a for a in argv if "=" in a)])


def test_eval_help_lists_the_eval_keys():
    result = _invoke("eval", "--help")
    flat = " ".join(result.stdout.replace("│", " ").split())
    for key, doc in schema_keys().items():
        if key.startswith("eval.") and not doc.section:
            assert key in flat, key


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train"], "error: moemt train: Missing argument 'config'. (see moemt train --help)"),
        (["prep", "x.yaml", "--bogus"], "error: moemt prep: No such option: --bogus"),
        (["nosuch"], "error: moemt: No such command 'nosuch'."),
    ],
)
def test_usage_errors_are_one_line(argv, message):
    result = _invoke(*argv)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), result.stderr


def test_config_takes_a_family_piece_beside_the_recipe():
    recipe, piece = RECIPES / "europarl" / "en_ro.yaml", RECIPES / "families" / "thor.yaml"
    result = _invoke("config", str(recipe), str(piece), "model")
    assert result.exit_code == 0, result.output
    assert "model.arch = thor_transformer_iwslt  (named by model.family and model.size)" in (
        result.stdout
    )
    family = next(line for line in result.stdout.splitlines() if line.startswith("model.family"))
    assert family.startswith("model.family = thor  (") and family.endswith("families/thor.yaml)")
    named = _invoke("config", str(recipe), str(piece), "name")
    assert "name = europarl_en_ro_thor" in named.stdout  # resolved, not ${model.family}


def test_config_of_a_section_shows_the_familys_keys_and_its_defaults():
    """Issue 34, item 14: the values the family fills in, not `null (default)`, and none of
    another family's keys."""
    result = _invoke("config", str(RECIPES / "demo_thor.yaml"), "model.moe")
    assert result.exit_code == 0, result.output
    keys = [line.split(" = ")[0] for line in result.stdout.splitlines() if " = " in line]
    assert "model.moe.granularity = batch  (default of family thor)" in result.stdout
    assert "model.moe.top_k" not in keys and "model.moe.heads" not in keys  # Switch's, MH-MoE's
    assert "model.moe.num_experts" in keys


def test_train_help_says_overwrite_deletes_the_eval_reports_too():
    """Issue 35, T2: --overwrite deletes eval/ as well; the help says so."""
    result = _invoke("train", "--help")
    assert result.exit_code == 0, result.output
    text = " ".join(re.sub(r"[│\s]+", " ", result.stdout).split())
    assert "checkpoints, logs and eval reports" in text
