"""``moemt eval``: translate the test set of every direction with a chosen checkpoint, and score it.

One workflow for one direction or many: a single-pair run is the one-direction case. What is
translated: the prepared split ``eval.split`` of each direction (``data/text/<corpus>/<split>.s``,
scored against the untouched ``<split>.t`` of the same corpus: a de-en hypothesis against the
English reference), or any line-aligned file pair (``eval.source`` + ``eval.reference``, for one
direction). Which directions: ``eval.directions``, else every trained direction and every
zero-shot one (``data.zero_shot``: prepared for testing, never trained) with that split. Which
model: ``eval.checkpoint`` (last | best | average of the last ``eval.average_last`` | a path, see
:mod:`moe_mt.checkpoints`). Which decoder: ``eval.engine`` (fairseq, or CTranslate2 on the run's
export with ``eval.quantization``, :mod:`moe_mt.workflows.export.engine`; its report goes to
``eval/<split>-ct2-<quantization>/`` unless ``eval.name`` says otherwise).

Per direction: BLEU, chrF2 and TER with sacreBLEU's defaults and signatures
(:mod:`.scoring`); tokenised BLEU with ``eval.legacy_bleu`` (:mod:`.legacy_bleu`, the target
language's Moses rules), and with ``eval.tokenized_bleu`` the BLEU4 of fairseq's generate on
the tokens of BPE-prepared data (``data.subword`` bpe or none, whose segmented references lose
their ``@@`` marks before any scoring); a paired bootstrap against another run's hypotheses
for the same references with ``eval.bootstrap_baseline``; tokens per expert per MoE layer
(:mod:`.expert_usage`); the consistency across random expert draws of a model that draws
them (:mod:`.draw_consistency`). Then the macro average over the trained directions, and apart from
it over the zero-shot ones (a zero-shot mean is a different quantity, never part of the
supervised one).

Output in ``RUN_DIR/eval/<name>/`` (``<name>``: ``eval.name``, else the split, or the source
file's folder and name: ``iwslt17_test.en``), schema in :mod:`.report`; a report made from other
source files is replaced only when ``eval.name`` names it. The run directory is locked for the
whole command (not only while writing), so that a busy run directory is refused before any
decoding is spent; the report is written last, so a report means the hypotheses beside it are
complete.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from moe_mt.checkpoints import choose_checkpoint
from moe_mt.data_prep.download import file_sha256
from moe_mt.data_prep.segmentation import text_segmenter
from moe_mt.errors import MoeMtError
from moe_mt.provenance import provenance
from moe_mt.workflows.common.differences import differences
from moe_mt.workflows.common.manifest import (
    Direction,
    has_split,
    parse_direction,
    prepared_data_config,
    read_manifest,
    recorded_data_config,
    text_files,
)
from moe_mt.workflows.common.progress import progress_bar
from moe_mt.workflows.common.rundir import RunDir, atomic_write_json, atomic_write_text
from moe_mt.workflows.common.text import check_same_length, read_lines
from moe_mt.workflows.evaluate.draw_consistency import consistency_entries
from moe_mt.workflows.evaluate.expert_usage import track_expert_usage, write_expert_usage
from moe_mt.workflows.evaluate.legacy_bleu import legacy_bleu, tokenized_bleu
from moe_mt.workflows.evaluate.report import (
    EXPERT_USAGE_PNG,
    HYPOTHESES,
    OUTPUT_DECODING,
    REPORT,
    REPORT_FORMAT,
    hypotheses_file,
    read_report,
)
from moe_mt.workflows.evaluate.scoring import macro_average, paired_bootstrap, score
from moe_mt.workflows.export.engine import check_engine, open_translator
from moe_mt.workflows.export.exporter import check_quantization
from moe_mt.workflows.translate.translator import DecodeOptions


@dataclass
class EvalResult:
    run_dir: Path
    out_dir: Path  # RUN_DIR/eval/<name>
    report: dict


@dataclass(frozen=True)
class TestSet:
    """One direction's source and reference files."""

    direction: Direction
    source: Path
    reference: Path
    zero_shot: bool


# -- inputs ------------------------------------------------------------------------------------


def eval_directions(cfg: DictConfig, manifest: dict) -> list[Direction]:
    """``eval.directions`` (each once), or every trained one and every zero-shot one prepared
    for ``eval.split``."""
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
    trained = manifest["languages"]["directions"]
    if not manifest.get("multilingual"):  # no language tokens: the trained direction only
        for d in chosen:
            if d.name not in trained:
                raise MoeMtError(
                    f"eval.directions={names}: this run translates {trained[0]} only "
                    "(several directions need a multilingual run, data.pairs)"
                )
    return chosen


