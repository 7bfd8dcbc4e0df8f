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
GROUPS = ("europarl", "iwslt", "multilingual", "wmt")  # recipes grouped by data
FULL_SIZE = [path for group in GROUPS for path in sorted((REPO / "recipes" / group).glob("*.yaml"))]
FAMILY_DIR = REPO / "recipes" / "families"
FAMILIES = ("dense", "mhmoe", "soft_moe", "switch", "thor", "xmoe")
#: The IWSLT-size data sets of THOR's study (+ IWSLT'14): data set -> its recipe.
IWSLT_DATA = {
    "europarl_en_cs": "europarl/en_cs.yaml", "europarl_en_lv": "europarl/en_lv.yaml",
    "europarl_en_ro": "europarl/en_ro.yaml", "iwslt14_de_en": "iwslt/iwslt14_de_en.yaml",
    "iwslt15_en_vi": "iwslt/iwslt15_en_vi.yaml", "iwslt17_en_de": "iwslt/iwslt17_en_de.yaml",
    "iwslt17_en_fr": "iwslt/iwslt17_en_fr.yaml",
}  # fmt: skip
WMT_DATA = ("wmt14_en_fr", "wmt16_en_de")


def _composed(recipe: str, family: str, *overrides: str):
    """A data set's recipe with a family's piece, as `moemt train RECIPE PIECE` composes them."""
    return load_config(REPO / "recipes" / recipe, [str(FAMILY_DIR / f"{family}.yaml"), *overrides])


def test_recipe_count():
    # One per family plus distillation, multilingual, upcycling, Switch with EOM / CMR, the
    # DeepSeek-style piece and expert choice; update when a recipe is added or removed.
    assert [p.name for p in RECIPES] == [
        "demo.yaml", "demo_deepseek.yaml", "demo_distill.yaml", "demo_expert_choice.yaml",
        "demo_mhmoe.yaml", "demo_multilingual.yaml", "demo_soft_moe.yaml", "demo_switch.yaml",
        "demo_switch_cmr.yaml", "demo_switch_eom.yaml", "demo_thor.yaml", "demo_upcycle.yaml",
        "demo_xmoe.yaml",
    ]  # fmt: skip
    # Full-size recipes: one per data set (the family is a piece given beside it): every
    # IWSLT-sized corpus of THOR's study (+ IWSLT'14), both WMT corpora, IWSLT'17 multilingual.
    expected = sorted([*IWSLT_DATA.values(), *(f"wmt/{d}.yaml" for d in WMT_DATA),
                       "multilingual/iwslt17_en_xx.yaml"])  # fmt: skip
    assert [str(p.relative_to(REPO / "recipes")) for p in FULL_SIZE] == expected
    # A piece per family, and the DeepSeek-style piece of the switch family.
    assert sorted(p.stem for p in FAMILY_DIR.glob("*.yaml")) == sorted([*FAMILIES, "deepseek"])


@pytest.mark.parametrize("family", FAMILIES)
def test_a_family_piece_names_the_architecture_of_the_recipes_size(family):
    prefix = "moemt" if family == "dense" else family
    for recipe, size, data in (
        ("europarl/en_ro.yaml", "iwslt", "europarl_en_ro"),
        ("wmt/wmt16_en_de.yaml", "wmt_big", "wmt16_en_de"),
    ):
        cfg = _composed(recipe, family)
        assert cfg.model.arch == f"{prefix}_transformer_{size}"
        assert (cfg.model.family, cfg.model.size) == (family, size)
        assert cfg.name == f"{data}_{family}"  # a run per data set and family
        assert Path(cfg.run_dir).name == cfg.name
    demo = load_config(REPO / "recipes" / f"demo_{family}.yaml") if family != "dense" else None
    if demo is not None:  # the demos compose the same pieces
        assert demo.model.arch == f"{family}_transformer_demo" and demo.name == f"demo_{family}"


