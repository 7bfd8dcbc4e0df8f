"""A dense fairseq Transformer as a CTranslate2 model, through CTranslate2's own spec API.

CTranslate2's ``FairseqConverter`` cannot take a moemt checkpoint as it is: it accepts only the
models fairseq registers itself (``transformer``, ``multilingual_transformer``, ...) and refuses
``moemt_transformer`` by its registered model name, and it builds the model from the checkpoint
alone, without moemt's run directory (the data-bin of a moved run, the THOR expert made dense,
the multilingual task's language tokens). So the spec is built here with the library's API, as
its converter does it:

- :meth:`ctranslate2.specs.TransformerSpec.from_config` for the layer counts, heads, pre/post
  norm, activation and embedding layer norm of the fairseq arguments;
- the library's fairseq loader helpers (``ctranslate2.converters.fairseq.set_transformer_encoder``
  / ``set_transformer_decoder``) to copy the weights of the loaded modules: no weight is written
  here by hand;
- a GLU FFN (``model.moe.expert_activation=swiglu | geglu``, :mod:`moe_mt.models.glu`) as
  CTranslate2's ``ffn_glu``, which computes ``linear_1(act(linear_0(x)) * linear_0_noact(x))``:
  the gate ``fc1.w1`` is copied into ``linear_0`` by the same loader (which reads ``fc1``, the gate
  standing in for it while it copies), the up projection ``fc1.w3`` into ``linear_0_noact`` by
  its ``set_linear``, ``act`` is Swish (SiLU) for swiglu and GELU (erf) for geglu;
- the vocabularies of the task's dictionaries (fairseq's ``<pad>`` under the name ``<blank>``,
  which CTranslate2 reserves for padding, as its converter does), decoding started by ``</s>``
  and ``</s>`` appended to each source, as fairseq does;
- :class:`ctranslate2.converters.Converter` (validation, quantization, saving) through
  :class:`SpecConverter`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from moe_mt.errors import MoeMtError

#: ``moemt export --quantization``: CTranslate2's weight types (int8_float16 and int8_bfloat16
#: need a GPU to run and are left out).
QUANTIZATIONS = ("int8", "int8_float32", "int16", "float16", "bfloat16", "float32")
#: CTranslate2's vocabulary name for fairseq's padding symbol.
PAD_NAME = "<blank>"


def _activation(name: str):
    from ctranslate2.specs import common_spec

    known = {
        "relu": common_spec.Activation.RELU,
        "gelu": common_spec.Activation.GELU,
        "gelu_accurate": common_spec.Activation.GELUTanh,
        "gelu_fast": common_spec.Activation.GELUTanh,
        "swish": common_spec.Activation.SWISH,
    }
    if name not in known:
        raise MoeMtError(
            f"--activation-fn {name}: CTranslate2 has no such activation ({', '.join(known)})"
        )
    return known[name]


def _glu_activation(name: str):
    from ctranslate2.specs import common_spec

    # CTranslate2's GELU is the exact (erf) one, as geglu's; its Swish is x * sigmoid(x), SiLU.
    return {"swiglu": common_spec.Activation.SWISH, "geglu": common_spec.Activation.GELU}[name]


def _ffn_glu(layers: list) -> str | None:
    """The GLU of the layers' FFNs (``swiglu`` | ``geglu``, all the same), or None: no GLU FFN.

    Raises:
        MoeMtError: layers of different FFN kinds (CTranslate2 has one per model).
    """
    from moe_mt.models.glu import GLUProjection

    ffns = [layer.fc1 for layer in layers]
    kinds = {ffn.activation if isinstance(ffn, GLUProjection) else None for ffn in ffns}
    if len(kinds) > 1:
        names = ", ".join(sorted(str(k or "no GLU") for k in kinds))
        raise MoeMtError(
            f"CTranslate2 cannot express FFNs of different kinds in one model: {names}"
        )
    return kinds.pop() if kinds else None


@contextlib.contextmanager
def _gate_as_fc1(layers: list) -> Iterator[None]:
    """Inside the block, each GLU layer's ``fc1`` is its gate ``w1``, so that the library's
    fairseq loader copies the gate into ``linear_0`` (the activated half of CTranslate2's GLU)."""
    from moe_mt.models.glu import GLUProjection

    glus = [(layer, layer.fc1) for layer in layers if isinstance(layer.fc1, GLUProjection)]
    try:
        for layer, glu in glus:
            layer.fc1 = glu.w1
        yield
    finally:
        for layer, glu in glus:
            layer.fc1 = glu


def check_exportable(args) -> None:
    """Refuse fairseq options that CTranslate2's Transformer cannot express (one line each)."""
    problems = [
        (getattr(args, "no_token_positional_embeddings", False), "no positional embeddings"),
        (getattr(args, "lang_tok_replacing_bos_eos", False), "--lang-tok-replacing-bos-eos"),
        (
            args.encoder_normalize_before != args.decoder_normalize_before,
            "pre-norm on one side only (encoder/decoder_normalize_before differ)",
        ),
        (
            args.encoder_attention_heads != args.decoder_attention_heads,
            "different encoder and decoder attention heads",
        ),
    ]
    for failed, what in problems:
        if failed:
            raise MoeMtError(f"model arch {args.arch}: CTranslate2 cannot express {what}")


def vocabulary(dictionary) -> list[str]:
    """A fairseq dictionary's symbols in id order, padding renamed for CTranslate2."""
    return [PAD_NAME if i == dictionary.pad() else s for i, s in enumerate(dictionary.symbols)]


def transformer_spec(model, task):
    """The ``ctranslate2.specs.TransformerSpec`` of a dense fairseq Transformer ``model``
    (in eval mode) and the dictionaries of its ``task``."""
    import torch
    from ctranslate2.converters import fairseq as ct2_fairseq
    from ctranslate2.specs import TransformerSpec

    args = model.args
    check_exportable(args)
    layers = [*model.encoder.layers, *model.decoder.layers]
    glu = _ffn_glu(layers)
    activation = (
        _glu_activation(glu) if glu else _activation(getattr(args, "activation_fn", "relu"))
    )
    spec = TransformerSpec.from_config(
        (args.encoder_layers, args.decoder_layers),
        args.encoder_attention_heads,
        pre_norm=args.encoder_normalize_before,
        activation=activation,
        layernorm_embedding=bool(getattr(args, "layernorm_embedding", False)),
        ffn_glu=glu is not None,
    )
    with torch.no_grad():
        with _gate_as_fc1(layers):
            ct2_fairseq.set_transformer_encoder(spec.encoder, model.encoder)
            ct2_fairseq.set_transformer_decoder(spec.decoder, model.decoder)
        if glu:
            layer_specs = [*spec.encoder.layer, *spec.decoder.layer]
            for layer_spec, layer in zip(layer_specs, layers, strict=True):
                ct2_fairseq.set_linear(layer_spec.ffn.linear_0_noact, layer.fc1.w3)
    spec.register_source_vocabulary(vocabulary(task.source_dictionary))
    spec.register_target_vocabulary(vocabulary(task.target_dictionary))
    # fairseq starts decoding with </s> and ends every source with </s>.
    spec.config.decoder_start_token = spec.config.eos_token
    spec.config.add_source_eos = True
    return spec


def _converter_class():
    from ctranslate2.converters import Converter

    class SpecConverter(Converter):
        """The library's converter (validate, quantize, save) for a spec built beforehand."""

        def __init__(self, spec):
            self._spec = spec

        def _load(self):
            return self._spec

    return SpecConverter


def save_spec(spec, out_dir: Path, quantization: str) -> None:
    """Validate, quantize (``quantization``, one of :data:`QUANTIZATIONS`) and write ``spec``
    into ``out_dir`` (created or replaced)."""
    if quantization not in QUANTIZATIONS:
        raise MoeMtError(f"quantization={quantization}: expected one of {', '.join(QUANTIZATIONS)}")
    _converter_class()(spec).convert(str(out_dir), quantization=quantization, force=True)