#: ``data.*`` keys that say which text the prepared splits hold: eval scores what prep made of
#: them, so a value other than the prepared one is refused (it would be neither used nor said).
TEXT_DATA_KEYS = ("train", "valid", "test", "source", "sources", "zero_shot")


def check_prepared_text(cfg: DictConfig, run_dir: RunDir, manifest: dict) -> None:
    """Refuse ``data.test=...`` (or another key of :data:`TEXT_DATA_KEYS`) that differs from the
    prepared data's: eval scores the prepared test sets; other files are eval.source's."""
    recorded = recorded_data_config(manifest)
    if recorded is None:
        return
    given = prepared_data_config(cfg.data)
    changed = differences(
        {k: recorded.get(k) for k in TEXT_DATA_KEYS},
        {k: given.get(k) for k in TEXT_DATA_KEYS},
        "data.",
    )
    if changed:
        raise MoeMtError(
            f"{changed[0]}: eval scores the test sets prepared in {run_dir.data}, not data.*; "
            "to score other files give eval.source=FILE eval.reference=FILE (or translate them "
            "with `moemt translate`), to prepare others run `moemt prep`"
        )


def test_sets(cfg: DictConfig, run_dir: RunDir, manifest: dict) -> tuple[str, list[TestSet]]:
    """The report's name and the test set of every direction ``cfg.eval`` asks for."""
    ev = cfg.eval
    if (ev.source is None) != (ev.reference is None):
        raise MoeMtError("eval.source and eval.reference go together: give both or neither")
    directions = eval_directions(cfg, manifest)
    trained = set(manifest["languages"]["directions"])
    if ev.source is None:
        found = [
            TestSet(d, *text_files(manifest, run_dir.data, d, ev.split), d.name not in trained)
            for d in directions
        ]
        return _checked_name(ev.name or ev.split), found
    if len(directions) != 1:
        raise MoeMtError(
            "eval.source/eval.reference translate one direction: give eval.directions=[src-tgt] "
            f"(this run: {', '.join(d.name for d in directions)})"
        )
    source, reference = Path(ev.source), Path(ev.reference)
    for key, path in (("eval.source", source), ("eval.reference", reference)):
        if not path.is_file():
            raise MoeMtError(f"{path}: no such file ({key})")
    name = _checked_name(ev.name) if ev.name else _name_for(source)
    return name, [TestSet(directions[0], source, reference, directions[0].name not in trained)]


def _checked_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._@+-]*", name):
        raise MoeMtError(
            f"eval.name={name!r}: use letters, digits and . _ @ + - (a directory under eval/)"
        )
    return name


def _name_for(source: Path) -> str:
    """The default name of a file pair's eval: the source's folder and file name
    (``iwslt17/test.en`` -> ``iwslt17_test.en``), so that two test sets whose files share a name
    (``test.en``) do not land in one ``eval/`` directory; :func:`_check_same_source` refuses
    what still collides."""
    parts = [source.parent.name, source.name] if source.parent.name else [source.name]
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", "_".join(parts)).lstrip("._")
    return name or "source"


#: The eval keys that make a report another evaluation of the same model (the checkpoint choice
#: and the decoding options that change the hypotheses), compared before a report is replaced.
EVALUATION_KEYS = ("checkpoint", "average_last", "average_over", *OUTPUT_DECODING)


def _check_same_source(
    report_path: Path, tests: list[TestSet], name_given: bool, ev: DictConfig | None = None
) -> None:
    """Refuse to replace a report made from other source files (sha256 in the report), or with
    another checkpoint choice or decoding (:data:`EVALUATION_KEYS`), unless ``eval.name`` names
    it: the earlier scores would be lost without a word."""
    if name_given or not report_path.is_file():
        return
    try:
        report = read_report(report_path)
        directions = report["directions"]
    except (MoeMtError, KeyError, TypeError):
        return  # not a report this can read: nothing of value to protect
    before = report.get("eval_config") or {}  # reports before it: nothing to compare
    if ev is not None and before:
        keys = [k for k in EVALUATION_KEYS if k in before]
        if before.get("checkpoint") != "average" and ev.checkpoint != "average":
            keys = [k for k in keys if k not in ("average_last", "average_over")]
        changed = [f"{k}: {before[k]} -> {ev[k]}" for k in keys if before[k] != ev[k]]
        if changed:
            raise MoeMtError(
                f"{report_path}: made with other eval settings ({'; '.join(changed)}); give "
                f"eval.name=NAME to keep both, or eval.name={report_path.parent.name} to "
                "replace it"
            )
    for test in tests:
        before = (directions.get(test.direction.name) or {}).get("files", {}).get("source", {})
        if before.get("sha256") not in (None, file_sha256(test.source)):
            raise MoeMtError(
                f"{report_path}: made from another source ({before.get('path')}, sha256 "
                f"{before['sha256'][:12]}...), not {test.source}; give eval.name=NAME to keep "
                f"both, or eval.name={report_path.parent.name} to replace it"
            )


