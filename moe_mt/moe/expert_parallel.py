"""Expert parallelism: each rank holds ``E / P`` experts of an MoE layer; tokens move by all_to_all.

Pure torch (``torch.distributed``), no fairseq. Axes: ``t`` this rank's tokens, ``k`` choices per
token, ``e`` experts (``E`` in all), ``P`` ranks of an expert-parallel group, ``L = E / P`` local
experts, ``m`` rows.

Groups (:func:`expert_parallel_groups`): the ``W`` ranks form ``W / P`` expert-parallel groups of
``P`` consecutive ranks; rank ``g * P + s`` holds experts ``[s * L, (s + 1) * L)`` of every MoE
layer (shard ``s``). Tokens are exchanged inside a group; the ``W / P`` ranks that hold the same
shard form a replica group.

The layer's batch (:class:`ExpertParallelMoE`) is the concatenation, in rank order, of the flat
tokens of its group's ``P`` ranks: every result is that of one process
(:class:`~moe_mt.moe.MoEFeedForward` with all ``E`` experts) on that concatenated batch:

1. one all_gather of ``(t, non-pad tokens, sentences)`` per rank places this rank's tokens in the
   global batch (:mod:`moe_mt.moe.batch_scope`); the router runs on the local tokens, with random
   draws taken from the global batch's draws and token sums of its aux losses reduced over the
   group (the balance and z losses are the one-process values on every rank);
2. one all_gather of the per-(choice, expert) assignment counts ``[k, E]``: each rank then knows
   every rank's counts, hence the split sizes of both exchanges, and applies capacity locally;
3. **capacity, the same rule as one process.** One process computes
   ``C = ceil(factor * k * T / E)`` from the ``T`` non-pad tokens of *its* batch and keeps, per
   expert, the first ``C`` assignments in priority order (first choices before second ones, then
   sequence order; :mod:`moe_mt.moe.dispatch`). Here ``T`` is the group's total and the priority
   order that of the concatenated batch: rank ``r``'s choice-``j`` assignments to expert ``e``
   queue behind all ranks' choices ``< j`` and behind ranks ``< r``'s choice ``j``
   (``plan_dispatch(queue_ahead=...)``). Consequence: the tokens kept and dropped are exactly
   those of one process on the group's batch -- which also means that whether a rank's token is
   dropped depends on the other ranks' tokens (a rank late in the order loses its tokens first
   when an expert overflows), and that an expert receives at most ``C`` rows in all, not ``C``
   per source rank. Drops happen before the exchange, so dropped rows are never sent;
4. ``all_to_all_single`` with variable split sizes (no padding to a common capacity) sends each
   kept row to its expert's rank and the outputs back (:func:`all_to_all`, whose backward is the
   reverse exchange); the local bank runs the rows grouped by local expert; combine weights and
   the residual are the one-process layer's (dropped and pad tokens get zero output).

Gradients (state of the expert parameters' gradients after backward, before any reduction): the
reverse all_to_all brings every row's gradient back to the rank of its expert, so the local
expert gradient on shard ``s`` is the gradient of the summed loss of *all* ``P`` ranks of the
group w.r.t. those experts, and the router/other gradients on rank ``r`` are the gradient of that
summed loss through rank ``r``'s tokens (the aux losses' group sums are differentiable). With
fairseq's trainer (``fairseq/trainer.py``: DDP averages the gradients of the shared parameters
over the ``W`` ranks, then ``multiply_grads(W / sample_size)`` with the global sample size), the
shared gradients end as ``sum_r g_r / S``; for the expert gradients to end the same,
:func:`reduce_expert_grads` (called where DDP reduces the others) sums them over the replica group
(the ``W / P`` ranks with the same experts, which saw different tokens) and multiplies them by
``1 / W``: after the trainer's ``W / S`` they are the summed gradient of all ``W`` ranks' tokens
divided by ``S``, i.e. ``P`` ranks x ``B`` tokens give one process with ``P x B`` tokens. Expert
parameters carry ``param.expert = True``: DDP leaves them out of its all-reduce
(:func:`ddp_ignore_expert_params`), fairseq's ``clip_grad_norm_`` leaves them out of the norm
(consistent across ranks) and scales them by the same clip coefficient.

Shared draws (:class:`SharedDraws`): jitter and THOR's training draws come from a per-layer CPU
generator reseeded from ``(seed, layer name, update)`` at each update, in the same state on every
rank and at every world size, so that a ``P``-rank run and a one-rank run on the same global batch
route identically (and a resumed run draws as an uninterrupted one).

Soft MoE cannot be split this way (its slots mix all tokens of a sentence; see
:data:`SOFT_MOE_REFUSAL`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist
from torch import Tensor, nn

from moe_mt.moe.batch_scope import BatchScope, batch_scope
from moe_mt.moe.dispatch import choice_major, combine, dispatch, plan_dispatch
from moe_mt.moe.experts import BANK_TENSORS, ExpertBank
from moe_mt.moe.layer import MoEFeedForward, MoEOutput
from moe_mt.moe.routing import Router
from moe_mt.moe.stats import dispatch_stats

SOFT_MOE_REFUSAL = (
    "Soft MoE does not support expert parallelism: its slots are mixtures of all tokens of a "
    "sentence, so an expert would need every slot of the whole sequence (use "
    "model.expert_parallel_size=1 or a token-choice family)"
)


# -- groups -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExpertParallelGroups:
    """This rank's place: ``size`` (``P``) ranks per expert-parallel group, shard ``ep_rank``.

    ``ep_group`` / ``replica_group`` are process groups (``None``: the default group, or no
    group when ``replica_size`` is 1).
    """

    world_size: int
    rank: int
    size: int
    ep_rank: int
    ep_group: object
    replica_size: int
    replica_group: object


_GROUPS: dict[tuple[int, int], ExpertParallelGroups] = {}


def expert_parallel_groups(size: int) -> ExpertParallelGroups:
    """The groups of ``size`` ranks of this process (created once, on every rank alike)."""
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError("expert parallelism needs torch.distributed to be initialised")
    world, rank = dist.get_world_size(), dist.get_rank()
    if size < 1 or world % size:
        raise ValueError(f"expert_parallel_size={size} must divide the world size {world}")
    key = (world, size)
    if key not in _GROUPS:
        # torch.distributed's rule: every rank creates every group, in the same order.
        ep_groups = [
            None if size == world else dist.new_group(list(range(g * size, (g + 1) * size)))
            for g in range(world // size)
        ]
        replica_groups = [
            dist.new_group(list(range(s, world, size))) if world > size else None
            for s in range(size)
        ]
        _GROUPS[key] = ExpertParallelGroups(
            world_size=world,
            rank=rank,
            size=size,
            ep_rank=rank % size,
            ep_group=ep_groups[rank // size],
            replica_size=world // size,
            replica_group=replica_groups[rank % size],
        )
    return _GROUPS[key]


# -- collectives under autograd ---------------------------------------------------------------


class _AllToAll(torch.autograd.Function):
    """Rows ``[sum(in_splits), ...]`` -> ``[sum(out_splits), ...]``; backward: the reverse."""

    @staticmethod
    def forward(ctx, x, out_splits, in_splits, group):
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x.new_empty(sum(out_splits), *x.shape[1:])
        dist.all_to_all_single(out, x.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        out_splits, in_splits = ctx.splits
        grad_x = grad.new_empty(sum(in_splits), *grad.shape[1:])
        dist.all_to_all_single(grad_x, grad.contiguous(), in_splits, out_splits, group=ctx.group)
        return grad_x, None, None, None


def all_to_all(x: Tensor, out_splits: list[int], in_splits: list[int], group=None) -> Tensor:
    """Send rows ``in_splits[i]`` of ``x`` to rank ``i`` of ``group``, receive ``out_splits``."""
    return _AllToAll.apply(x, out_splits, in_splits, group)


class _AllReduceSum(torch.autograd.Function):
    """``sum_r x_r`` on every rank; backward: the gradient of every rank's use, summed."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        out = x.clone()
        dist.all_reduce(out, group=group)
        return out

    @staticmethod
    def backward(ctx, grad):
        grad = grad.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