def test_the_last_source_that_names_the_architecture_decides(tmp_path):
    # One source that names both, and disagrees with itself, is refused.
    with pytest.raises(MoeMtError, match=r"model.family=switch contradicts model.arch=moemt_"):
        both = ["model.family=switch", "model.arch=moemt_transformer_demo"]
        load_config(REPO / "recipes" / "demo.yaml", both)
    # Otherwise the last source that names the architecture decides: an arch on the command
    # line replaces the recipe's size (and family) ...
    cfg = load_config(REPO / "recipes" / "demo.yaml", ["model.arch=xmoe_transformer_wmt"])
    assert (cfg.model.arch, cfg.model.family, cfg.model.size) == (
        "xmoe_transformer_wmt",
        "xmoe",
        "wmt",
    )
    # ... and a family or size replaces an arch, keeping what it said of the other.
    distill = REPO / "recipes" / "demo_distill.yaml"  # names its arch (the student's) outright
    assert load_config(distill, ["model.family=switch"]).model.arch == "switch_transformer_demo"
    assert load_config(distill, ["model.size=wmt"]).model.arch == "moemt_transformer_wmt"
    # A run directory's config (all three, consistent) reloads as it was.
    again = load_config(REPO / "recipes" / "demo_switch.yaml")
    assert (again.model.arch, again.model.family, again.model.size) == (
        "switch_transformer_demo",
        "switch",
        "demo",
    )
    with pytest.raises(MoeMtError, match="nope.yaml: no such recipe piece"):
        load_config(REPO / "recipes" / "demo.yaml", ["nope.yaml"])


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
    ("data", "family"),
    [("iwslt14_de_en", f) for f in FAMILIES] + [(d, f) for d in WMT_DATA for f in FAMILIES],
)
def test_full_size_recipe_loads_and_fairseq_accepts_it(data, family, tmp_path):
    recipe = IWSLT_DATA.get(data, f"wmt/{data}.yaml")
    cfg = _composed(recipe, family, f"run_dir={tmp_path / 'run'}")
    parse_fairseq_args(train_args(cfg, RunDir(cfg.run_dir)))
    assert not (tmp_path / "run").exists()  # loading and checking write nothing
    size = "wmt_big" if data in WMT_DATA else "iwslt"
    assert cfg.model.arch.endswith(f"_transformer_{size}")
    assert cfg.data.source == data and cfg.data.train is None
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
    # They differ from the IWSLT'14 recipe (fairseq-checked above) only in their data piece,
    # so their model and train sections, hence their fairseq arguments, are the same.
    for family in FAMILIES:
        cfg = _composed(IWSLT_DATA[data], family, "run_dir=x")
        ref = _composed(IWSLT_DATA["iwslt14_de_en"], family, "run_dir=x")
        assert cfg.model == ref.model and cfg.train == ref.train
        assert cfg.data.source == data and not cfg.data.lowercase
        assert cfg.data.src == "en" and cfg.data.tgt == data.rsplit("_", 1)[1]


@pytest.mark.parametrize("family", FAMILIES)
def test_multilingual_recipes_are_the_iwslt_recipes_on_eight_directions(family, tmp_path):
    cfg = _composed("multilingual/iwslt17_en_xx.yaml", family, f"run_dir={tmp_path / 'run'}")
    parse_fairseq_args(train_args(cfg, RunDir(cfg.run_dir)))  # its multilingual arguments
    ref = _composed(IWSLT_DATA["iwslt14_de_en"], family, "run_dir=x")
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
    cfg = load_config(REPO / "recipes" / "iwslt" / "iwslt14_de_en.yaml", ["run_dir=x"])
    assert cfg.model.arch == "moemt_transformer_iwslt" and cfg.name == "iwslt14_de_en_dense"
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

    cfg = _composed("iwslt/iwslt14_de_en.yaml", "thor", "run_dir=x")
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


