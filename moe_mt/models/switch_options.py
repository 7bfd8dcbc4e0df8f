"""The routed families' options, each declared once, and the Switch (``switch_transformer_*``)
and X-MoE (``xmoe_transformer_*``) family records. MH-MoE, Soft MoE and THOR take the placement
and routing options declared here; the reference conventions (:mod:`moe_mt.moe.conventions`) and
NLLB-MoE's regularisers (EOM, CMR) are Switch's and X-MoE's only.

``moemt config RECIPE model.moe`` prints every option with each family's default. The loss
options are the criterion's (``moe_label_smoothed_cross_entropy``,
:mod:`moe_mt.criterions.moe_criterion`, whose config fields take their defaults from here).

Like every ``moe_mt/models/<family>_options.py``, this module imports neither fairseq nor torch:
the recipe schema reads it at every ``moemt`` command (:mod:`moe_mt.models.families`). The choice
tuples repeat the layers' own (``moe_mt.moe.conventions``, which imports torch); a test checks
that they agree.
"""

from __future__ import annotations

from moe_mt.bounds import AT_LEAST_0, AT_LEAST_1, POSITIVE, PROBABILITY, Bound
from moe_mt.models.dense_options import EXPERT_ACTIVATION
from moe_mt.models.families import (
    Family,
    OptionSpec,
    RouterKind,
    router_names,
    with_defaults,
)

BELOW_1 = Bound(0.0, 1.0, open_high=True)
MOE_CRITERION = "moe_label_smoothed_cross_entropy"

# -- placement and routing: every routed family ---------------------------------------------
NUM_EXPERTS = OptionSpec("num_experts", int, 8, "experts per MoE layer", bound=AT_LEAST_1)
TOP_K = OptionSpec(
    "top_k", int, 1, "experts per token: 1 = Switch, 2 = GShard-style", bound=AT_LEAST_1
)
FREQ = OptionSpec(
    "freq", int, 2, "every freq-th layer of a side is an MoE layer ...", bound=AT_LEAST_1
)
OFFSET = OptionSpec(
    "offset", int, 1, "... the layers with index % freq == offset % freq (0-based)",
    bound=AT_LEAST_0,
)  # fmt: skip
SIDES = OptionSpec(
    "sides", str, "both", "encoder | decoder | both", choices=("encoder", "decoder", "both")
)
ROUTER = OptionSpec(
    "router", str, "topk",
    "router: topk (Switch) | cosine (X-MoE) | expert_choice (Zhou et al. 2022) | a plugin's",
    choices=router_names,
)  # fmt: skip
ROUTER_DIM = OptionSpec("router_dim", int, 16, "cosine router's routing width", bound=AT_LEAST_1)
ROUTER_INIT_SCALE = OptionSpec(
    "router_init_scale", float, 0.1, "top-k gate init std sqrt(scale / d)"
)
JITTER = OptionSpec(
    "jitter", float, 0.0, "top-k gate input noise x * U(1 - j, 1 + j) in training",
    bound=PROBABILITY,
)  # fmt: skip
# -- the top-k router's scores and bias balancing (moe_mt/moe/routing.py, balance.py) ---------
SCORE_FUNC = OptionSpec(
    "score_func", str, "softmax",
    "top-k scores: softmax over experts | sigmoid per expert (DeepSeek-V3, Llama 4)",
    choices=("softmax", "sigmoid"),
)  # fmt: skip
ROUTE_NORM = OptionSpec(
    "route_norm", bool, True, "top-k: renormalise the k chosen weights to sum to 1 (k > 1)"
)
ROUTE_SCALE = OptionSpec(
    "route_scale", float, 1.0, "top-k: factor on the combine weights (DeepSeek-V3: 2.5)",
    bound=POSITIVE,
)  # fmt: skip
BIAS_BALANCE = OptionSpec(
    "bias_balance", bool, False,
    "top-k: auxiliary-loss-free balancing, a per-expert selection bias (Wang et al. 2024)",
)  # fmt: skip
BIAS_UPDATE_RATE = OptionSpec(
    "bias_update_rate", float, 0.001,
    "bias_balance: bias += rate * sign(mean load - load) after each update", bound=POSITIVE,
)  # fmt: skip
# -- expert choice (moe_mt/moe/router_expert_choice.py) --------------------------------------
EC_CAPACITY_FACTOR = OptionSpec(
    "ec_capacity_factor", float, 2.0,
    "expert_choice: each expert takes ceil(c T / E) tokens, c experts per token on average",
    bound=POSITIVE,
)  # fmt: skip
CAPACITY_FACTOR = OptionSpec(
    "capacity_factor", float, 1.25, "training capacity factor (<= 0: no dropping)"
)
EVAL_CAPACITY_FACTOR = OptionSpec(
    "eval_capacity_factor", float, None, "eval capacity factor (null or <= 0: no dropping)"
)
EXPERT_DROPOUT = OptionSpec(
    "expert_dropout", float, None, "dropout inside experts (null: model.activation_dropout)",
    bound=PROBABILITY,
)  # fmt: skip
#: ``model.expert_parallel_size``, which fairseq receives as a model argument.
EXPERT_PARALLEL_SIZE = OptionSpec(
    "expert_parallel_size", int, None,
    "experts of every MoE layer spread over P ranks (model.expert_parallel_size)",
    bound=AT_LEAST_1, recipe=False,
)  # fmt: skip