def all_reduce_sum(x: Tensor, group=None) -> Tensor:
    """Differentiable sum of ``x`` over ``group`` (every rank gets it)."""
    return _AllReduceSum.apply(x, group)


def _all_gather(x: Tensor, size: int, group) -> Tensor:
    """``[size, *x.shape]``: ``x`` of every rank of ``group``, in rank order (no gradient)."""
    parts = [torch.empty_like(x) for _ in range(size)]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.stack(parts)


def gather_shards(x: Tensor, groups: ExpertParallelGroups) -> Tensor:
    """Collective over the expert-parallel group: this shard's ``[L, ...]`` rows of a per-expert
    tensor, concatenated in shard order to all ``[E, ...]`` rows (no gradient)."""
    return _all_gather(x.detach(), groups.size, groups.ep_group).reshape(-1, *x.shape[1:])


class _Permute(torch.autograd.Function):
    """``x[order]`` for a permutation ``order``; backward gathers with its inverse."""

    @staticmethod
    def forward(ctx, x, order, inverse):
        ctx.save_for_backward(inverse)
        return x.index_select(0, order)

    @staticmethod
    def backward(ctx, grad):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


# -- counts and capacity ----------------------------------------------------------------------


def choice_counts(expert_index: Tensor, num_experts: int, pad_mask: Tensor | None) -> Tensor:
    """``[k, e]`` long: non-pad assignments per (choice column, expert); ``pad_mask`` ``[t]``
    or ``[t, k]`` (per assignment, see :func:`~moe_mt.moe.dispatch.plan_dispatch`)."""
    t, k = expert_index.shape
    index = expert_index.t() + torch.arange(k, device=expert_index.device)[:, None] * num_experts
    index = index.reshape(-1)
    if pad_mask is not None:
        index = index[~choice_major(pad_mask, k)]
    counts = torch.bincount(index, minlength=k * num_experts)
    return counts.view(k, num_experts)