def _baseline(cfg: DictConfig, name: str, test: TestSet, reference_sha256: str) -> dict | None:
    """The baseline run's hypotheses of ``test``'s direction for the same references, checked."""
    if cfg.eval.bootstrap_baseline is None:
        return None
    report_path = RunDir(cfg.eval.bootstrap_baseline).eval / name / REPORT
    if not report_path.is_file():
        raise MoeMtError(
            f"{report_path}: missing (eval.bootstrap_baseline); run `moemt eval` on the baseline "
            f"run for the same test set first"
        )
    report = read_report(report_path)
    direction = test.direction.name
    try:
        their_sha = report["directions"][direction]["files"]["reference"]["sha256"]
    except (KeyError, TypeError):
        raise MoeMtError(f"{report_path}: no {direction} in this eval report") from None
    if their_sha != reference_sha256:
        raise MoeMtError(
            f"{report_path}: the baseline was scored against other references (sha256 "
            f"{their_sha[:12]}..., here {reference_sha256[:12]}...); the paired test needs the same"
        )
    hypotheses = hypotheses_file(report_path, report, direction)
    if not hypotheses.is_file():
        raise MoeMtError(f"{hypotheses}: missing (eval.bootstrap_baseline)")
    return {
        "run_dir": str(Path(cfg.eval.bootstrap_baseline)),
        "hypotheses": str(hypotheses),
        "report": str(report_path),
        "checkpoint": report.get("checkpoint"),
    }


# -- the workflow ------------------------------------------------------------------------------


