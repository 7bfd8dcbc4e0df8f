"""Expert parallelism in the fairseq models and in ``moemt train``: one logical checkpoint.

Default run (model level, 2 gloo ranks): a Switch model built with ``model.expert_parallel_size=2``
holds half the experts per rank, leaves them out of DDP, routes and translates like the one-process
model; gathering writes the one-process state dict and loading a full state dict keeps each
rank's shard. Slow (``moemt train`` end to end): a one-process checkpoint resumes on 2
expert-parallel ranks and ends with the parameters and optimizer state of a data-parallel run on
the same batches, and the 2-rank checkpoint translates in one process as on 2 ranks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import torch

import moe_mt
from moe_mt.moe.expert_parallel import ShardedExpertBank, gather_expert_state
from moe_mt.workflows.common.rundir import RunDir
from tests.conftest import TINY_MODEL, demo_config
from tests.test_expert_parallel import run_ranks

EP_MODEL = (
    "data.spm.vocab_size=2000",
    *TINY_MODEL,
    "model.arch=switch_transformer_demo",
    "train.criterion=moe_label_smoothed_cross_entropy",
    "model.moe.freq=1",
    "model.moe.num_experts=4",
    "model.dropout=0",
)
SENTENCES = 12


def build(run_dir: Path, *overrides: str, seed: int = 1):
    """(task, model) as ``moemt train`` builds them (inside torch.distributed when initialised)."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from moe_mt.workflows.train.fairseq_args import train_args

    moe_mt.register()
    cfg = demo_config(run_dir, *EP_MODEL, *overrides)
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, train_args(cfg, RunDir(cfg.run_dir)))
    fairseq_cfg = convert_namespace_to_omegaconf(args)
    torch.manual_seed(seed)
    task = tasks.setup_task(fairseq_cfg.task)
    return task, task.build_model(fairseq_cfg.model)


def sample(task, n: int = SENTENCES, split: str = "test"):
    task.load_dataset(split)
    dataset = task.dataset(split)
    return dataset.collater([dataset[i] for i in range(n)])


def translate(task, model, batch) -> list[str]:
    generator = task.build_generator([model], argparse.Namespace(beam=2, max_len_a=0, max_len_b=8))
    hypos = task.inference_step(generator, [model], batch)
    return [task.target_dictionary.string(h[0]["tokens"], "sentencepiece") for h in hypos]


def _model_worker(rank: int, run_dir: str, out_dir: str) -> None:
    task, model = build(Path(run_dir), "model.expert_parallel_size=2")
    banks = [m for m in model.modules() if isinstance(m, ShardedExpertBank)]
    ignored = sorted(model._ddp_params_and_buffers_to_ignore)
    batch = sample(task)
    model.eval()
    with torch.no_grad():
        logits = model(**batch["net_input"])[0]
        hypotheses = translate(task, model, batch)
    gather_expert_state(model, keep=rank == 0)
    state = model.state_dict()
    full = torch.load(Path(out_dir) / "full_state.pt")
    model.load_state_dict(full)
    loaded = {n: p.detach().clone() for n, p in model.named_parameters() if ".experts." in n}
    torch.save(
        dict(
            banks=[(b.start, b.num_experts, b.num_global_experts) for b in banks],
            ignored=ignored,
            logits=logits,
            hypotheses=hypotheses,
            state=state,
            loaded=loaded,
        ),
        Path(out_dir) / f"rank{rank}.pt",
    )


@pytest.mark.slow  # end-to-end run, seconds (the default run stays near 6 min)
def test_expert_parallel_model_on_two_ranks(prepped_demo, tmp_path):
    task, one = build(prepped_demo, "model.expert_parallel_size=1")
    full = {k: torch.randn_like(v) if ".experts." in k else v for k, v in one.state_dict().items()}
    torch.save(full, tmp_path / "full_state.pt")
    run_ranks(_model_worker, (str(prepped_demo), str(tmp_path)), timeout=240)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]

    # every MoE layer (encoder and decoder) holds experts [2r, 2r + 2) of 4
    assert [b for b in ranks[0]["banks"]] == [(0, 2, 4)] * 2
    assert [b for b in ranks[1]["banks"]] == [(2, 2, 4)] * 2
    expert_names = sorted(n for n, p in one.named_parameters() if ".experts." in n)
    assert ranks[0]["ignored"] == expert_names and len(expert_names) == 8
    assert all(getattr(p, "expert", False) for n, p in one.named_parameters() if n in expert_names)

    # both ranks fed the same batch: no capacity in eval, so each equals one process on it
    batch = sample(task)
    one.eval()
    with torch.no_grad():
        logits = one(**batch["net_input"])[0]
        hypotheses = translate(task, one, batch)
    for r in ranks:
        torch.testing.assert_close(r["logits"], logits, rtol=1e-5, atol=1e-5)
        assert r["hypotheses"] == hypotheses

    # rank 0's gathered state dict is the one-process one (same seed, same initialisation)
    reference = one.state_dict()
    assert ranks[0]["state"].keys() == reference.keys()
    for key, value in reference.items():
        if not key.endswith("_float_tensor"):  # fairseq's uninitialised placeholder buffer
            torch.testing.assert_close(ranks[0]["state"][key], value, msg=key)
    # loading the logical state dict keeps each rank's rows
    for rank, r in enumerate(ranks):
        for name, value in r["loaded"].items():
            assert torch.equal(value, full[name][2 * rank : 2 * rank + 2]), name