def queue_start(counts: Tensor) -> Tensor:
    """``[P, k, e]``: global priority position of each rank's first choice-``j`` assignment to
    ``e`` (choices before ranks: all ranks' choice ``j - 1`` come before any choice ``j``)."""
    per_choice = counts.sum(0)  # [k, e]
    earlier_choices = per_choice.cumsum(0) - per_choice
    earlier_ranks = counts.cumsum(0) - counts
    return earlier_choices[None] + earlier_ranks


def queue_ahead(counts: Tensor, rank: int) -> Tensor:
    """``[k, e]``: assignments of other ranks ahead of ``rank``'s choice-``j`` ones (for
    :func:`~moe_mt.moe.dispatch.plan_dispatch`, whose local order counts this rank's own)."""
    own_earlier = counts[rank].cumsum(0) - counts[rank]
    return queue_start(counts)[rank] - own_earlier


def kept_counts(counts: Tensor, capacity: int | None) -> Tensor:
    """``[P, e]``: rows each rank keeps for each expert under ``capacity`` (global rule)."""
    if capacity is None:
        return counts.sum(1)
    room = (capacity - queue_start(counts)).clamp(min=0)
    return torch.minimum(room, counts).sum(1)


def _regroup_order(rows: Tensor) -> Tensor:
    """Permutation taking rows received ``[source rank][local expert]`` to ``[expert][source]``.

    ``rows`` ``[P, L]``: rows from each source for each local expert.
    """
    flat = rows.reshape(-1)
    starts = (flat.cumsum(0) - flat).view(rows.shape).t().reshape(-1)  # expert-major groups
    sizes = rows.t().reshape(-1)
    group_starts = sizes.cumsum(0) - sizes
    m = int(flat.sum())
    return torch.arange(m) + torch.repeat_interleave(starts - group_starts, sizes, output_size=m)


# -- the sharded bank and the layer -----------------------------------------------------------