# -- the experts' form: shared, fine-grained, GLU (moe_mt/moe/shared.py, experts.py) ----------
NUM_SHARED_EXPERTS = OptionSpec(
    "num_shared_experts", int, 0,
    "experts every token passes through beside the routed ones (DeepSeekMoE, Qwen2-MoE)",
    bound=AT_LEAST_0,
)  # fmt: skip
SHARED_EXPERT_GATE = OptionSpec(
    "shared_expert_gate", bool, False, "sigmoid gate on the shared experts (Qwen2-MoE)"
)
EXPERT_FFN_DIM = OptionSpec(
    "expert_ffn_dim", int, None, "expert hidden width (null: the model's FFN width)",
    bound=AT_LEAST_1,
)  # fmt: skip
EXPERT_SEGMENTS = OptionSpec(
    "expert_segments", int, 1,
    "fine-grained experts (DeepSeekMoE): m E experts of width f / m, top m k",
    bound=AT_LEAST_1,
)  # fmt: skip
BALANCE_SCOPE = OptionSpec(
    "balance_scope", str, "micro_batch",
    "balance loss over micro_batch | sequence (DeepSeek-V3) | global_batch (Qiu et al. 2025)",
    choices=("micro_batch", "sequence", "global_batch"),
)  # fmt: skip

# -- the criterion's keys (moe_label_smoothed_cross_entropy) --------------------------------
BALANCE_WEIGHT = OptionSpec(
    "balance_weight", float, 0.01, "criterion: weight of the load-balancing loss",
    bound=AT_LEAST_0, criterion=True,
)  # fmt: skip
Z_LOSS = OptionSpec("z_loss", bool, False, "criterion: add the router z-loss", criterion=True)
Z_LOSS_WEIGHT = OptionSpec(
    "z_loss_weight", float, 0.001, "criterion: weight of the router z-loss",
    bound=AT_LEAST_0, criterion=True,
)  # fmt: skip

# -- reference conventions (moe_mt/moe/conventions.py): moemt's own by default --------------
BALANCE_CHOICES = OptionSpec(
    "balance_choices", str, "all", "balance loss over all | first (GShard, fairseq) choices",
    choices=("all", "first"),
)  # fmt: skip
RENORMALIZE = OptionSpec(
    "renormalize", str, "before",
    "top-k weights renormalised before | after (fairseq) capacity drops",
    choices=("before", "after"),
)  # fmt: skip
SECOND_EXPERT_POLICY = OptionSpec(
    "second_expert_policy", str, "all",
    "top-2's second expert: all (argmax) | sampling (GShard, fairseq) | random",
    choices=("all", "sampling", "random"),
)  # fmt: skip
CAPACITY_FORMULA = OptionSpec(
    "capacity_formula", str, "moemt",
    "moemt: ceil(cf k T / E), T non-pad | fairseq: int(cf k ceil(S / E)), S with pads",
    choices=("moemt", "fairseq"),
)  # fmt: skip
EVAL_CAPACITY_TOKEN_FRACTION = OptionSpec(
    "eval_capacity_token_fraction", float, None,
    "capacity_formula=fairseq: eval capacity ceil(f S) when > 0 (fairseq: 0.25)",
)  # fmt: skip