def test_soft_moe_refuses_expert_parallelism(prepped_demo):
    from moe_mt.errors import MoeMtError

    with pytest.raises(MoeMtError, match="Soft MoE does not support expert parallelism.*slots"):
        build(prepped_demo, "model.arch=soft_moe_transformer_demo", "model.expert_parallel_size=2")


# -- moemt train end to end (slow) -------------------------------------------------------------

#: No dropping and no balance loss: 2 ranks' MoE batch is both ranks' batches at once, while one
#: process accumulates them one at a time, so capacity and the batch-level balance loss would
#: differ between the two (the layer tests cover them on one shared batch).
E2E = (*EP_MODEL, "model.moe.capacity_factor=0", "model.moe.balance_weight=0")
HALF, FULL = 2, 4  # updates


def _train(run_dir: Path, *overrides: str):
    from moe_mt.workflows.train.trainer import train

    return train(demo_config(run_dir, *E2E, "train.log_interval=1", *overrides))


def _checkpoint(run_dir: Path) -> dict:
    from moe_mt.checkpoints import load_state

    return load_state(run_dir / "checkpoints" / "checkpoint_last.pt")


def _expert_state(checkpoint: dict) -> list[torch.Tensor]:
    """Adam state tensors with E = 4 rows: the experts' ([E, ...] in a logical checkpoint) and
    the routers' weights."""
    state = checkpoint["last_optimizer_state"]["state"]
    values = [v for entry in state.values() for v in entry.values() if torch.is_tensor(v)]
    return [v for v in values if v.dim() and v.shape[0] == 4]


def _translate_worker(rank: int, checkpoint: str, out_dir: str) -> None:
    from fairseq import checkpoint_utils

    models, _, task = checkpoint_utils.load_model_ensemble_and_task([checkpoint])
    assert any(isinstance(m, ShardedExpertBank) for m in models[0].modules())
    models[0].eval()
    with torch.no_grad():
        hypotheses = translate(task, models[0], sample(task))
    torch.save(hypotheses, Path(out_dir) / f"rank{rank}.pt")


@pytest.mark.slow
def test_one_process_checkpoint_resumes_on_two_expert_parallel_ranks(prepped_demo, tmp_path):
    """1 process trains HALF updates; its checkpoint resumes on 2 ranks (a) expert-parallel,
    expert_parallel_size=2, and (b) data-parallel only, expert_parallel_size=1 (every rank holds
    every expert, DDP averages their gradients; tests/test_distributed_train.py checks that this
    is one process on the same global batches). Both see the same batches up to FULL updates, so
    parameters and Adam state must agree: the experts were sliced on load (weights and optimizer
    state), exchanged, reduced and scaled right, and gathered into one file on save. Then the
    expert-parallel checkpoint translates in one process exactly as on 2 expert-parallel ranks.

    (Both continuations run on 2 ranks: fairseq counts the batches already seen in an epoch per
    rank, so a mid-epoch resume on another number of ranks does not continue where 1 process
    would.)"""
    import shutil

    start = tmp_path / "start"
    shutil.copytree(prepped_demo, start)
    _train(start, "model.expert_parallel_size=1", "train.update_freq=2", f"train.max_update={HALF}")
    two, dp = tmp_path / "two", tmp_path / "dp"
    shutil.copytree(start, two)
    shutil.copytree(start, dp)
    for run_dir, size in ((two, 2), (dp, 1)):
        result = _train(
            run_dir, f"model.expert_parallel_size={size}", "train.distributed_world_size=2",
            f"train.max_update={FULL}",
        )  # fmt: skip
        assert result.summary["world_size"] == 2 and result.resumed_from_update == HALF

    a, b = _checkpoint(two), _checkpoint(dp)
    assert a["model"].keys() == b["model"].keys()
    assert a["model"]["encoder.layers.0.moe.experts.w1"].shape[0] == 4  # all experts, one file
    moved = (
        (
            a["model"]["encoder.layers.0.moe.experts.w1"]
            - _checkpoint(start)["model"]["encoder.layers.0.moe.experts.w1"]
        )
        .abs()
        .max()
    )
    assert moved > 1e-4  # the experts did train after the resume
    for key, value in b["model"].items():
        if not key.endswith("_float_tensor"):
            torch.testing.assert_close(a["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    # 8 expert tensors and 2 router weights [4, d], each with exp_avg and exp_avg_sq
    assert len(_expert_state(a)) == len(_expert_state(b)) == 20
    for x, y in zip(_expert_state(a), _expert_state(b), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-7)

    checkpoint = two / "checkpoints" / "checkpoint_last.pt"
    run_ranks(_translate_worker, (str(checkpoint), str(tmp_path)), timeout=240)
    on_ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    from fairseq import checkpoint_utils

    models, _, task = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)])
    models[0].eval()
    with torch.no_grad():
        alone = translate(task, models[0], sample(task))
    assert on_ranks[0] == on_ranks[1] == alone
    assert len(set(alone)) > 1  # real, varied output
