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
- the vocabularies of the task's dictionaries (fairseq's ``<pad>`` under the name ``<blank>``,
  which CTranslate2 reserves for padding, as its converter does), decoding started by ``</s>``
  and ``</s>`` appended to each source, as fairseq does;
- :class:`ctranslate2.converters.Converter` (validation, quantization, saving) through
  :class:`SpecConverter`.
"""

from __future__ import annotations

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
    spec = TransformerSpec.from_config(
        (args.encoder_layers, args.decoder_layers),
        args.encoder_attention_heads,
        pre_norm=args.encoder_normalize_before,
        activation=_activation(getattr(args, "activation_fn", "relu")),
        layernorm_embedding=bool(getattr(args, "layernorm_embedding", False)),
    )
    with torch.no_grad():
        ct2_fairseq.set_transformer_encoder(spec.encoder, model.encoder)
        ct2_fairseq.set_transformer_decoder(spec.decoder, model.decoder)
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
