"""``eval.engine``: which decoder translates for ``moemt eval`` and ``moemt translate``.

- ``fairseq``: the checkpoint in fairseq's beam search (:class:`Translator`);
- ``ctranslate2``: its export (:func:`.exporter.ensure_export`: made on demand, reused while its
  inputs are unchanged) in CTranslate2 (:class:`.ct2_translator.Ct2Translator`), with the same
  decoding options.

Both run on the CPU with torch's thread count (``torch.get_num_threads()``), so that their
speeds compare on equal terms. :func:`open_translator` returns the translator and the report's
``engine`` entry: name, quantization, threads, and for CTranslate2 its version, compute type,
export and :func:`decoding_differences`: where the two decoders cannot mean the same.

Every option maps one to one (:mod:`.ct2_translator`); two behaviours cannot be matched, both
measured on the demo model (greedy search gives the same hypotheses in both engines; beam search
differs only in these two cases):

- at the maximum length fairseq forces ``</s>`` and counts its log-probability and its position
  in the hypothesis's score; CTranslate2 stops the hypothesis without it. A hypothesis that
  reaches the limit (a repetition loop, mostly) is ranked differently among the beam's finished
  ones;
- ``no_repeat_ngram_size``: fairseq bans a token by setting its log-probability to -inf after
  the softmax (the other tokens keep theirs); CTranslate2 bans it in the logits before the
  softmax, so the other tokens' probabilities are renormalised. Greedy search picks the same
  token either way; beam search compares hypotheses by those scores and can rank them
  differently.
"""

from __future__ import annotations

from omegaconf import DictConfig

from moe_mt.errors import MoeMtError
from moe_mt.models import families
from moe_mt.workflows.export.ct2_translator import Ct2Translator
from moe_mt.workflows.export.exporter import ensure_export
from moe_mt.workflows.translate.translator import DecodeOptions, Translator

ENGINES = ("fairseq", "ctranslate2")


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise MoeMtError(f"eval.engine={engine}: expected one of {', '.join(ENGINES)}")
    return engine


def open_translator(
    cfg: DictConfig, chosen, options: DecodeOptions, direction: tuple[str, str]
) -> tuple[object, dict]:
    """The translator of ``cfg.eval.engine`` for checkpoint ``chosen`` of ``cfg.run_dir``, and
    the report's ``engine`` entry."""
    import torch

    engine = check_engine(cfg.eval.engine)
    threads = torch.get_num_threads()
    if engine == "fairseq":
        translator = Translator.load(
            cfg.run_dir, chosen.path, options, families.eval_overrides(cfg.eval), direction
        )
        return translator, {"name": "fairseq", "quantization": "float32", "threads": threads}
    import ctranslate2  # the fairseq engine runs without it

    exported = ensure_export(cfg, chosen)
    translator = Ct2Translator.load(exported.out_dir, exported.info, options, direction, threads)
    return translator, {
        "name": "ctranslate2",
        "version": ctranslate2.__version__,
        "quantization": exported.info["quantization"],
        "compute_type": translator.compute_type,
        "threads": threads,
        "export": str(exported.out_dir),
        "export_reused": exported.reused,
        # a routed model's experts merged for serving: a different model (export.json's merge)
        "merge_experts": (exported.info.get("merge") or {}).get("method"),
        "decoding_differences": decoding_differences(options),
    }


def decoding_differences(options: DecodeOptions) -> list[str]:
    """The decoding behaviours of these options that CTranslate2 cannot match (module docstring),
    one line each, for ``report.json``."""
    if options.beam == 1:
        return []  # greedy: the argmax is the same either way, and so is the text at the limit
    differences = [
        "max length: fairseq ends a hypothesis at the limit with a forced </s> scored in its "
        "log-probability and length, CTranslate2 stops it without one (hypotheses that reach the "
        "limit can rank differently in the beam)"
    ]
    if options.no_repeat_ngram_size > 0:
        differences.append(
            "no_repeat_ngram_size: fairseq bans repeated n-grams after the softmax, CTranslate2 "
            "before it (the other tokens' probabilities renormalised), so beam hypotheses that "
            "had tokens banned are scored differently"
        )
    return differences
