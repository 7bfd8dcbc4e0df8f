"""``moemt eval`` of a multilingual run: every direction scored on its own, and their average.

Each direction ``s-t`` of ``eval.directions`` (default: every direction of ``data.pairs`` and of
``data.zero_shot``, the directions prepared for testing but never trained) is
translated from ``data/text/<corpus>/<split>.s`` and scored against the untouched
``<split>.t`` of the same corpus (a de-en hypothesis against the English reference) with the
single-pair scorer (:func:`moe_mt.workflows.evaluate.evaluation.score`: sacreBLEU BLEU, chrF2,
TER with signatures). The average is the macro average over directions, each direction's
corpus-level score weighted equally whatever its size, as multilingual MT reports it (M2M-100,
NLLB-200 report the mean of per-direction scores); it is never a corpus score over the pooled
directions. Zero-shot directions are averaged on their own (``zero_shot_average``); ``average``
covers the trained directions only. Output in ``RUN_DIR/eval/<split>/``::

    <s>-<t>/hyp.txt           one detokenised hypothesis per source line of that direction
    <s>-<t>/expert_usage.png  MoE models: tokens per expert per layer for that direction
    report.json               per direction: scores, files (reference sha256), speed, expert
                              usage, THOR's consistency across expert draws (THOR models); the
                              averages; checkpoint, decoding options, versions
"""

from __future__ import annotations

import time

from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from moe_mt.checkpoints import choose_checkpoint
from moe_mt.data_prep.download import file_sha256
from moe_mt.errors import MoeMtError
from moe_mt.provenance import provenance
from moe_mt.workflows.common.progress import progress_bar
from moe_mt.workflows.common.rundir import RunDir, atomic_write_json, atomic_write_text
from moe_mt.workflows.evaluate.evaluation import (
    EXPERT_USAGE_PNG,
    HYPOTHESES,
    METRICS,
    REPORT,
    REPORT_FORMAT,
    EvalResult,
    check_same_length,
    read_lines,
    score,
)
from moe_mt.workflows.evaluate.expert_usage import track_expert_usage, write_expert_usage
from moe_mt.workflows.evaluate.thor_consistency import eval_thor_consistency
from moe_mt.workflows.prep.corpora import Direction, has_split, parse_direction, text_files
from moe_mt.workflows.translate.translator import DecodeOptions, Translator, model_overrides


def eval_directions(cfg: DictConfig, manifest: dict) -> list[Direction]:
    """``eval.directions`` (each once, each with a prepared corpus), or every trained one and
    every zero-shot one (``data.zero_shot``) prepared for ``eval.split``."""
    names = list(cfg.eval.directions)
    if not names:
        zero_shot = manifest["languages"].get("zero_shot", [])
        names = manifest["languages"]["directions"] + [
            d
            for d in zero_shot
            if has_split(manifest, parse_direction(d, "manifest"), cfg.eval.split)
        ]
    chosen = [parse_direction(n, "eval.directions") for n in names]
    if len(set(chosen)) != len(chosen):
        raise MoeMtError(f"eval.directions: a direction is listed twice ({', '.join(names)})")
    return chosen


def macro_average(per_direction: dict[str, dict]) -> dict:
    """Per metric: the unweighted mean of the directions' corpus-level scores, with their
    shared signature (directions scored with different signatures cannot be averaged)."""
    average = {}
    for metric in METRICS:
        scores = [d[metric]["score"] for d in per_direction.values()]
        signatures = {d[metric]["signature"] for d in per_direction.values()}
        if len(signatures) != 1:
            raise MoeMtError(f"{metric}: directions scored with different signatures")
        average[metric] = {
            "score": sum(scores) / len(scores),
            "signature": signatures.pop(),
            "directions": len(scores),
        }
    return average


def _average(results: dict[str, dict], zero_shot: bool) -> dict | None:
    """The macro average over the trained (or the zero-shot) directions; None if none."""
    chosen = {k: r["scores"] for k, r in results.items() if r["zero_shot"] is zero_shot}
    return macro_average(chosen) if chosen else None


