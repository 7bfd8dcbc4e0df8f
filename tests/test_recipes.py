"""Every recipe loads, and fairseq accepts the training arguments it produces (none rots unseen);
recipes compose pieces with `include` (order, relative paths, cycles, missing files)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from moe_mt.config import load_config
from moe_mt.errors import MoeMtError
from moe_mt.workflows.common.rundir import RunDir
from moe_mt.workflows.train.fairseq_args import train_args
from moe_mt.workflows.train.trainer import parse_fairseq_args
from tests.conftest import REPO, SHARED_DATA

RECIPES = sorted((REPO / "recipes").glob("*.yaml"))
FULL_SIZE = [
    path for group in ("iwslt", "wmt", "multilingual")
    for path in sorted((REPO / "recipes" / group).glob("*.yaml"))
]  # fmt: skip
FAMILIES = ("dense", "mhmoe", "softmoe", "switch", "thor", "xmoe")
IWSLT_DATA = ("europarl_en_cs", "europarl_en_lv", "europarl_en_ro", "iwslt14_de_en",
              "iwslt15_en_vi", "iwslt17_en_de", "iwslt17_en_fr")  # fmt: skip
WMT_DATA = ("wmt14_en_fr", "wmt16_en_de")


def test_recipe_count():
    # One per family plus distillation and multilingual; update when a recipe is added or removed.
    assert [p.name for p in RECIPES] == [
        "demo.yaml", "demo_distill.yaml", "demo_mhmoe.yaml", "demo_multilingual.yaml",
        "demo_softmoe.yaml", "demo_switch.yaml", "demo_thor.yaml", "demo_xmoe.yaml",
    ]  # fmt: skip
    # Full-size recipes: every family on every IWSLT-sized corpus of THOR's study (+ IWSLT'14)
    # and on both WMT corpora.
    expected = [f"iwslt/{d}_{f}.yaml" for d in IWSLT_DATA for f in FAMILIES]
    expected += [f"wmt/{d}_{f}.yaml" for d in WMT_DATA for f in FAMILIES]
    expected += [f"multilingual/iwslt17_en_xx_{f}.yaml" for f in FAMILIES]
    assert [str(p.relative_to(REPO / "recipes")) for p in FULL_SIZE] == expected


def _check(recipe: Path, run_dir: Path):
    cfg = load_config(recipe, [f"run_dir={run_dir}"])
    assert cfg.name == recipe.stem or recipe.parent.name == "recipes"
    parse_fairseq_args(train_args(cfg, RunDir(cfg.run_dir)))
    assert not run_dir.exists()  # loading and checking write nothing
    return cfg


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_loads_and_fairseq_accepts_it(recipe, tmp_path):
    _check(recipe, tmp_path / "run")


@pytest.mark.parametrize(
    "recipe",
    [REPO / "recipes" / "iwslt" / f"iwslt14_de_en_{f}.yaml" for f in FAMILIES]
    + [REPO / "recipes" / "wmt" / f"{d}_{f}.yaml" for d in WMT_DATA for f in FAMILIES],
    ids=lambda p: p.stem,
)
def test_full_size_recipe_loads_and_fairseq_accepts_it(recipe, tmp_path):
    cfg = _check(recipe, tmp_path / "run")
    family = recipe.stem.rsplit("_", 1)[1]
    size = "iwslt" if recipe.parent.name == "iwslt" else "wmt_big"
    assert cfg.model.arch.endswith(f"_transformer_{size}")
    assert cfg.data.source == recipe.stem.rsplit("_", 1)[0] and cfg.data.train is None
    if family == "thor":  # the paper's / authors' settings
        assert cfg.model.moe.num_experts == 2 and cfg.model.moe.consistency_alpha == 5.0
    if size == "iwslt":  # THOR's IWSLT'14 script
        t = cfg.train
        assert (t.lr, t.warmup_updates, t.max_tokens, t.update_freq) == (1e-3, 4000, 4096, 8)
        assert cfg.model.dropout == 0.3 and t.lr_scheduler == "inverse_sqrt"
    else:
        assert cfg.eval.legacy_bleu is True
        assert cfg.eval.legacy_bleu_compound_split is (cfg.data.tgt == "de")
        assert cfg.model.dropout == (0.3 if cfg.data.tgt == "de" else 0.1)


@pytest.mark.parametrize("data", [d for d in IWSLT_DATA if d != "iwslt14_de_en"])
def test_other_iwslt_directions_train_as_iwslt14(data, tmp_path):
    # They differ from the IWSLT'14 recipes (fairseq-checked above) only in their data piece,
    # so their model and train sections, hence their fairseq arguments, are the same.
    for family in FAMILIES:
        cfg = load_config(REPO / "recipes" / "iwslt" / f"{data}_{family}.yaml", ["run_dir=x"])
        ref = load_config(
            REPO / "recipes" / "iwslt" / f"iwslt14_de_en_{family}.yaml", ["run_dir=x"]
        )
        assert cfg.model == ref.model and cfg.train == ref.train
        assert cfg.data.source == data and not cfg.data.lowercase
        assert cfg.data.src == "en" and cfg.data.tgt == data.rsplit("_", 1)[1]


@pytest.mark.parametrize("family", FAMILIES)
def test_multilingual_recipes_are_the_iwslt_recipes_on_eight_directions(family, tmp_path):
    recipe = REPO / "recipes" / "multilingual" / f"iwslt17_en_xx_{family}.yaml"
    cfg = _check(recipe, tmp_path / "run")  # fairseq accepts its multilingual arguments
    ref = load_config(REPO / "recipes" / "iwslt" / f"iwslt14_de_en_{family}.yaml", ["run_dir=x"])
    assert cfg.model == ref.model  # same architecture and family options
    for key in ("checkpoint", "average_last", "beam", "lenpen", "thor_inference"):
        assert cfg.eval[key] == ref.eval[key], key
    assert not cfg.eval.legacy_bleu  # sacreBLEU per direction; no tokenised BLEU is quoted
    for key in ("lr", "warmup_updates", "max_tokens", "update_freq", "criterion", "fp16"):
        assert cfg.train[key] == ref.train[key], key
    assert cfg.train.max_epoch == 40 and cfg.train.sampling_temperature == 1.0
    data = cfg.data
    assert list(data.pairs) == [
        f"{d}" for x in ("de", "it", "nl", "ro") for d in (f"en-{x}", f"{x}-en")
    ]
    languages = ("de", "it", "nl", "ro")
    pairs = [(a, b) for i, a in enumerate(languages) for b in languages[i + 1 :]]
    expected = {f"en-{x}": f"iwslt17_multi_en_{x}" for x in languages}
    expected.update({f"{a}-{b}": f"iwslt17_multi_{a}_{b}" for a, b in pairs})
    assert dict(data.sources) == expected
    assert sorted(data.zero_shot) == sorted(d for a, b in pairs for d in (f"{a}-{b}", f"{b}-{a}"))
    assert data.train is None and data.valid is None and data.test is None


def test_iwslt14_is_fairseqs_standard_preparation(tmp_path):
    cfg = load_config(REPO / "recipes" / "iwslt" / "iwslt14_de_en_dense.yaml", ["run_dir=x"])
    assert (cfg.data.src, cfg.data.tgt, cfg.data.source) == ("de", "en", "iwslt14_de_en")
    assert cfg.data.lowercase and cfg.data.spm.vocab_size == 10000 and cfg.data.spm.joint


# -- include ----------------------------------------------------------------------------------


def _yaml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_include_order_relative_paths_and_nesting(tmp_path):
    _yaml(tmp_path / "pieces" / "base.yaml", "model: {dropout: 0.1, attention_dropout: 0.1}\n")
    _yaml(
        tmp_path / "pieces" / "data" / "d.yaml",
        "include: [../base.yaml]\n"  # relative to d.yaml
        "data: {src: en, tgt: de, train: corpus/train, valid: corpus/valid}\n"
        "model: {dropout: 0.2}\ntrain: {lr: 0.5, warmup_updates: 7}\n",
    )
    _yaml(tmp_path / "pieces" / "s.yaml", "train: {lr: 0.25, max_update: 9}\n")
    recipe = _yaml(
        tmp_path / "exp" / "r.yaml",
        "include: [../pieces/data/d.yaml, ../pieces/s.yaml]\nname: r\ntrain: {max_update: 11}\n",
    )
    cfg = load_config(recipe, ["train.warmup_updates=13"])
    # Depth first, later over earlier, the recipe itself last, then the command line.
    assert cfg.model.attention_dropout == 0.1  # base only
    assert cfg.model.dropout == 0.2  # d over base
    assert cfg.train.lr == 0.25  # s over d
    assert cfg.train.max_update == 11  # the recipe over s
    assert cfg.train.warmup_updates == 13  # the override over d
    # Paths are relative to the file that states them.
    assert cfg.data.train == str(tmp_path / "pieces" / "data" / "corpus" / "train")
    assert "include" not in cfg


def test_include_errors_name_the_file(tmp_path):
    a = _yaml(tmp_path / "a.yaml", "include: [b.yaml]\nname: a\n")
    b = _yaml(tmp_path / "b.yaml", "include: [sub/c.yaml]\n")
    c = _yaml(tmp_path / "sub" / "c.yaml", "include: [../a.yaml]\n")
    with pytest.raises(MoeMtError) as err:
        load_config(a)
    assert str(err.value) == f"{c}: include cycle: {a} -> {b} -> {c} -> {a}"

    _yaml(tmp_path / "self.yaml", "include: [self.yaml]\n")
    with pytest.raises(MoeMtError, match=r"self.yaml: include cycle: .*self.yaml -> .*self.yaml$"):
        load_config(tmp_path / "self.yaml")

    missing = _yaml(tmp_path / "m.yaml", "include: [nope/x.yaml]\nname: m\n")
    with pytest.raises(MoeMtError) as err:
        load_config(missing)
    assert (
        str(err.value) == f"{missing}: include 'nope/x.yaml': no such file {tmp_path}/nope/x.yaml"
    )

    bad = _yaml(tmp_path / "bad.yaml", "include: {a: 1}\n")
    with pytest.raises(MoeMtError, match=f"{bad}: 'include' must be a list of YAML paths"):
        load_config(bad)

    # A bad key in a piece is reported against the piece, not the recipe.
    piece = _yaml(tmp_path / "p.yaml", "train: {lrr: 1}\n")
    recipe = _yaml(tmp_path / "r.yaml", "include: [p.yaml]\nname: r\n")
    with pytest.raises(MoeMtError, match=f"{piece}: unknown key 'train.lrr'"):
        load_config(recipe)


def test_a_run_directory_config_is_flat(tmp_path):
    # The resolved config a run writes holds no `include`: reloading it needs no pieces.
    from moe_mt.config import to_yaml

    cfg = load_config(REPO / "recipes" / "iwslt" / "iwslt14_de_en_thor.yaml", ["run_dir=x"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(to_yaml(cfg))
    again = load_config(run)
    assert again.model == cfg.model and again.train == cfg.train and again.data == cfg.data


# -- CI-sized runs ----------------------------------------------------------------------------


@pytest.mark.slow
def test_ci_family_runs_script_with_a_tiny_budget(tmp_path):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared corpora not present at {SHARED_DATA}")
    env = {**os.environ, "MOEMT_SHARED_DATA": str(SHARED_DATA), "CI_RUNS": str(tmp_path)}
    env.update({"CI_UPDATES": "4", "CI_VALID_LINES": "50"})
    result = subprocess.run(
        ["bash", str(REPO / "recipes" / "ci_family_runs.sh"), "dense", "thor"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for family in ("dense", "thor"):
        report = tmp_path / f"ci_iwslt14_{family}" / "eval" / "test" / "report.json"
        assert report.is_file(), result.stdout[-3000:]
    assert "ci_iwslt14_thor" in (tmp_path / "summary.tsv").read_text()


@pytest.mark.slow
def test_ci_family_runs_script_on_the_multilingual_data(tmp_path):
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared corpora not present at {SHARED_DATA}")
    env = {**os.environ, "MOEMT_SHARED_DATA": str(SHARED_DATA), "CI_RUNS": str(tmp_path)}
    env.update({"CI_DATA": "multilingual", "CI_UPDATES": "4", "CI_VALID_LINES": "20"})
    result = subprocess.run(
        ["bash", str(REPO / "recipes" / "ci_family_runs.sh"), "switch"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(
        (tmp_path / "ci_multilingual_switch" / "eval" / "test" / "report.json").read_text()
    )
    assert sorted(report["directions"]) == sorted(
        ["en-de", "de-en", "en-nl", "nl-en", "en-ro", "ro-en"]
    )
    assert all(d["lines"] == 20 for d in report["directions"].values())
    line = (tmp_path / "summary.tsv").read_text().splitlines()[-1].split("\t")
    assert line[0] == "ci_multilingual_switch" and float(line[5]) == pytest.approx(
        report["average"]["BLEU"]["score"], abs=0.01
    )
