"""Switch Transformer (Fedus et al. 2022) and X-MoE (Chi et al. 2022) translation models.

One registered model, ``moemt_moe_transformer`` (:class:`SwitchTransformerModel`): the dense
baseline whose every ``moe_freq``-th layer has an MoE FFN (:mod:`moe_mt.models.moe_layers`).
Architectures, for each size of :data:`moe_mt.models.transformer.SIZES` (demo, iwslt, wmt,
wmt_big; the backbone is the dense baseline's of the same size):

- ``switch_transformer_<size>``: softmax top-k router (top-1 by default, ``--moe-top-k 2``
  for GShard-style top-2), Switch's load-balancing loss, capacity, jitter, optional z-loss;
- ``xmoe_transformer_<size>``: the same with X-MoE's cosine router in a ``--moe-router-dim``
  space with a learned temperature (``--moe-router cosine``).

Options and their defaults: :mod:`moe_mt.models.switch_options`, each declared once
(``moemt config RECIPE model.moe`` lists them with each family's default); an option left unset
takes its family's default. The reference conventions (:mod:`moe_mt.moe.conventions`) and
NLLB-MoE's regularisers (:mod:`moe_mt.moe.eom`, :mod:`moe_mt.moe.cmr`) are off by default.

The auxiliary-loss weights are the criterion's (``moe_label_smoothed_cross_entropy``).
fairseq saves these args in every checkpoint, so a model reloads from its checkpoint alone.
"""

from __future__ import annotations

from moe_mt.models import families
from moe_mt.models.moe_layers import (
    MoETransformerModel,
    count_cmr_block,
    count_routed_block,
    count_shared_block,
)
from moe_mt.models.switch_options import MOE_CRITERION, SWITCH, XMOE
from moe_mt.models.transformer import register_family_sizes, register_model_again
from moe_mt.moe import ConditionalMoE, MoEFeedForward, SharedExpertMoE

MODEL_NAME = "moemt_moe_transformer"
CRITERION = MOE_CRITERION


@register_model_again(MODEL_NAME)
class SwitchTransformerModel(MoETransformerModel):
    """The dense baseline with MoE FFNs in every ``moe_freq``-th layer (see the module doc)."""

    @staticmethod
    def add_args(parser):
        MoETransformerModel.add_args(parser)
        families.add_arguments(parser, (SWITCH.name, XMOE.name), "Mixture of Experts (moemt)")


ARCHITECTURES = register_family_sizes(MODEL_NAME, SWITCH) + register_family_sizes(MODEL_NAME, XMOE)
families.register_counter(MoEFeedForward, count_routed_block)
families.register_counter(ConditionalMoE, count_cmr_block)
families.register_counter(SharedExpertMoE, count_shared_block)
