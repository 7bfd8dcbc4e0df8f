"""Load balancing beyond the micro-batch balance loss: auxiliary-loss-free bias balancing, the
sequence-level balance loss and the global-batch balance loss.

Axes: ``t`` flat tokens, ``k`` choices per token, ``e`` experts, ``s`` sentences.

Three methods of 2024-2025, each as its paper defines it:

- **Auxiliary-loss-free balancing** (Wang et al. 2024, arXiv 2408.15664, Algorithm 1; DeepSeek-V3
  §2.1.2): a per-expert bias ``b_i`` is added to the routing scores for the top-k *selection*
  only; the gate values come from the unbiased scores. After each optimizer update,
  ``b_i += u * sign(mean_load - load_i)``, the load counted over the whole update
  (:class:`BiasBalancer`).
- **Sequence-level balance loss** (DeepSeek-V3 eq. 17-20, its "complementary sequence-wise
  auxiliary loss"): the Switch loss ``E * sum_i f_i P_i`` computed per sentence and averaged over
  sentences (:func:`sequence_balance_loss`).
- **Global-batch balance loss** (Qiu et al., ACL 2025, "Demons in the Detail"): the Switch loss
  whose frequencies ``f_i`` are counted over the whole update, every micro-batch of gradient
  accumulation and every data-parallel rank, while ``P_i`` stays the micro-batch's own
  (:class:`GlobalBatchLoad`, :func:`global_batch_balance_loss`).

When an update ends: the bias moves in :func:`end_update`, which the model calls from fairseq's
``all_reduce_grads`` hook (once per update on every rank, after the backward passes of all its
micro-batches and before the optimizer step), so a checkpoint of update ``n`` holds the bias of
``n`` updates. The global-batch counts start again when fairseq announces the next update (its
task calls ``model.set_num_updates(n)`` on every module before each micro-batch's forward).
Counts are plain tensors, not buffers, so that DDP's buffer broadcast cannot replace one rank's
counts by another's; the bias itself is a buffer, saved in checkpoints.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor, nn

from moe_mt.moe.batch_scope import global_sum
from moe_mt.moe.losses import token_weight

BALANCE_SCOPES = ("micro_batch", "sequence", "global_batch")


def world_sum(x: Tensor) -> Tensor:
    """``x`` summed over every process of the training (data- and expert-parallel ranks alike),
    in place; ``x`` itself in one process. No gradient: counts only."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(x)
    return x


def expert_load(expert_index: Tensor, num_experts: int, skip: Tensor | None) -> Tensor:
    """``[e]`` long: assignments per expert, the router's decision before capacity.

    ``skip``: ``[t]`` (pads) or ``[t, k]`` (pads or inactive choices), True = not counted. A
    scatter of 0/1 weights, not a masked gather or ``bincount``, which read sizes back from a
    GPU.
    """
    index = expert_index.reshape(-1)
    if skip is None:
        weight = torch.ones_like(index)
    else:
        keep = ~skip if skip.dim() == 2 else (~skip)[:, None].expand_as(expert_index)
        weight = keep.reshape(-1).to(torch.long)
    return torch.zeros(num_experts, dtype=torch.long, device=index.device).index_add_(
        0, index, weight
    )


def end_update(model: nn.Module) -> None:
    """Move the bias of every :class:`BiasBalancer` in ``model`` by its update's load (call it
    once per update on every rank: it sums the loads over the ranks)."""
    for module in model.modules():
        if isinstance(module, BiasBalancer):
            module.end_update()


class BiasBalancer(nn.Module):
    """Auxiliary-loss-free balancing's expert bias (Wang et al. 2024, Algorithm 1).

    ``record`` counts each training forward's assignments (before capacity); at
    :meth:`end_update` the counts are summed over every rank (data- and expert-parallel: each
    routes its own tokens) and ``b_i += u * sign(mean_load - load_i)``. The counts therefore
    cover every micro-batch of ``update_freq`` and every rank, as the paper's per-batch load.

    The bias is stored as the integer ``bias_steps`` (``b = u * bias_steps``): every update moves
    each ``b_i`` by ``-u``, 0 or ``+u``, so the integer holds it exactly, in a checkpoint and
    under fairseq's ``--fp16``/``--bf16`` (which cast floating buffers to half precision, where
    ``u = 1e-3`` steps on a bias near 1 would round away). ``sign(mean - load_i)`` is computed as
    ``sign(sum - E load_i)`` in integers, so a tie with the mean moves nothing.

    Where it runs: torchtitan updates its bias in an optimizer pre-hook; ours runs at the same
    point, from fairseq's ``all_reduce_grads`` hook before the optimizer step
    (:func:`end_update`). Like torchtitan's, it also runs for an update that fp16 overflow then
    skips. torchtitan centres each change (``delta - mean(delta)``); the paper does not, nor do
    we. Activation checkpointing recomputes the forward and counts every assignment twice,
    which changes no sign.
    """

    def __init__(self, num_experts: int, rate: float) -> None:
        super().__init__()
        if not rate > 0:
            raise ValueError(f"bias update rate {rate} must be > 0")
        self.num_experts, self.rate = num_experts, rate
        self.load: Tensor | None = None  # [e] long; None: nothing counted in this update yet
        self.register_buffer("bias_steps", torch.zeros(num_experts, dtype=torch.long))

    @property
    def bias(self) -> Tensor:
        """``[e]`` fp32: the bias added to the scores for selection."""
        return self.bias_steps.to(torch.float32) * self.rate

    def record(self, expert_index: Tensor, skip: Tensor | None) -> None:
        """Count ``expert_index`` ``[t, k]`` (skipping ``skip``) into this update's load."""
        load = expert_load(expert_index.detach(), self.num_experts, skip)
        self.load = load if self.load is None else self.load + load

    def end_update(self) -> None:
        """Sum the update's load over the ranks (every rank calls this, in lockstep), move the
        bias, and start the next update's count."""
        load = self.load if self.load is not None else torch.zeros_like(self.bias_steps)
        load = world_sum(load.to(self.bias_steps.device))
        self.bias_steps += torch.sign(load.sum() - self.num_experts * load)
        self.load = None

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, rate={self.rate}"