# -- NLLB-MoE's regularisers (moe_mt/moe/eom.py, cmr.py): off by default ---------------------
EOM = OptionSpec(
    "eom", float, 0.0, "Expert Output Masking: drop a token's expert output with this probability",
    bound=BELOW_1,
)  # fmt: skip
CMR = OptionSpec(
    "cmr", bool, False, "Conditional MoE Routing: y = (1 - g) FFN_shared(x) + g MoE(x)"
)
CMR_GATE_DROPOUT = OptionSpec(
    "cmr_gate_dropout", float, 0.0, "dropout on CMR's gate g (fairseq --cmr-gate-drop)",
    bound=BELOW_1,
)  # fmt: skip

# -- the routers model.moe.router names (builders in moe_mt/models/moe_layers.py) ------------
TOP_K_SCORES = (SCORE_FUNC, ROUTE_NORM, ROUTE_SCALE, BIAS_BALANCE, BIAS_UPDATE_RATE)
TOPK_ROUTER = RouterKind(
    "topk", "moe_mt.models.moe_layers:build_topk_router",
    (ROUTER_INIT_SCALE, JITTER) + TOP_K_SCORES,
)  # fmt: skip
COSINE_ROUTER = RouterKind("cosine", "moe_mt.models.moe_layers:build_cosine_router", (ROUTER_DIM,))
EXPERT_CHOICE_ROUTER = RouterKind(
    "expert_choice", "moe_mt.models.moe_layers:build_expert_choice_router",
    (ROUTER_INIT_SCALE, EC_CAPACITY_FACTOR),
)  # fmt: skip

#: The options every routed family shares (MH-MoE and Soft MoE take these with the losses).
ROUTED = (
    NUM_EXPERTS, TOP_K, FREQ, OFFSET, SIDES, ROUTER, ROUTER_DIM, ROUTER_INIT_SCALE, JITTER,
    *TOP_K_SCORES, EC_CAPACITY_FACTOR, CAPACITY_FACTOR, EVAL_CAPACITY_FACTOR, EXPERT_DROPOUT,
)  # fmt: skip
#: The token-choice block's expert forms and balance scope (Switch's and X-MoE's only).
EXPERT_FORMS = (
    NUM_SHARED_EXPERTS, SHARED_EXPERT_GATE, EXPERT_FFN_DIM, EXPERT_SEGMENTS, EXPERT_ACTIVATION,
    BALANCE_SCOPE,
)  # fmt: skip
LOSSES = (BALANCE_WEIGHT, Z_LOSS, Z_LOSS_WEIGHT)
CONVENTIONS = (
    BALANCE_CHOICES, RENORMALIZE, SECOND_EXPERT_POLICY, CAPACITY_FORMULA,
    EVAL_CAPACITY_TOKEN_FRACTION,
)  # fmt: skip
REGULARISERS = (EOM, CMR, CMR_GATE_DROPOUT)
SWITCH_OPTIONS = (
    ROUTED + EXPERT_FORMS + LOSSES + CONVENTIONS + REGULARISERS + (EXPERT_PARALLEL_SIZE,)
)

SWITCH = Family(
    "switch", ("switch_transformer",), SWITCH_OPTIONS, MOE_CRITERION,
    model_module="moe_mt.models.switch",
    upcyclable=True,
)  # fmt: skip
XMOE = Family(
    "xmoe", ("xmoe_transformer",),
    with_defaults(SWITCH_OPTIONS, router="cosine"),
    MOE_CRITERION,
    model_module="moe_mt.models.switch",
    upcyclable=True,
)  # fmt: skip

#: Registered, in this order, when the built-in families load (moe_mt.models.families).
ROUTERS = (TOPK_ROUTER, COSINE_ROUTER, EXPERT_CHOICE_ROUTER)
FAMILIES = (SWITCH, XMOE)