def evaluate(cfg: DictConfig, console: Console | None = None) -> EvalResult:
    """Translate and score every test set of ``cfg.eval`` in ``cfg.run_dir``; write the report."""
    console = console or Console(stderr=True)
    run_dir = RunDir(cfg.run_dir)
    options = DecodeOptions.from_config(cfg.eval)
    if cfg.eval.name is not None:
        _checked_name(cfg.eval.name)
    if check_engine(cfg.eval.engine) != "fairseq":
        check_quantization(cfg.eval.quantization)
    with run_dir.locked():
        manifest = read_manifest(run_dir.manifest)
        check_prepared_text(cfg, run_dir, manifest)
        name, tests = test_sets(cfg, run_dir, manifest)
        if cfg.eval.engine != "fairseq" and cfg.eval.name is None:
            # Beside the fairseq report of the same split, not over it.
            name = f"{name}-ct2-{cfg.eval.quantization}"
        texts, baselines = {}, {}
        for test in tests:
            sources, references = read_lines(test.source), read_lines(test.reference)
            check_same_length(
                sources, test.source, references, test.reference, "source and reference"
            )
            segmenter = text_segmenter(run_dir.data, manifest["files"], test.direction.tgt)
            if segmenter is not None:  # segmented references (data.subword=none) lose '@@ '
                references = [segmenter.reference(line) for line in references]
            texts[test] = sources, references, file_sha256(test.reference), segmenter
            baselines[test] = _baseline(cfg, name, test, texts[test][2])

        ev = cfg.eval
        if ev.tokenized_bleu and any(t[3] is None for t in texts.values()):
            raise MoeMtError(
                "eval.tokenized_bleu=true needs data prepared with data.subword=bpe or none "
                "(sentencepiece text has no tokenised form; eval.legacy_bleu tokenises it)"
            )
        _check_same_source(
            run_dir.eval / name / REPORT, tests, name_given=ev.name is not None, ev=ev
        )
        chosen = choose_checkpoint(
            run_dir.checkpoints, ev.checkpoint, ev.average_last, ev.average_over
        )
        started = time.perf_counter()
        first = tests[0].direction
        loaded, engine = open_translator(cfg, chosen, options, (first.src, first.tgt))
        load_seconds = time.perf_counter() - started
        out_dir = run_dir.eval / name
        what = (
            f"{len(tests)} directions" if len(tests) > 1 else f"{len(texts[tests[0]][0]):,} lines"
        )
        console.print(
            f"eval {name}: {what}, checkpoint {chosen.path.name} "
            f"({chosen.num_updates:,} updates), beam {options.beam}, {engine['name']}"
            + (f" {engine['quantization']}" if engine["name"] != "fairseq" else ""),
            highlight=False,
        )
        results, hypotheses = {}, {}
        for test in tests:
            translator = loaded.for_direction(test.direction.src, test.direction.tgt)
            results[test.direction.name], hypotheses[test] = _evaluate_direction(
                cfg, translator, test, texts[test], baselines[test], out_dir / test.direction.name,
                f"{test.direction} {name}" if len(tests) > 1 else None, console,
            )  # fmt: skip

        report = {
            "format": REPORT_FORMAT,
            "run_dir": str(run_dir.root),
            "name": name,
            "split": None if ev.source is not None else ev.split,
            "lines": sum(r["lines"] for r in results.values()),
            "directions": results,
            "average": _average(results, zero_shot=False),
            "zero_shot_average": _average(results, zero_shot=True),
            "checkpoint": chosen.as_dict(),
            "decoding": options.as_dict(),
            "engine": engine,
            "timing": {"load_seconds": round(load_seconds, 3), "threads": engine["threads"]},
            "parameters": loaded.num_parameters,
            "model": {"arch": loaded.arch},
            "eval_config": OmegaConf.to_container(ev),
            **provenance(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        for test in tests:
            hyp_path = out_dir / test.direction.name / HYPOTHESES
            atomic_write_text(hyp_path, "".join(h + "\n" for h in hypotheses[test]))
        # Written last: a report means the hypotheses beside it are complete.
        atomic_write_json(out_dir / REPORT, report)
        return EvalResult(run_dir.root, out_dir, report)


def _evaluate_direction(
    cfg, translator, test: TestSet, text, baseline, out_dir: Path, title, console
) -> tuple[dict, list[str]]:
    """Translate and score one test set: its report entry and its hypotheses."""
    sources, references, reference_sha256, segmenter = text
    model = next(iter(translator.models), None)  # None: CTranslate2 (no torch module)
    with progress_bar(console) as progress, track_expert_usage(model) as usage:
        task = progress.add_task(f"translate {test.direction}", total=len(sources))
        translations = translator.translate(sources, on_batch=lambda n: progress.advance(task, n))
    hypotheses = translations.hypotheses
    out_dir.mkdir(parents=True, exist_ok=True)
    # Tokens per expert per MoE layer on this test set, and its heat map (none for dense models).
    expert_usage = write_expert_usage(usage, out_dir / EXPERT_USAGE_PNG, title=title)
    ev = cfg.eval
    bootstrap = None
    if baseline is not None:
        baseline_hyps = read_lines(Path(baseline["hypotheses"]))
        check_same_length(
            baseline_hyps, baseline["hypotheses"], references, test.reference,
            "baseline hypotheses and references",
        )  # fmt: skip
        bootstrap = paired_bootstrap(
            baseline_hyps, hypotheses, references, ev.bootstrap_resamples, ev.seed
        )
        bootstrap["baseline"] = baseline
    entry = {
        "lines": len(sources),
        "zero_shot": test.zero_shot,
        "files": {
            "source": {"path": str(test.source), "sha256": file_sha256(test.source)},
            "reference": {"path": str(test.reference), "sha256": reference_sha256},
            "hypotheses": f"{out_dir.name}/{HYPOTHESES}",  # relative to the report
        },
        "scores": score(hypotheses, references, out_dir / HYPOTHESES, test.reference),
        # tokenised BLEU, beside sacreBLEU, if eval.legacy_bleu
        "legacy_bleu": (
            legacy_bleu(hypotheses, references, test.direction.tgt, ev.legacy_bleu_compound_split)
            if ev.legacy_bleu
            else None
        ),
        # BLEU4 on the tokenised text, as fairseq-era papers report it, if eval.tokenized_bleu
        "tokenized_bleu": (
            tokenized_bleu(
                [segmenter.tokenized(h) for h in hypotheses],
                [segmenter.tokenized(r) for r in references],
                segmenter.convention,
            )
            if ev.tokenized_bleu
            else None
        ),
        "bootstrap": bootstrap,
        "timing": {
            "translate_seconds": round(translations.seconds, 3),
            "sentences_per_second": round(translations.sentences_per_second, 2),
            "tokens_per_second": round(translations.tokens_per_second, 1),
            "source_tokens": translations.source_tokens,
            "generated_tokens": translations.generated_tokens,
        },
        "truncated_sources": translations.truncated,
        "expert_usage": expert_usage if expert_usage["plot"] is not None else None,
        **consistency_entries(
            ev, cfg.model.arch, translator, sources, references, hypotheses, console
        ),
    }
    return entry, hypotheses


def _average(results: dict[str, dict], zero_shot: bool) -> dict | None:
    """The macro average over the trained (or the zero-shot) directions; None if none."""
    chosen = {k: r["scores"] for k, r in results.items() if r["zero_shot"] is zero_shot}
    return macro_average(chosen) if chosen else None
