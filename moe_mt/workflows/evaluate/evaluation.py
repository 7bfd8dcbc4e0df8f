"""``moemt eval``: translate a test set with a chosen checkpoint and score it with sacrebleu.

What is translated: a prepared split (``eval.split``: ``data/text/<split>.<src>``, scored against
``data/text/<split>.<tgt>``, byte copies of the untouched inputs), or any line-aligned file pair
(``eval.source`` + ``eval.reference``). Which model: ``eval.checkpoint`` (last | best | average
of the last ``eval.average_last`` | a path, see :mod:`moe_mt.checkpoints`). Scores: BLEU, chrF2
and TER with sacrebleu's defaults, each with its signature; optionally a paired bootstrap
against another run's hypotheses for the same references (``eval.bootstrap_baseline``).

Output, in ``RUN_DIR/eval/<name>/`` (``<name>``: the split, or the source file's name), both
written atomically while the run directory is locked::

    hyp.txt            one detokenised hypothesis per source line
    report.json        scores, signatures, checkpoint, decoding options, speed, versions, and
                       for MoE models ``expert_usage``: tokens per expert per MoE layer on
                       this split (:mod:`moe_mt.workflows.evaluate.expert_usage`); for THOR models
                       ``thor``: the consistency of translations across random expert draws
                       (:mod:`moe_mt.workflows.evaluate.thor_consistency`)
    expert_usage.png   the layers x experts heat map (MoE models only)

The lock is held for the whole command (not only while writing), so that a busy run directory
is refused before any decoding is spent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from moe_mt.checkpoints import choose_checkpoint
from moe_mt.data_prep.download import file_sha256
from moe_mt.errors import MoeMtError
from moe_mt.provenance import provenance
from moe_mt.workflows.common.progress import progress_bar
from moe_mt.workflows.common.rundir import RunDir, atomic_write_json, atomic_write_text
from moe_mt.workflows.evaluate.expert_usage import track_expert_usage, write_expert_usage
from moe_mt.workflows.evaluate.legacy_bleu import legacy_bleu
from moe_mt.workflows.evaluate.thor_consistency import eval_thor_consistency
from moe_mt.workflows.translate.translator import DecodeOptions, Translator, model_overrides

REPORT_FORMAT = 1
HYPOTHESES = "hyp.txt"
REPORT = "report.json"
EXPERT_USAGE_PNG = "expert_usage.png"
METRICS = ("BLEU", "chrF2", "TER")


@dataclass
class EvalResult:
    run_dir: Path
    out_dir: Path  # RUN_DIR/eval/<name>
    report: dict


@dataclass(frozen=True)
class EvalFiles:
    name: str  # the directory under eval/
    split: str | None  # the prepared split, or None for a file pair
    source: Path
    reference: Path


# -- inputs ------------------------------------------------------------------------------------


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 file, split on ``\\n`` only (as ``wc -l`` and prep count them)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MoeMtError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise MoeMtError(f"{path}:{line}: invalid UTF-8") from None
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines


def check_same_length(a: list, a_path: Path | str, b: list, b_path: Path | str, what: str):
    if len(a) != len(b):
        raise MoeMtError(
            f"{a_path}: {len(a)} lines but {b_path}: {len(b)} lines ({what} must be line-aligned)"
        )


def eval_files(cfg: DictConfig, run_dir: RunDir, manifest: dict) -> EvalFiles:
    """The source and reference of ``cfg.eval``: a file pair if given, else the split."""
    ev = cfg.eval
    if (ev.source is None) != (ev.reference is None):
        raise MoeMtError("eval.source and eval.reference go together: give both or neither")
    if ev.source is not None:
        source, reference = Path(ev.source), Path(ev.reference)
        for key, path in (("eval.source", source), ("eval.reference", reference)):
            if not path.is_file():
                raise MoeMtError(f"{path}: no such file ({key})")
        return EvalFiles(_name_for(source), None, source, reference)
    splits = [s for s in manifest.get("splits", {}) if s != "train"]
    if ev.split not in splits:
        raise MoeMtError(
            f"eval.split={ev.split}: not a prepared split of {run_dir.root} "
            f"(prepared: {', '.join(splits) or 'none'})"
        )
    text = run_dir.data / manifest["files"]["text"]
    langs = manifest["languages"]
    return EvalFiles(
        ev.split,
        ev.split,
        text / f"{ev.split}.{langs['src']}",
        text / f"{ev.split}.{langs['tgt']}",
    )


def _checked_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._@+-]*", name):
        raise MoeMtError(
            f"eval.name={name!r}: use letters, digits and . _ @ + - (a directory under eval/)"
        )
    return name


def _name_for(source: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", source.name).lstrip(".")
    return name or "source"


def _read_manifest(run_dir: RunDir) -> dict:
    try:
        return json.loads(run_dir.manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise MoeMtError(
            f"{run_dir.data}: no prepared data; run `moemt prep` on this config first"
        ) from None


# -- scoring -----------------------------------------------------------------------------------


def _metrics() -> dict:
    from sacrebleu.metrics import BLEU, CHRF, TER

    return {"BLEU": BLEU(), "chrF2": CHRF(), "TER": TER()}


def score(
    hypotheses: list[str],
    references: list[str],
    hyp_path: Path | str = "hypotheses",
    ref_path: Path | str = "references",
) -> dict:
    """BLEU, chrF2 and TER of ``hypotheses`` with sacrebleu's defaults, with signatures.

    sacrebleu silently scores the shorter of the two lists: unequal lengths are an error here.
    """
    check_same_length(hypotheses, hyp_path, references, ref_path, "hypotheses and references")
    scores = {}
    for name, metric in _metrics().items():
        result = metric.corpus_score(hypotheses, [references])
        signature = str(metric.get_signature())
        scores[name] = {
            "score": _number(result.score),
            "signature": signature,
            "formatted": result.format(signature=signature),
        }
    return scores


@contextlib.contextmanager
def _sacrebleu_seed(seed: int) -> Iterator[None]:
    # sacrebleu's paired tests read their seed from the environment only.
    old = os.environ.get("SACREBLEU_SEED")
    os.environ["SACREBLEU_SEED"] = str(seed)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SACREBLEU_SEED", None)
        else:
            os.environ["SACREBLEU_SEED"] = old


def paired_bootstrap(
    baseline: list[str], system: list[str], references: list[str], resamples: int, seed: int
) -> dict:
    """sacrebleu's paired bootstrap resampling of ``system`` against ``baseline``.

    Per metric: both scores, the bootstrap mean and 95% confidence half-width of each, and the
    p-value of the difference (Koehn 2004, as sacrebleu's ``--paired-bs``). One exception: where
    the two scores are equal, sacrebleu counts no resample "more extreme" than a zero difference
    and returns the smallest p-value it can, 1 / (resamples + 1), which would call two identical
    systems significantly different; a zero observed difference gets p = 1 instead.
    """
    from sacrebleu.significance import PairedTest

    if resamples < 1:
        raise MoeMtError(f"eval.bootstrap_resamples must be at least 1, not {resamples}")
    if seed <= 0:
        # sacrebleu treats a seed of 0 as "no seed": the resamples would not be reproducible.
        raise MoeMtError(f"eval.seed must be a positive integer for the bootstrap, not {seed}")
    with _sacrebleu_seed(seed):
        test = PairedTest(
            [("baseline", baseline), ("system", system)],
            _metrics(),
            references=[references],
            test_type="bs",
            n_samples=resamples,
        )
        signatures, results = test()
    metrics = {}
    for name in METRICS:
        base, sys_ = results[name]
        metrics[name] = {
            "baseline": _number(base.score),
            "baseline_mean": _number(base.mean),
            "baseline_ci95": _number(base.ci),
            "system": _number(sys_.score),
            "system_mean": _number(sys_.mean),
            "system_ci95": _number(sys_.ci),
            "p_value": 1.0 if sys_.score == base.score else _number(sys_.p_value),
            "signature": str(signatures[name]),
        }
    return {"resamples": resamples, "seed": seed, "metrics": metrics}


def _number(value) -> float | None:
    """A JSON-ready float (sacrebleu hands back numpy scalars)."""
    return None if value is None else float(value)


def _baseline(cfg: DictConfig, files: EvalFiles, reference_sha256: str) -> dict | None:
    """The baseline run's hypotheses and report for the same test set, checked."""
    if cfg.eval.bootstrap_baseline is None:
        return None
    out = RunDir(cfg.eval.bootstrap_baseline).eval / files.name
    hyp_path, report_path = out / HYPOTHESES, out / REPORT
    for path in (hyp_path, report_path):
        if not path.is_file():
            raise MoeMtError(
                f"{path}: missing (eval.bootstrap_baseline); run `moemt eval` on the baseline "
                f"run for the same test set first"
            )
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
        their_sha = report["files"]["reference"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise MoeMtError(f"{report_path}: not a moemt eval report") from None
    if their_sha != reference_sha256:
        raise MoeMtError(
            f"{report_path}: the baseline was scored against other references (sha256 "
            f"{their_sha[:12]}..., here {reference_sha256[:12]}...); the paired test needs the same"
        )
    return {
        "run_dir": str(Path(cfg.eval.bootstrap_baseline)),
        "hypotheses": hyp_path,
        "report": str(report_path),
        "checkpoint": report.get("checkpoint"),
    }


# -- the workflow ------------------------------------------------------------------------------


def evaluate(cfg: DictConfig, console: Console | None = None) -> EvalResult:
    """Translate and score the test set of ``cfg.eval`` in ``cfg.run_dir``; write the report."""
    console = console or Console(stderr=True)
    run_dir = RunDir(cfg.run_dir)
    options = DecodeOptions.from_config(cfg.eval)
    if cfg.eval.name is not None:  # single-pair and multilingual runs alike
        _checked_name(cfg.eval.name)
    with run_dir.locked():
        manifest = _read_manifest(run_dir)
        if manifest.get("multilingual"):  # per-direction scores and their average
            from moe_mt.workflows.evaluate.directions import evaluate_directions

            return evaluate_directions(cfg, run_dir, manifest, options, console)
        if cfg.eval.directions:
            raise MoeMtError(
                f"eval.directions={list(cfg.eval.directions)}: only for multilingual runs "
                "(data.pairs); this run translates one direction"
            )
        files = eval_files(cfg, run_dir, manifest)
        if cfg.eval.name is not None:
            # e.g. an earlier checkpoint's scores beside the final ones (eval/test@u1000)
            files = dataclasses.replace(files, name=cfg.eval.name)
        sources, references = read_lines(files.source), read_lines(files.reference)
        check_same_length(
            sources, files.source, references, files.reference, "source and reference"
        )
        reference_sha256 = file_sha256(files.reference)
        baseline = _baseline(cfg, files, reference_sha256)

        chosen = choose_checkpoint(run_dir.checkpoints, cfg.eval.checkpoint, cfg.eval.average_last)
        started = time.perf_counter()
        translator = Translator.load(run_dir.root, chosen.path, options, model_overrides(cfg.eval))
        load_seconds = time.perf_counter() - started
        console.print(
            f"eval {files.name}: {len(sources):,} lines, checkpoint {chosen.path.name} "
            f"({chosen.num_updates:,} updates), beam {options.beam}",
            highlight=False,
        )
        with progress_bar(console) as progress, track_expert_usage(translator.models[0]) as usage:
            task = progress.add_task(f"translate {files.name}", total=len(sources))
            translations = translator.translate(
                sources, on_batch=lambda n: progress.advance(task, n)
            )
        hypotheses = translations.hypotheses
        out_dir = run_dir.eval / files.name
        out_dir.mkdir(parents=True, exist_ok=True)
        # Tokens per expert per MoE layer on this split, and its heat map (none for dense models).
        expert_usage = write_expert_usage(usage, out_dir / EXPERT_USAGE_PNG)
        if expert_usage["plot"] is None:
            expert_usage = None
        scores = score(hypotheses, references, out_dir / HYPOTHESES, files.reference)
        legacy = _legacy_bleu(cfg, manifest, hypotheses, references)
        thor = eval_thor_consistency(cfg.eval, translator, sources, references, hypotheses, console)

        bootstrap = None
        if baseline is not None:
            baseline_hyps = read_lines(baseline["hypotheses"])
            check_same_length(
                baseline_hyps,
                baseline["hypotheses"],
                references,
                files.reference,
                "baseline hypotheses and references",
            )
            bootstrap = paired_bootstrap(
                baseline_hyps,
                hypotheses,
                references,
                cfg.eval.bootstrap_resamples,
                cfg.eval.seed,
            )
            bootstrap["baseline"] = {**baseline, "hypotheses": str(baseline["hypotheses"])}

        report = {
            "format": REPORT_FORMAT,
            "run_dir": str(run_dir.root),
            "name": files.name,
            "split": files.split,
            "lines": len(sources),
            "files": {
                "source": {"path": str(files.source), "sha256": file_sha256(files.source)},
                "reference": {"path": str(files.reference), "sha256": reference_sha256},
                "hypotheses": str(out_dir / HYPOTHESES),
            },
            "checkpoint": chosen.as_dict(),
            "decoding": options.as_dict(),
            "scores": scores,
            "legacy_bleu": legacy,  # tokenised BLEU, beside sacreBLEU, if eval.legacy_bleu
            "bootstrap": bootstrap,
            "timing": {
                "load_seconds": round(load_seconds, 3),
                "translate_seconds": round(translations.seconds, 3),
                "sentences_per_second": round(translations.sentences_per_second, 2),
                "tokens_per_second": round(translations.tokens_per_second, 1),
                "source_tokens": translations.source_tokens,
                "generated_tokens": translations.generated_tokens,
                "threads": _threads(),
            },
            "parameters": translator.num_parameters,
            "truncated_sources": translations.truncated,
            "expert_usage": expert_usage,
            "thor": thor,
            "model": {"arch": translator.arch},
            "eval_config": OmegaConf.to_container(cfg.eval),
            **provenance(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_text(out_dir / HYPOTHESES, "".join(h + "\n" for h in hypotheses))
        # Written last: a report means the hypotheses beside it are complete.
        atomic_write_json(out_dir / REPORT, report)
        return EvalResult(run_dir.root, out_dir, report)


def _legacy_bleu(cfg, manifest: dict, hypotheses, references) -> dict | None:
    """Tokenised, compound-split BLEU (:mod:`.legacy_bleu`) when asked for."""
    if not cfg.eval.legacy_bleu:
        return None
    lang = manifest.get("languages", {}).get("tgt") or cfg.data.tgt
    return legacy_bleu(hypotheses, references, lang, cfg.eval.legacy_bleu_compound_split)


def _threads() -> int:
    import torch

    return torch.get_num_threads()
