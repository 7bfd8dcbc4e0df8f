"""One logical checkpoint whatever the expert-parallel size: all ``E`` experts in one file.

fairseq writes the rank-0 state only (or, in its MoE branch, one shard file per rank: the
complaint of fairseq issue 4788). With expert parallelism each rank holds ``E / P`` experts
(:class:`~moe_mt.moe.expert_parallel.ShardedExpertBank`), so rank 0's state alone would lose the
others. Here:

- **save**: fairseq calls ``Trainer.consolidate_optimizer`` on every rank before rank 0 writes
  (its hook for state that needs communication). :func:`install` extends it: every rank gathers
  each sharded bank's tensors (rank 0 keeps them for its next ``state_dict()``, which then writes
  ``[E, ...]`` tensors) and the optimizer state of the expert parameters (Adam's ``exp_avg`` /
  ``exp_avg_sq`` are ``[E / P, ...]`` like their parameters, gathered the same way; rank 0 hands
  them to the trainer as its gathered optimizer state, the slot fairseq uses for FSDP). The file
  is the one a one-process run writes.
- **load**: rank 0 reads the file and fairseq broadcasts it to every rank; each bank keeps its
  rows of the ``[E, ...]`` tensors (``ShardedExpertBank._load_from_state_dict``) and the
  optimizer keeps its rows of the expert parameters' state (:func:`slice_optimizer_state`,
  installed around ``FairseqOptimizer.load_state_dict``).

So a run trained on ``P`` ranks evaluates in one process (``moemt eval`` / ``translate``
unchanged), a one-process checkpoint resumes on ``P`` ranks, and optimizer state survives a
change of ``P`` (it is always stored for all ``E`` experts). Not covered: fairseq's fp16 /
bf16 optimizers keep flattened fp32 copies of the parameters, whose state cannot be split per
expert; with them and ``P > 1``, resume with ``--reset-optimizer`` when ``P`` changes.
"""

from __future__ import annotations

import torch

from moe_mt.moe.expert_parallel import ShardedExpertBank, gather_expert_state, gather_shards

_INSTALLED = False


def _optimizer_params(torch_optimizer) -> list:
    """Parameters in the order of the integer keys of ``torch_optimizer.state_dict()``."""
    return [p for group in torch_optimizer.param_groups for p in group["params"]]


def _expert_rows(value, count: int) -> bool:
    return torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == count


def gather_optimizer_state(optimizer) -> dict:
    """Collective: ``optimizer.state_dict()`` with every sharded expert parameter's per-expert
    state tensors gathered to all ``E`` experts (``optimizer``: a fairseq optimizer)."""
    state = optimizer.state_dict()
    entries = dict(state["state"])
    for index, param in enumerate(_optimizer_params(optimizer.optimizer)):
        shard = getattr(param, "expert_shard", None)
        if shard is None or index not in entries:
            continue
        _, count, _, groups = shard
        entries[index] = {
            key: gather_shards(value, groups) if _expert_rows(value, count) else value
            for key, value in entries[index].items()
        }
    return {**state, "state": entries}


def slice_optimizer_state(torch_optimizer, state_dict: dict) -> dict:
    """``state_dict`` (a torch optimizer's, all ``E`` experts) with each sharded expert
    parameter's state cut to this rank's rows; the argument is not modified."""
    entries = dict(state_dict.get("state", {}))
    for index, param in enumerate(_optimizer_params(torch_optimizer)):
        shard = getattr(param, "expert_shard", None)
        if shard is None or index not in entries:
            continue
        start, count, total, _ = shard
        entries[index] = {
            key: value[start : start + count] if _expert_rows(value, total) else value
            for key, value in entries[index].items()
        }
    return {**state_dict, "state": entries}


def _has_sharded_experts(module) -> bool:
    return any(isinstance(m, ShardedExpertBank) for m in module.modules())


def install() -> None:
    """Extend fairseq's trainer and optimizer as the module docstring says (once; harmless
    for models without sharded experts)."""
    global _INSTALLED
    if _INSTALLED:
        return
    from fairseq.optim.fairseq_optimizer import FairseqOptimizer
    from fairseq.trainer import Trainer

    consolidate = Trainer.consolidate_optimizer
    load_state_dict = FairseqOptimizer.load_state_dict

    def consolidate_optimizer(self):
        consolidate(self)
        if not _has_sharded_experts(self.model):
            return
        writer = self.should_save_checkpoint_on_current_rank
        gather_expert_state(self.model, keep=writer)
        if not self.cfg.checkpoint.no_save_optimizer_state:
            gathered = gather_optimizer_state(self.optimizer)
            if writer:
                self._gathered_optim_state = gathered

    def load_sliced_state_dict(self, state_dict, optimizer_overrides=None):
        state_dict = slice_optimizer_state(self.optimizer, state_dict)
        return load_state_dict(self, state_dict, optimizer_overrides)

    Trainer.consolidate_optimizer = consolidate_optimizer
    FairseqOptimizer.load_state_dict = load_sliced_state_dict
    _INSTALLED = True