class GlobalBatchLoad(nn.Module):
    """The global-batch loss's frequencies (Qiu et al. 2025): assignments per expert over the
    micro-batches of the update so far, summed over every rank at each micro-batch.

    The loss of micro-batch ``j`` of an update uses the counts of micro-batches ``1..j``: the
    later micro-batches are not routed yet when ``j``'s backward runs. The last micro-batch sees
    the whole update. (Megatron-LM's ``global_aux_loss`` keeps the same running counts.) With
    ``update_freq`` 1 the frequencies are those of the whole update, across data-parallel ranks.
    The counts start again when fairseq announces a new update (``set_num_updates``).
    """

    def __init__(self, num_experts: int) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.load: Tensor | None = None  # [e] long; None: nothing counted in this update yet
        self.update: int | None = None

    def set_num_updates(self, num_updates: int) -> None:
        if num_updates != self.update:
            self.load, self.update = None, num_updates

    def add(self, load: Tensor) -> Tensor:
        """Add one micro-batch's ``[e]`` counts (this rank's); the update's counts so far, all
        ranks."""
        load = world_sum(load.clone())
        self.load = load if self.load is None else self.load + load
        return self.load


def global_batch_balance_loss(
    router_probs: Tensor, update_load: Tensor, pad_mask: Tensor | None = None
) -> Tensor:
    """``E * sum_i f_i P_i`` with ``f_i`` the share of the update's assignments (``update_load``
    ``[e]``, :class:`GlobalBatchLoad`) and ``P_i`` the mean probability of expert ``i`` over this
    micro-batch's non-pad tokens (``router_probs`` ``[t, e]``; the layer's global batch under
    expert parallelism, as :func:`~moe_mt.moe.losses.load_balance_loss`). 1.0 when uniform."""
    t, e = router_probs.shape
    w = token_weight(t, pad_mask, router_probs)
    sums = global_sum(torch.cat([w.sum()[None], (router_probs * w[:, None]).sum(0)]))
    p = sums[1:] / sums[0].clamp_min(1.0)
    load = update_load.to(router_probs.dtype)
    f = load / load.sum().clamp_min(1.0)
    return e * (f * p).sum()


def sequence_balance_loss(
    router_probs: Tensor,
    expert_index: Tensor,
    sentence_index: Tensor,
    pad_mask: Tensor | None = None,
) -> Tensor:
    """DeepSeek-V3's sequence-wise balance loss (eq. 17-20), averaged over sentences.

    Per sentence ``s`` of ``T_s`` non-pad tokens: ``f_{s,i} = E / (k T_s) * (assignments of s to
    i)``, ``P_{s,i}`` the mean of ``router_probs`` (``s'``, normalised over experts) over its
    tokens, ``L_s = sum_i f_{s,i} P_{s,i}``; the loss is the mean of ``L_s`` over sentences with a
    non-pad token (the paper sums ``L_s``-like terms per sequence with weight ``alpha``; a mean
    keeps the weight independent of the batch size, as the token-level loss's mean does). Under
    expert parallelism the mean runs over the layer's global batch. 1.0 when every sentence is
    routed uniformly.

    Args:
        router_probs: ``[t, e]``.
        expert_index: ``[t, k]`` the counted choices.
        sentence_index: ``[t]`` long, the sentence of each token.
        pad_mask: ``[t]`` bool, True = pad.
    """
    t, e = router_probs.shape
    k = expert_index.shape[1]
    sentence = sentence_index.to(router_probs.device, non_blocking=True)
    num_sentences = int(sentence_index.max()) + 1 if t else 0  # a CPU tensor: no device sync
    w = token_weight(t, pad_mask, router_probs)
    tokens = torch.zeros(num_sentences, dtype=w.dtype, device=w.device).index_add_(0, sentence, w)
    p_sum = torch.zeros(num_sentences, e, dtype=w.dtype, device=w.device)
    p_sum.index_add_(0, sentence, router_probs * w[:, None])
    counts = torch.zeros(num_sentences * e, dtype=w.dtype, device=w.device)
    flat = (sentence[:, None] * e + expert_index).reshape(-1)
    counts.index_add_(0, flat, w.repeat_interleave(k))
    n = tokens.clamp_min(1.0)[:, None]
    per_sentence = e * ((counts.view(num_sentences, e) / (n * k)) * (p_sum / n)).sum(1)
    real = (tokens > 0).to(w.dtype)
    sums = global_sum(torch.stack([(per_sentence * real).sum(), real.sum()]))
    return sums[0] / sums[1].clamp_min(1.0)
