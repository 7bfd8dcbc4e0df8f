"""Auxiliary losses of MoE routers, as plain functions, and their combination across layers.

Axes: ``t`` tokens, ``k`` choices per token, ``e`` experts. Pad tokens (``pad_mask`` True) are
excluded from every mean. Under expert parallelism the token sums of the balance and z losses
run over the layer's global batch (:func:`~moe_mt.moe.batch_scope.global_sum`), so that every
rank gets the one-process value of the concatenated batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from moe_mt.moe.batch_scope import global_sum


def token_weight(t: int, pad_mask: Tensor | None, like: Tensor) -> Tensor:
    """``[t]`` 1.0 for real tokens, 0.0 for pads."""
    if pad_mask is None:
        return torch.ones(t, dtype=like.dtype, device=like.device)
    return (~pad_mask).to(like.dtype)


def load_balance_loss(
    router_probs: Tensor, expert_index: Tensor, pad_mask: Tensor | None = None
) -> Tensor:
    """Switch Transformer load-balancing loss, Fedus et al. 2022, eq. 4-6: ``E * sum_i f_i * P_i``.

    Args:
        router_probs: ``[t, e]`` router probabilities (softmax over ``e``).
        expert_index: ``[t, k]`` chosen experts (before capacity: the router's decision).
        pad_mask: ``[t]`` bool, True = pad; pads count in neither ``f`` nor ``P``.

    ``f_i`` (eq. 5) is the share of the ``k * T`` non-pad assignments sent to expert ``i`` (for
    ``k = 1`` exactly Switch's fraction of tokens); ``P_i`` (eq. 6) is the mean router probability
    of expert ``i`` over non-pad tokens. It equals 1.0 under perfectly uniform routing, for any k.
    ``f`` is not differentiable; the gradient flows through ``P``.

    Returns:
        scalar tensor (dtype of ``router_probs``).
    """
    t, e = router_probs.shape
    k = expert_index.shape[1]
    w = token_weight(t, pad_mask, router_probs)
    counts = torch.zeros(e, dtype=w.dtype, device=w.device)
    counts.index_add_(0, expert_index.reshape(-1), w.repeat_interleave(k))
    # Under expert parallelism the sums run over the layer's global batch (one collective).
    sums = global_sum(torch.cat([counts, w.sum()[None], (router_probs * w[:, None]).sum(0)]))
    counts, n, p_sum = sums[:e], sums[e].clamp_min(1.0), sums[e + 1 :]
    f = counts / (n * k)
    p = p_sum / n
    return e * (f * p).sum()


def router_z_loss(router_logits: Tensor, pad_mask: Tensor | None = None) -> Tensor:
    """Router z-loss, ST-MoE (Zoph et al. 2022) eq. 5: ``mean_t logsumexp_e(logits)^2``.

    Args:
        router_logits: ``[t, e]`` raw router logits (before softmax).
        pad_mask: ``[t]`` bool, True = pad; the mean runs over non-pad tokens only.
    """
    t = router_logits.shape[0]
    w = token_weight(t, pad_mask, router_logits)
    z = torch.logsumexp(router_logits, dim=-1)
    sums = global_sum(torch.stack([(z.square() * w).sum(), w.sum()]))
    return sums[0] / sums[1].clamp_min(1.0)


def combine_aux_losses(
    per_layer: Sequence[Mapping[str, Tensor]], coefficients: Mapping[str, float]
) -> tuple[Tensor | None, dict[str, Tensor]]:
    """Combine per-layer auxiliary losses: mean over the layers that report a name, then weight.

    Args:
        per_layer: one mapping per MoE layer, name -> scalar loss (layers may report none).
        coefficients: name -> weight; names without a coefficient are averaged (and returned
            for logging) but do not enter the total.

    Returns:
        ``(total, means)``: ``total = sum_name coefficients[name] * means[name]`` (``None`` if no
        weighted loss was reported) and ``means`` per name.
    """
    sums: dict[str, list[Tensor]] = {}
    for losses in per_layer:
        for name, value in losses.items():
            sums.setdefault(name, []).append(value)
    means = {name: torch.stack(values).mean() for name, values in sums.items()}
    weighted = [coefficients[name] * value for name, value in means.items() if name in coefficients]
    total = torch.stack(weighted).sum() if weighted else None
    return total, means
