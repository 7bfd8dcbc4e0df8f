"""THOR's family record (``thor_transformer_*``) and its own options: the placement keys are the
routed families' (:mod:`.switch_options`) with the defaults of the authors' IWSLT'14 script
(2 experts in every other layer from the first), the draw and inference keys THOR's.
``consistency_alpha`` is the criterion's (``thor_label_smoothed_cross_entropy``); the inference
keys are set from ``eval.thor_*`` when a checkpoint is loaded, so they are no recipe keys."""

from __future__ import annotations

from moe_mt.bounds import AT_LEAST_0
from moe_mt.models.families import Family, OptionSpec, with_defaults
from moe_mt.models.switch_options import (
    EXPERT_DROPOUT,
    EXPERT_PARALLEL_SIZE,
    FREQ,
    NUM_EXPERTS,
    OFFSET,
    SIDES,
)

THOR_CRITERION = "thor_label_smoothed_cross_entropy"

GRANULARITY = OptionSpec(
    "granularity", str, "batch", "THOR: training expert draw: batch | sentence | token",
    choices=("batch", "sentence", "token"),
)  # fmt: skip
CONSISTENCY_ALPHA = OptionSpec(
    "consistency_alpha", float, 1.0,
    "THOR criterion: weight of the consistency loss (authors' code 1.0, paper 5.0)",
    bound=AT_LEAST_0, criterion=True,
)  # fmt: skip
INFERENCE = OptionSpec(
    "inference", str, "random", "THOR inference: random | fixed | mean (eval.thor_inference)",
    choices=("random", "fixed", "mean"), recipe=False,
)  # fmt: skip
INFERENCE_EXPERT = OptionSpec(
    "inference_expert", int, 0, "THOR: the expert of fixed inference (eval.thor_expert)",
    bound=AT_LEAST_0, recipe=False,
)  # fmt: skip
INFERENCE_SEED = OptionSpec(
    "inference_seed", int, 1, "THOR: the seed of random inference", recipe=False
)

#: The options of THOR's layers (``ThorOptions``), in the order they are read.
LAYER_OPTIONS = with_defaults(
    (NUM_EXPERTS, FREQ, OFFSET, SIDES, GRANULARITY, INFERENCE, INFERENCE_EXPERT, INFERENCE_SEED,
     EXPERT_DROPOUT),
    num_experts=2, offset=0,
)  # fmt: skip
THOR = Family(
    "thor", ("thor_transformer",),
    LAYER_OPTIONS + (CONSISTENCY_ALPHA, EXPERT_PARALLEL_SIZE), THOR_CRITERION,
    model_module="moe_mt.models.thor",
    upcyclable=True,
    draws_key="thor_draws",
    inference_key="thor_inference",
    eval_arguments=(
        ("thor_inference", INFERENCE), ("thor_expert", INFERENCE_EXPERT), ("seed", INFERENCE_SEED),
    ),
)  # fmt: skip

#: Registered, in this order, when the built-in families load (moe_mt.models.families).
FAMILIES = (THOR,)
