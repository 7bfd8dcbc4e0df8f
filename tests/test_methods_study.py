"""benchmarks/methods_study.py's pure parts on synthetic inputs (no training, no model)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import REPO


@pytest.fixture
def ms(monkeypatch):
    """benchmarks/methods_study.py as a module (benchmarks/ is no package: its folder goes on
    sys.path for this test only, and the modules it imported leave sys.modules after it)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    yield importlib.import_module("methods_study")
    for name in ("methods_study", "quality", "upcycling_study"):
        sys.modules.pop(name, None)


def test_max_over_mean(ms):
    assert ms.max_over_mean([3, 3, 3, 3]) == 1.0
    assert ms.max_over_mean([4, 0, 0, 0]) == 4.0
    assert ms.max_over_mean([2, 1, 1]) == 1.5
    assert ms.max_over_mean([0, 0]) is None
    assert ms.max_over_mean([]) is None


def test_layer_loads_sums_batches_per_layer(ms):
    batches = [
        [("encoder.layers.1", [2, 2, 0, 0]), ("decoder.layers.1", [1, 1])],
        [("encoder.layers.1", [0, 0, 2, 2]), ("decoder.layers.1", [2, 0])],
    ]
    loads = ms.layer_loads(batches)
    assert list(loads) == ["encoder.layers.1", "decoder.layers.1"]
    enc, dec = loads["encoder.layers.1"], loads["decoder.layers.1"]
    assert enc["tokens_per_expert"] == [2, 2, 2, 2] and enc["assignments"] == 8
    assert enc["max_over_mean"] == 1.0  # balanced over the probe
    assert enc["batch_max_over_mean"] == 2.0  # but not within each batch
    assert dec["experts"] == 2 and dec["max_over_mean"] == round(3 / 2, 4)
    assert dec["batch_max_over_mean"] == 1.5  # (1.0 + 2.0) / 2
    with pytest.raises(ValueError, match="experts"):
        ms.layer_loads([[("x", [1, 1])], [("x", [1, 1, 1])]])


def test_spread_is_evenly_spaced_and_fixed(ms):
    items = list(range(10))
    assert ms.spread(items, 3) == [0, 4, 9]
    assert ms.spread(items, 10) == items and ms.spread(items, 50) == items
    assert ms.spread(items, 0) == items
    assert ms.spread(items, 1) == [5]


def test_closest_width_is_the_nearest_multiple(ms):
    def total(width):  # a dense FFN: linear in its width
        return 1_000 + 3_078 * width

    target = total(3_415) + 1_500  # between 3,408 and 3,416, nearer 3,416
    assert ms.closest_width(total, target, 8) == 3_416
    assert ms.closest_width(total, total(3_408) + 3_078 * 4, 8) == 3_408  # a tie: the smaller
    with pytest.raises(ValueError):
        ms.closest_width(lambda w: 5, 100, 8)


def test_equal_time_targets(ms):
    targets = ms.equal_time_targets({"dense": 300.0, "switch8": 400.0, "dense-wide": 600.0}, 1000)
    assert targets == {"dense": 2000, "switch8": 1500, "dense-wide": 1000}


def test_saved_checkpoints(ms, tmp_path):
    for name in (
        "checkpoint_1_100.pt",
        "checkpoint_2_200.pt",
        "checkpoint3.pt",
        "checkpoint_last.pt",
    ):
        (tmp_path / name).write_bytes(b"")
    assert list(ms.saved_checkpoints(tmp_path, 250)) == [100, 200, 250]
    assert ms.saved_checkpoints(tmp_path, 250)[250].name == "checkpoint_last.pt"
    assert ms.saved_checkpoints(tmp_path, 200)[200].name == "checkpoint_2_200.pt"


def _probe(by_update: dict[int, list[float]]) -> dict:
    return {
        "checkpoints": {
            str(u): {"layers": {f"l{i}": {"max_over_mean": r} for i, r in enumerate(ratios)}}
            for u, ratios in by_update.items()
        }
    }


def test_goal_row(ms):
    loads = {
        "switch8": {
            "1": _probe({900: [2.0, 2.0], 1000: [1.2, 1.0]}),
            "2": _probe({1000: [1.1, 1.1]}),
        },
        "switch8-bias": {"1": _probe({1000: [1.2, 1.2]}), "2": _probe({1100: [1.3, 1.1]})},
    }
    row = ms.goal_row(loads, **ms.GOAL)
    assert row["reference_max_over_mean"] == 1.1 and row["system_max_over_mean"] == 1.2
    assert row["system_checkpoints"] == {"1": 1000, "2": 1100}
    assert row["ratio"] == round(1.2 / 1.1, 4) and row["met"] is True
    assert row["line"].startswith("goal: ") and "PASS" in row["line"]
    loads["switch8-bias"]["1"] = _probe({1000: [1.5, 1.5]})
    assert ms.goal_row(loads, **ms.GOAL)["met"] is False
    missing = ms.goal_row({"switch8": loads["switch8"]}, **ms.GOAL)
    assert missing["met"] is None and "NOT MEASURED" in missing["line"]


def _cells(delta: float, p: float) -> dict:
    """One seed's paired bootstrap cells: the same difference and p-value in every metric."""
    return {m: {"delta": delta, "p_value": p} for m in ("BLEU", "chrF2", "TER")}


def test_pair_claims_need_both_seeds_one_sign_and_outside_the_spread(ms):
    spread = {f: {m: {"mean": 0.0, "sd": 0.5} for m in ms.METRICS} for f in ("switch8", "dense")}
    claim = ms.pair_summary(
        "switch8", "dense", {"1": _cells(1.0, 0.01), "2": _cells(0.8, 0.02)}, spread
    )
    assert claim["claim"] == dict.fromkeys(ms.METRICS, True)
    assert claim["mean_delta"]["BLEU"] == {"mean": 0.9, "sd": 0.14}
    inside = ms.pair_summary(
        "switch8", "dense", {"1": _cells(0.4, 0.01), "2": _cells(0.4, 0.01)}, spread
    )
    assert not any(inside["claim"].values())  # significant, but inside the seed spread
    one_seed = ms.pair_summary(
        "switch8", "dense", {"1": _cells(1.0, 0.01), "2": _cells(1.0, 0.2)}, spread
    )
    assert not any(one_seed["claim"].values())
    signs = ms.pair_summary(
        "switch8", "dense", {"1": _cells(1.0, 0.01), "2": _cells(-1.0, 0.01)}, spread
    )
    assert not any(signs["claim"].values())


def test_overrides_put_the_family_last(ms):
    args = SimpleNamespace(tiny=True, checkpoint_interval=10, minutes=None)
    study = ms.MethodsStudy(args, Path("/tmp/study"), Path("/tmp/data"))
    overrides = study.overrides(ms.wide_family(576), 1, Path("/tmp/study/dense-wide-s1"), 20)
    assert overrides[-1] == "model.ffn_embed_dim=576"  # over --tiny's model.ffn_embed_dim=128
    assert "model.ffn_embed_dim=128" in overrides  # --tiny's small model otherwise
    assert [o for o in overrides if o.startswith("train.max_update=")] == ["train.max_update=20"]


def test_bias_family_is_switch_with_the_bias_balance_piece(ms):
    family = {f.name: f for f in ms.FAMILIES}["switch8-bias"]
    assert family.recipe == "demo_switch.yaml"
    assert family.overrides == (str(REPO / "recipes" / "pieces" / "moe" / "bias_balance.yaml"),)
    assert Path(family.overrides[0]).is_file()
    assert {name for _, names in ms.COMPARISONS for name in names} | {"dense"} == set(ms.NAMES)