def evaluate_directions(
    cfg: DictConfig, run_dir: RunDir, manifest: dict, options: DecodeOptions, console: Console
) -> EvalResult:
    """Translate and score every direction (``run_dir`` locked by the caller); write the report."""
    ev = cfg.eval
    for key in ("source", "reference", "bootstrap_baseline"):
        if ev[key] is not None:
            raise MoeMtError(
                f"eval.{key}: not for multilingual runs (they score the prepared test sets of "
                "eval.directions)"
            )
    if ev.legacy_bleu:
        raise MoeMtError(
            "eval.legacy_bleu: not for multilingual runs (their directions are scored with "
            "sacreBLEU's default tokenisation, the same for every language)"
        )
    directions = eval_directions(cfg, manifest)
    trained = set(manifest["languages"]["directions"])
    files = {d: text_files(manifest, run_dir.data, d, ev.split) for d in directions}
    texts = {}
    for d, (source, reference) in files.items():
        texts[d] = read_lines(source), read_lines(reference)
        check_same_length(*(texts[d][0], source), *(texts[d][1], reference), "source and reference")

    chosen = choose_checkpoint(run_dir.checkpoints, ev.checkpoint, ev.average_last)
    started = time.perf_counter()
    first = directions[0]
    loaded = Translator.load(
        run_dir.root, chosen.path, options, model_overrides(ev), (first.src, first.tgt)
    )
    load_seconds = time.perf_counter() - started
    name = ev.get("name") or ev.split
    out_dir = run_dir.eval / name
    console.print(
        f"eval {name}: {len(directions)} directions, checkpoint {chosen.path.name} "
        f"({chosen.num_updates:,} updates), beam {options.beam}",
        highlight=False,
    )
    results, hypotheses = {}, {}
    for d in directions:
        translator = loaded.for_direction(d.src, d.tgt)
        sources, references = texts[d]
        with progress_bar(console) as progress, track_expert_usage(translator.models[0]) as usage:
            task = progress.add_task(f"translate {d}", total=len(sources))
            translations = translator.translate(
                sources, on_batch=lambda n, t=task: progress.advance(t, n)
            )
        hypotheses[d] = translations.hypotheses
        d_dir = out_dir / d.name
        d_dir.mkdir(parents=True, exist_ok=True)
        usage_info = write_expert_usage(usage, d_dir / EXPERT_USAGE_PNG, title=f"{d} {name}")
        source, reference = files[d]
        results[d.name] = {
            "lines": len(sources),
            "files": {
                "source": {"path": str(source), "sha256": file_sha256(source)},
                "reference": {"path": str(reference), "sha256": file_sha256(reference)},
                "hypotheses": str(d_dir / HYPOTHESES),
            },
            "scores": score(translations.hypotheses, references, d_dir / HYPOTHESES, reference),
            "timing": {
                "translate_seconds": round(translations.seconds, 3),
                "sentences_per_second": round(translations.sentences_per_second, 2),
                "tokens_per_second": round(translations.tokens_per_second, 1),
                "source_tokens": translations.source_tokens,
                "generated_tokens": translations.generated_tokens,
            },
            "truncated_sources": translations.truncated,
            "zero_shot": d.name not in trained,
            "expert_usage": usage_info if usage_info["plot"] is not None else None,
            "thor": eval_thor_consistency(
                ev, translator, sources, references, translations.hypotheses, console
            ),
        }

    report = {
        "format": REPORT_FORMAT,
        "multilingual": True,
        "run_dir": str(run_dir.root),
        "name": name,
        "split": ev.split,
        "lines": sum(r["lines"] for r in results.values()),
        "directions": results,
        # Trained directions and zero-shot ones are averaged apart: a zero-shot mean is a
        # different quantity (and usually far lower), never part of the supervised one.
        "average": _average(results, zero_shot=False),
        "zero_shot_average": _average(results, zero_shot=True),
        "checkpoint": chosen.as_dict(),
        "decoding": options.as_dict(),
        "timing": {"load_seconds": round(load_seconds, 3)},
        "parameters": loaded.num_parameters,
        "model": {"arch": loaded.arch},
        "eval_config": OmegaConf.to_container(ev),
        **provenance(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    for d in directions:
        atomic_write_text(out_dir / d.name / HYPOTHESES, "".join(h + "\n" for h in hypotheses[d]))
    # Written last: a report means the hypotheses beside it are complete.
    atomic_write_json(out_dir / REPORT, report)
    return EvalResult(run_dir.root, out_dir, report)