def test_regulariser_and_upcycling_demos_compose_the_switch_demo():
    eom = load_config(REPO / "recipes" / "demo_switch_eom.yaml")
    cmr = load_config(REPO / "recipes" / "demo_switch_cmr.yaml")
    upcycle = load_config(REPO / "recipes" / "demo_upcycle.yaml")
    for cfg in (eom, cmr, upcycle):
        assert cfg.model.arch == "switch_transformer_demo" and cfg.model.moe.num_experts == 8
    assert (eom.model.moe.eom, eom.model.moe.cmr) == (0.2, False)
    assert (cmr.model.moe.cmr, cmr.model.moe.cmr_gate_dropout, cmr.model.moe.eom) == (
        True,
        0.2,
        0.0,  # the family's default, written into the config
    )
    # Resolved relative to the recipe, whatever the working directory.
    assert upcycle.train.upcycle_from == str(REPO / "runs/demo/checkpoints/checkpoint_last.pt")
    fairseq = load_config(
        REPO / "recipes" / "demo_switch.yaml",
        [str(REPO / "recipes" / "pieces" / "moe" / "fairseq_conventions.yaml")],
    )
    assert (fairseq.model.moe.capacity_formula, fairseq.model.moe.second_expert_policy) == (
        "fairseq",
        "sampling",
    )
    args = train_args(fairseq, RunDir(fairseq.run_dir))
    assert "--moe-capacity-formula" in args and "--moe-balance-choices" in args
    parse_fairseq_args(args)


def test_the_wu2021_reproduction_recipe_is_the_papers_command(tmp_path):
    """recipes/multi30k/wu2021_tiny.yaml gives fairseq the settings of Wu et al. 2021's
    transformer_tiny run (their command and their fork's defaults, SOURCE.md), on one process:
    2 GPUs x 4,096 tokens is 4,096 tokens x update_freq 2."""
    recipe = REPO / "recipes" / "multi30k" / "wu2021_tiny.yaml"
    cfg = load_config(recipe, [f"run_dir={tmp_path / 'run'}"])
    from fairseq import options

    parse_fairseq_args(train_args(cfg, RunDir(cfg.run_dir)))  # registers moemt's archs
    args = options.parse_args_and_arch(
        options.get_training_parser(), train_args(cfg, RunDir(cfg.run_dir))
    )
    expected = {
        "arch": "moemt_transformer_tiny", "encoder_layers": 4, "decoder_layers": 4,
        "encoder_embed_dim": 128, "encoder_ffn_embed_dim": 256, "encoder_attention_heads": 4,
        "share_all_embeddings": True, "dropout": 0.3, "attention_dropout": 0.0,
        "activation_dropout": 0.0, "encoder_normalize_before": False, "activation_fn": "relu",
        "criterion": "label_smoothed_cross_entropy", "label_smoothing": 0.1,
        "optimizer": "adam", "adam_eps": 1e-8, "weight_decay": 0.0, "lr": [0.005],
        "lr_scheduler": "inverse_sqrt", "warmup_updates": 2000, "warmup_init_lr": 1e-7,
        "clip_norm": 25.0, "max_tokens": 4096, "update_freq": [2], "max_update": 8000,
        "patience": 10, "seed": 1, "keep_last_epochs": -1,
    }  # fmt: skip
    assert {k: getattr(args, k) for k in expected} == expected
    assert eval(args.adam_betas) == (0.9, 0.98)  # noqa: S307 - fairseq's own parsing
    assert cfg.data.subword == "none" and cfg.data.joined_dictionary
    ev = cfg.eval
    assert (ev.checkpoint, ev.average_last, ev.average_over) == ("average", 10, "epochs")
    assert (ev.beam, ev.lenpen, ev.tokenized_bleu) == (5, 1.0, True)
    assert (ev.max_len_a, ev.max_len_b) == (0, 200)  # fairseq-generate's defaults