class ShardedExpertBank(ExpertBank):
    """Experts ``[start, start + num_experts)`` of an ``num_global_experts``-expert bank.

    Built from a full bank (:meth:`from_bank`), so that its weights are those the one-process
    model draws. Its parameters carry ``expert = True`` and ``expert_shard`` (``(start, count,
    num_global, groups)``), read by the gradient reduction and by
    :mod:`moe_mt.models.checkpoint_sharding`. Loading takes full-``E`` tensors (the logical
    checkpoint) and keeps this shard's rows; :meth:`state_dict` writes full-``E`` tensors when
    :func:`gather_expert_state` ran on every rank just before (else this shard's).
    """

    @classmethod
    def from_bank(cls, bank: ExpertBank, groups: ExpertParallelGroups) -> ShardedExpertBank:
        e, p = bank.num_experts, groups.size
        if e % p:
            raise ValueError(f"expert_parallel_size={p} must divide the number of experts {e}")
        count = e // p
        start = groups.ep_rank * count
        with torch.device("meta"):  # no memory, no draws: the weights come from `bank`
            shard = cls(
                count, bank.d_model, bank.d_ff, bank.d_out, bank.activation, bank.dropout.p,
                bank.b1 is not None, bank.impl,
            )  # fmt: skip
        for name in BANK_TENSORS:
            full = getattr(bank, name)
            if full is not None:
                param = nn.Parameter(full.detach()[start : start + count].clone())
                param.expert = True
                param.expert_shard = (start, count, e, groups)
                setattr(shard, name, param)
        shard.start, shard.global_experts, shard.groups = start, e, groups
        shard.gathered = {}
        shard._register_state_dict_hook(_write_gathered)
        return shard

    @property
    def num_global_experts(self) -> int:
        return self.global_experts

    def extra_repr(self) -> str:
        end = self.start + self.num_experts
        return f"experts [{self.start}, {end}) of {self.global_experts}, {super().extra_repr()}"

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Slice full-E tensors to this shard, in a private dict (the caller's stays whole).
        own = {}
        for key, value in state_dict.items():
            if key.startswith(prefix) and "." not in key[len(prefix) :]:
                if value.dim() and value.shape[0] == self.global_experts != self.num_experts:
                    value = value[self.start : self.start + self.num_experts]
                own[key] = value
        super()._load_from_state_dict(own, prefix, *args, **kwargs)


def _write_gathered(module: ShardedExpertBank, state_dict, prefix, local_metadata):
    for name, full in module.gathered.items():
        state_dict[prefix + name] = full
    module.gathered = {}
    return state_dict


def gather_expert_state(model: nn.Module, keep: bool = True) -> None:
    """Collective (every rank): gather each sharded bank's tensors to all ``E`` experts.

    Ranks with ``keep`` hold them until their next ``state_dict()`` (which then writes the
    logical, full-``E`` tensors); the others drop them at once.
    """
    for bank in model.modules():
        if isinstance(bank, ShardedExpertBank):
            bank.gathered = {}
            for name in BANK_TENSORS:
                param = getattr(bank, name)
                if param is None:
                    continue
                full = gather_shards(param, bank.groups)
                if keep:
                    bank.gathered[name] = full


def expert_params(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, param)`` of every parameter marked ``expert``."""
    return [(n, p) for n, p in model.named_parameters() if getattr(p, "expert", False)]


def ddp_ignore_expert_params(model: nn.Module) -> list[str]:
    """Leave the sharded expert parameters out of DistributedDataParallel's all-reduce.

    Sets the list that ``DistributedDataParallel._set_params_and_buffers_to_ignore_for_model``
    sets (read when DDP wraps the model); returns the names.
    """
    names = [n for n, p in expert_params(model) if hasattr(p, "expert_shard")]
    from torch.nn.parallel import DistributedDataParallel

    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)
    return names


def reduce_expert_grads(model: nn.Module) -> None:
    """Sum sharded expert gradients over their replica group and scale them by ``1 / W``.

    Call it where the shared gradients are averaged over the ``W`` ranks (fairseq: the model's
    ``all_reduce_grads``); see the module docstring for why this scaling.
    """
    for _, param in expert_params(model):
        shard = getattr(param, "expert_shard", None)
        if shard is None or param.grad is None:
            continue
        groups = shard[3]
        if groups.replica_size > 1:
            dist.all_reduce(param.grad, group=groups.replica_group)
        param.grad.mul_(1.0 / groups.world_size)


class ExpertParallelMoE(MoEFeedForward):
    """:class:`~moe_mt.moe.MoEFeedForward` whose experts are spread over ``P`` ranks.

    Args:
        router: the router over all ``E`` experts (replicated on every rank).
        experts: this rank's :class:`ShardedExpertBank`.
        capacity_factor, eval_capacity_factor: as the one-process layer's, with ``T`` the
            group's non-pad tokens (see the module docstring, point 3).

    ``forward`` returns this rank's part of the one-process result on the group's concatenated
    batch; ``aux_losses`` are the global values; ``stats`` and ``plan`` are this rank's
    (assignments it routed, rows it sent to each expert).
    """

    def __init__(
        self,
        router: Router,
        experts: ShardedExpertBank,
        capacity_factor: float | None = 1.25,
        eval_capacity_factor: float | None = None,
        conventions=None,
        eom: float = 0.0,
        balance_scope: str = "micro_batch",
    ) -> None:
        super().__init__(
            router, experts, capacity_factor, eval_capacity_factor, conventions, eom,
            balance_scope=balance_scope,
        )  # fmt: skip
        self.groups = experts.groups

    @classmethod
    def from_layer(cls, layer: MoEFeedForward, groups: ExpertParallelGroups) -> ExpertParallelMoE:
        """The same layer (router, capacity factors), keeping only this rank's experts."""
        experts = ShardedExpertBank.from_bank(layer.experts, groups)
        return cls(
            layer.router, experts, layer.capacity_factor, layer.eval_capacity_factor,
            layer.conventions, layer.eom, balance_scope=layer.balance_scope,
        )  # fmt: skip

    def forward(
        self, x: Tensor, pad_mask: Tensor | None = None, sentence_index: Tensor | None = None
    ) -> MoEOutput:
        g = self.groups
        p, e, r = g.size, self.num_experts, g.ep_rank
        local = e // p
        t = x.shape[0]
        num_real = t if pad_mask is None else t - int(pad_mask.sum())
        num_sentences = int(sentence_index.max()) + 1 if sentence_index is not None and t else 0
        mine = torch.tensor([t, num_real, num_sentences], device=x.device)
        sizes = _all_gather(mine, p, g.ep_group).cpu()  # [P, 3]
        before = sizes[:r].sum(0)
        scope = BatchScope(
            token_offset=int(before[0]),
            total_tokens=int(sizes[:, 0].sum()),
            sentence_offset=int(before[2]),
            total_sentences=int(sizes[:, 2].sum()),
            sum_fn=partial(all_reduce_sum, group=g.ep_group),
        )
        with batch_scope(scope):
            routing = self.route(x, pad_mask, sentence_index)
        capacity = self.capacity(int(sizes[:, 1].sum()), routing.k, int(sizes[:, 0].sum()))
        skip = routing.skip_mask(pad_mask)
        local_counts = choice_counts(routing.expert_index, e, skip)
        counts = _all_gather(local_counts, p, g.ep_group).cpu()  # [P, k, e]
        ahead = None if capacity is None else queue_ahead(counts, r).to(x.device)
        plan = plan_dispatch(routing.expert_index, e, capacity, skip, ahead)
        kept = kept_counts(counts, capacity)  # [P, e]
        send = kept[r].view(p, local).sum(1).tolist()  # rows to each rank of the group
        incoming = kept[:, r * local : (r + 1) * local]  # [P, L] rows from each rank
        recv = incoming.sum(1).tolist()
        rows = all_to_all(dispatch(x, plan), recv, send, g.ep_group)
        order = _regroup_order(incoming).to(x.device)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.shape[0], device=x.device)
        out = self.experts(_Permute.apply(rows, order, inverse), incoming.sum(0))
        back = all_to_all(_Permute.apply(out, inverse, order), send, recv, g.ep_group)
        y = combine(back, plan, self.combine_weight(routing, plan), t)
        stats = dispatch_stats(
            plan.counts, plan.num_assignments, routing.stats.get("router_entropy")
        )
        return MoEOutput(
            y=y, aux_losses=routing.aux_losses, stats=stats, routing=routing, plan=plan
        )


# -- shared draws -----------------------------------------------------------------------------


class SharedDraws(nn.Module):
    """A CPU generator for a router's draws, reseeded from ``(seed, name, update)``.

    No parameters or buffers (checkpoints are unchanged). fairseq calls ``set_num_updates`` on
    every module before each forward; the generator is reseeded when the update number changes,
    so it is in the same state on every rank and at every world size, and a resumed run draws as
    an uninterrupted one. Several forwards in one update (THOR's two passes, gradient
    accumulation) continue the stream.
    """

    def __init__(self, seed: int, name: str) -> None:
        super().__init__()
        self.seed, self.name = seed, name
        self.generator = torch.Generator()
        self.update: int | None = None
        self.set_num_updates(0)

    def set_num_updates(self, num_updates: int) -> None:
        if num_updates == self.update:
            return
        self.update = num_updates
        key = f"{self.seed}/{self.name}/{num_updates}".encode()
        self.generator.manual_seed(int.from_bytes(hashlib.blake2b(key, digest_size=8).digest()))

    def extra_repr(self) -> str:
        return f"seed={self.seed}, name={self.name!r}"
