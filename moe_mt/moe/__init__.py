"""Pure PyTorch Mixture-of-Experts building blocks (routers, dispatch, expert banks).

Imports torch only, never fairseq, so that every method can be tested, benchmarked and
reused without a trainer. One shape for every token-choice method::

    routing = router(x, pad_mask)                    # Routing: expert_index [t, k],
                                                     # combine_weight [t, k], aux_losses, stats
    plan = plan_dispatch(routing.expert_index, e, capacity, pad_mask)   # counts + permutation
    grouped = dispatch(x, plan)                      # [m, d], contiguous per expert
    out = experts(grouped, plan.rows_per_group)      # ExpertBank, weights [e, d, f], [e, f, o]
    y = combine(out, plan, routing.combine_weight, t)                   # [t, o]

On CUDA the layer uses :func:`plan_dispatch_static` instead (shapes fixed by ``[t, k]``,
capacity as a mask) and the bank one grouped GEMM per weight over device-side offsets, so that
nothing in the step waits for the host.

:class:`MoEFeedForward` is that pipeline as a layer (flat ``[t, d]`` or fairseq's ``[n, b, d]``
via ``forward_tbd``). Soft MoE (per sentence, no discrete choice) uses
:class:`SoftSlotRouter` with :func:`soft_dispatch` / :func:`soft_combine` and the same bank.
Expert-choice routing (:class:`ExpertChoiceRouter`: each expert picks its tokens) runs on the
token-choice pipeline, as a ``Routing`` with a column per expert (``k = e``) and ``active``.

Files, one concept each: ``routing`` (Routing, Router base, top-k selection, layout helpers),
``router_topk`` / ``router_cosine`` / ``router_random`` / ``router_expert_choice`` / ``soft``
(routers), ``dispatch`` (capacity, priority rule, plan, gathers), ``experts`` and
``grouped_ffn`` (expert bank), ``losses`` (balance, z-loss, combination across layers),
``stats``, ``layer``; ``conventions`` (reference conventions of the balance loss, top-k weights,
second expert and capacity), ``eom`` (Expert Output Masking) and ``cmr`` (Conditional MoE
Routing), NLLB-MoE's regularisers.
"""

from moe_mt.moe.cmr import ConditionalMoE
from moe_mt.moe.conventions import RoutingConventions
from moe_mt.moe.dispatch import (
    DispatchPlan,
    combine,
    dispatch,
    expert_capacity,
    plan_dispatch,
    plan_dispatch_static,
)
from moe_mt.moe.experts import ExpertBank
from moe_mt.moe.layer import MoEFeedForward, MoEOutput
from moe_mt.moe.losses import combine_aux_losses, load_balance_loss, router_z_loss
from moe_mt.moe.router_cosine import CosineRouter
from moe_mt.moe.router_expert_choice import ExpertChoiceRouter
from moe_mt.moe.router_random import RandomRouter
from moe_mt.moe.router_topk import TopKRouter
from moe_mt.moe.routing import (
    Router,
    Routing,
    flatten_tbd,
    route_top_k,
    sentence_index_tbd,
    unflatten_tbd,
)
from moe_mt.moe.shared import SharedExpertMoE
from moe_mt.moe.soft import SoftRouting, SoftSlotRouter, soft_combine, soft_counts, soft_dispatch
from moe_mt.moe.stats import MoEStats, dispatch_stats, mean_stats, router_entropy

__all__ = [
    "ConditionalMoE",
    "CosineRouter",
    "DispatchPlan",
    "ExpertBank",
    "ExpertChoiceRouter",
    "MoEFeedForward",
    "MoEOutput",
    "MoEStats",
    "RandomRouter",
    "Router",
    "Routing",
    "RoutingConventions",
    "SharedExpertMoE",
    "SoftRouting",
    "SoftSlotRouter",
    "TopKRouter",
    "combine",
    "combine_aux_losses",
    "dispatch",
    "dispatch_stats",
    "expert_capacity",
    "flatten_tbd",
    "load_balance_loss",
    "mean_stats",
    "plan_dispatch",
    "plan_dispatch_static",
    "route_top_k",
    "router_entropy",
    "router_z_loss",
    "sentence_index_tbd",
    "unflatten_tbd",
    "soft_combine",
    "soft_counts",
    "soft_dispatch",
]
