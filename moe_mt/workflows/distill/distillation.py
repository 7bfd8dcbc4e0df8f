"""``moemt distill``: a (dense) student learns from a trained teacher run, in its own run dir.

The recipe's ``model`` and ``train`` describe the student, ``distill.teacher`` names the
teacher's run directory; the student is trained on the teacher's data (its ``data`` section is
replaced by the teacher's, and ``data/`` is a copy of the teacher's: the same sentencepiece
model(s) and dictionaries). Steps, each resumable:

1. **data**: ``STUDENT/data`` = the teacher's ``data/``; for sequence-level KD (Kim & Rush 2016,
   ``distill.mode=sequence``) the teacher translates the cleaned training source with beam
   ``distill.beam``, in chunks of ``distill.chunk_lines`` sentences, each written atomically to
   ``STUDENT/distill/teacher_outputs/chunk_<n>.txt`` (a rerun skips the chunks done; a change of
   teacher checkpoint, decoding options or source starts over). The outputs are encoded with the
   teacher's sentencepiece model and binarised with its dictionary as the training targets
   (``train``), or beside the original targets (``train1``: fairseq concatenates the two) with
   ``distill.mix_original``.
2. **initialisation** (``distill.init_from_teacher``): the student starts from the teacher's
   non-expert weights where names and shapes agree, its FFNs from the teacher's experts
   (``distill.init``: mean | expert | none; :mod:`moe_mt.workflows.common.student_init`); each
   tensor copied is listed in ``logs/distill.log`` and ``distill/init.json``. Only before the
   first update.
3. **training** (:func:`moe_mt.workflows.train.train`): word-level KD (``distill.mode=word``)
   uses the criterion ``distill_label_smoothed_cross_entropy`` with the teacher's checkpoint and
   ``distill.teacher_weight``; sequence-level KD the recipe's own criterion. Rerunning resumes.
4. **report**: teacher, student and (``distill.baseline``) baseline evaluated with the recipe's
   ``eval`` section on the same split (an existing eval report of the same checkpoint and
   decoding options is reused), ``STUDENT/distill/report.json``.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from moe_mt.checkpoints import LAST, choose_checkpoint, load_state
from moe_mt.config import load_config
from moe_mt.data_prep import binarize, spm
from moe_mt.data_prep.download import file_sha256
from moe_mt.errors import MoeMtError
from moe_mt.models import families
from moe_mt.provenance import provenance
from moe_mt.workflows.common.manifest import (
    Direction,
    corpus_of,
    read_manifest,
    train_text,
    trained_directions,
)
from moe_mt.workflows.common.model_init import build_model_state, save_init_checkpoint
from moe_mt.workflows.common.progress import progress_bar
from moe_mt.workflows.common.rundir import (
    RunDir,
    atomic_write_json,
    atomic_write_text,
    building_dir,
)
from moe_mt.workflows.common.student_init import student_state_from_teacher
from moe_mt.workflows.common.text import read_lines
from moe_mt.workflows.common.vocabulary import check_fits_data
from moe_mt.workflows.evaluate.evaluation import evaluate
from moe_mt.workflows.evaluate.report import REPORT, decoding_speed, read_report
from moe_mt.workflows.train.fairseq_args import train_args
from moe_mt.workflows.train.trainer import check_model, parse_fairseq_args, train
from moe_mt.workflows.translate.translator import DecodeOptions, Translator

MODES = ("word", "sequence")
REPORT_FORMAT = 1
CRITERION = "distill_label_smoothed_cross_entropy"
OUTPUTS_DIR = "teacher_outputs"
#: fairseq options that distill adds to the student's ``train.fairseq_args`` (and replaces).
ADDED_ARGS = ("--distill-", "--upsample-primary")
INIT_CHECKPOINT = "init.pt"


@dataclass
class DistillResult:
    run_dir: Path
    report: dict


def _log(run_dir: RunDir, console: Console, message: str, quiet: bool = False) -> None:
    run_dir.logs.mkdir(parents=True, exist_ok=True)
    with open(run_dir.logs / "distill.log", "a", encoding="utf-8") as out:
        out.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}\n")
    if not quiet:
        console.print(message, highlight=False, markup=False)


# -- configuration -----------------------------------------------------------------------------


def check_distill_config(cfg: DictConfig) -> None:
    d = cfg.distill
    if d.teacher is None:
        raise MoeMtError("distill.teacher: the teacher's run directory is required")
    if d.mode not in MODES:
        raise MoeMtError(f"distill.mode={d.mode}: expected one of {MODES}")
    if not 0.0 <= d.teacher_weight <= 1.0:
        raise MoeMtError(f"distill.teacher_weight={d.teacher_weight}: expected a value in [0, 1]")
    if d.chunk_lines < 1 or d.beam < 1:
        raise MoeMtError("distill.chunk_lines and distill.beam must be at least 1")
    if Path(cfg.run_dir).resolve() == Path(d.teacher).resolve():
        raise MoeMtError(f"{cfg.run_dir}: the student's run_dir is the teacher's; name another")


def teacher_config(cfg: DictConfig) -> DictConfig:
    teacher = RunDir(cfg.distill.teacher)
    if not (teacher.checkpoints / LAST).is_file() and cfg.distill.teacher_checkpoint == "last":
        raise MoeMtError(f"{teacher.root}: no {LAST}; train the teacher first")
    return load_config(teacher.root)


def _sequence_direction(manifest: dict) -> Direction:
    """The one direction whose training targets sequence-level KD replaces."""
    directions = trained_directions(manifest)
    if manifest.get("multilingual") or len(directions) != 1:
        # A corpus serves both directions of its language pair: its targets cannot be swapped
        # for one direction's teacher outputs.
        raise MoeMtError(
            "distill.mode=sequence: not for multilingual teachers (each corpus serves two "
            "directions); use distill.mode=word"
        )
    return directions[0]


def teacher_eval_config(cfg: DictConfig, teacher_cfg: DictConfig) -> DictConfig:
    """The eval config the teacher translates and is scored with: the recipe's, with
    ``distill.teacher_inference`` as the inference mode of the teacher's family
    (:attr:`~moe_mt.models.families.Family.inference_key`; THOR's ``eval.thor_inference``)."""
    ev = OmegaConf.merge(cfg.eval, {})
    family = families.family_of_arch(teacher_cfg.model.arch)
    if family is not None and family.inference_key and cfg.distill.teacher_inference:
        ev[family.inference_key] = cfg.distill.teacher_inference
    return ev


def _same_model_arguments(report: dict, run_cfg: DictConfig) -> bool:
    """Whether ``report`` was made with the eval's model arguments of ``run_cfg``'s family."""
    family = families.family_of_arch(run_cfg.model.arch)
    keys = [key for key, _ in family.eval_arguments] if family is not None else []
    return all(report["eval_config"].get(key) == run_cfg.eval[key] for key in keys)


def _strip_distill_args(args: Sequence[str]) -> list[str]:
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg.startswith(ADDED_ARGS):
            skip = "=" not in arg
        else:
            out.append(arg)
    return out


def student_config(cfg: DictConfig, teacher_cfg: DictConfig, teacher_checkpoint: Path):
    """The student's training config: the recipe with the teacher's data, and for word-level KD
    the distillation criterion with the teacher's checkpoint."""
    student = OmegaConf.merge(cfg, {})
    student.data = teacher_cfg.data
    student.train.fairseq_args = _strip_distill_args(student.train.fairseq_args)
    if cfg.distill.mode == "word":
        student.train.criterion = CRITERION
        args = ["--distill-teacher", str(teacher_checkpoint)]
        args += ["--distill-teacher-weight", str(cfg.distill.teacher_weight)]
        overrides = families.eval_overrides(
            teacher_eval_config(cfg, teacher_cfg), teacher_cfg.model.arch
        )
        if overrides:  # the teacher's inference as its family's eval sets it (THOR's mode)
            args += ["--distill-teacher-overrides", json.dumps(overrides, sort_keys=True)]
        student.train.fairseq_args = [*student.train.fairseq_args, *args]
    elif cfg.distill.mix_original:
        # fairseq 0.12.2's translation task defaults to -1, which its concatenation rejects.
        student.train.fairseq_args = [*student.train.fairseq_args, "--upsample-primary", "1"]
    return student


def _choose_teacher_checkpoint(cfg: DictConfig):
    teacher = RunDir(cfg.distill.teacher)
    choose = lambda: choose_checkpoint(  # noqa: E731
        teacher.checkpoints,
        cfg.distill.teacher_checkpoint,
        cfg.eval.average_last,
        cfg.eval.average_over,
    )
    if cfg.distill.teacher_checkpoint == "average":
        with teacher.locked():
            return choose()
    return choose()


# -- sequence-level KD: resumable teacher translation ------------------------------------------


def translate_resumable(
    translate: Callable[[list[str]], list[str]],
    lines: Sequence[str],
    out_dir: Path,
    fingerprint: dict,
    chunk_lines: int,
    on_chunk: Callable[[int, int, bool], None] | None = None,
) -> list[str]:
    """Translations of ``lines``, chunk by chunk, each chunk kept in ``out_dir`` once done.

    ``out_dir/state.json`` holds ``fingerprint`` (what the chunks were made with); another
    fingerprint discards the chunks. ``on_chunk(index, lines, reused)`` after each chunk.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / "state.json"
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        state = None
    if state != {**fingerprint, "chunk_lines": chunk_lines}:
        for old in out_dir.glob("chunk_*.txt"):
            old.unlink()
        atomic_write_json(state_path, {**fingerprint, "chunk_lines": chunk_lines})
    hypotheses: list[str] = []
    for index in range(math.ceil(len(lines) / chunk_lines)):
        chunk = list(lines[index * chunk_lines : (index + 1) * chunk_lines])
        path = out_dir / f"chunk_{index:06d}.txt"
        done = _read_chunk(path, len(chunk))
        if done is None:
            done = translate(chunk)
            if len(done) != len(chunk) or any("\n" in h for h in done):
                raise MoeMtError(f"{path}: the teacher returned {len(done)} lines for {len(chunk)}")
            atomic_write_text(path, "".join(h + "\n" for h in done))
            reused = False
        else:
            reused = True
        hypotheses += done
        if on_chunk is not None:
            on_chunk(index, len(chunk), reused)
    return hypotheses


def _read_chunk(path: Path, expected: int) -> list[str] | None:
    if not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines[-1] == "":
        lines.pop()
    return lines if len(lines) == expected else None


def teacher_outputs(cfg, teacher_cfg, chosen, student_dir: RunDir, console) -> tuple[Path, dict]:
    """Translate the teacher's cleaned training source with the teacher (resumably); return the
    file of translations and what made it."""

    teacher_dir = RunDir(teacher_cfg.run_dir)
    manifest = read_manifest(teacher_dir.manifest)
    direction = _sequence_direction(manifest)
    source, _ = train_text(manifest, teacher_dir.data, direction)
    tgt = direction.tgt
    lines = read_lines(source)
    if cfg.distill.max_sentences > 0:
        lines = lines[: cfg.distill.max_sentences]
    eval_cfg = OmegaConf.merge(teacher_eval_config(cfg, teacher_cfg), {"beam": cfg.distill.beam})
    options = DecodeOptions.from_config(eval_cfg)
    overrides = families.eval_overrides(eval_cfg, teacher_cfg.model.arch)
    fingerprint = {
        "teacher_checkpoint": str(chosen.path),
        "teacher_updates": chosen.num_updates,
        "source_sha256": file_sha256(source),
        "decoding": options.as_dict(),
        "model_overrides": overrides,
    }
    translator = []

    def translate(chunk: list[str]) -> list[str]:
        if not translator:
            translator.append(Translator.load(teacher_dir.root, chosen.path, options, overrides))
        return translator[0].translate(chunk).hypotheses

    out_dir = student_dir.root / "distill" / OUTPUTS_DIR
    chunks = math.ceil(len(lines) / cfg.distill.chunk_lines)
    _log(student_dir, console, f"teacher translates {len(lines):,} training sentences "
         f"({chunks} chunks of {cfg.distill.chunk_lines}) with beam {options.beam}")  # fmt: skip
    started = time.perf_counter()
    with progress_bar(console) as progress:
        task = progress.add_task("teacher translation", total=len(lines))

        def on_chunk(index: int, n: int, reused: bool) -> None:
            progress.advance(task, n)
            what = "already done" if reused else f"{time.perf_counter() - started:.0f} s"
            _log(student_dir, console, f"teacher chunk {index + 1}/{chunks} ({what})",
                 quiet=reused and console.is_terminal)  # fmt: skip

        hypotheses = translate_resumable(
            translate, lines, out_dir, fingerprint, cfg.distill.chunk_lines, on_chunk
        )
    path = student_dir.root / "distill" / f"teacher_train.{tgt}"
    atomic_write_text(path, "".join(h + "\n" for h in hypotheses))
    empty = sum(1 for h in hypotheses if not h.strip())
    info = {"lines": len(hypotheses), "empty": empty, "file": str(path), "source": str(source)}
    return path, {**fingerprint, **info}


# -- student data ------------------------------------------------------------------------------


def prepare_student_data(cfg, teacher_cfg, student_dir: RunDir, outputs: dict | None) -> dict:
    """``STUDENT/data``: the teacher's data, with the teacher's outputs as training targets
    (sequence-level KD); rebuilt only when its inputs changed. Returns the manifest."""
    from fairseq.data import Dictionary

    teacher_dir = RunDir(teacher_cfg.run_dir)
    manifest = read_manifest(teacher_dir.manifest)
    record = {
        "teacher": str(teacher_dir.root),
        "teacher_fingerprint": manifest.get("fingerprint"),
        "mode": cfg.distill.mode,
        "mix_original": bool(cfg.distill.mix_original) if outputs else None,
        "teacher_outputs": outputs,
    }
    try:
        existing = json.loads(student_dir.manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        existing = None
    if existing is not None and (existing.get("distill") or {}).get("inputs") == record:
        return existing
    bin_info = None
    with building_dir(student_dir.data) as tmp:
        shutil.copytree(teacher_dir.data, tmp, dirs_exist_ok=True)
        if outputs is not None:
            direction = _sequence_direction(manifest)
            src, tgt = direction.src, direction.tgt
            bin_dir = tmp / manifest["files"]["bin"]
            split = "train1" if cfg.distill.mix_original else "train"
            prefix = bin_dir / f"{split}.{corpus_of(manifest, direction)}"
            targets = Path(outputs["file"]).read_text(encoding="utf-8").split("\n")[:-1]
            sources = Path(outputs["source"]).read_text(encoding="utf-8").split("\n")
            stats = {}
            for lang, lines in ((src, sources[: len(targets)]), (tgt, targets)):
                encoder = spm.Encoder(tmp / manifest["files"]["spm"][lang])
                pieces = tmp / f".distill.{lang}.pieces"
                text = "".join(p + "\n" for p in encoder.encode(lines))
                pieces.write_text(text, encoding="utf-8")
                dictionary = Dictionary.load(str(bin_dir / f"dict.{lang}.txt"))
                stats[lang] = binarize.binarize_file(pieces, dictionary, Path(f"{prefix}.{lang}"))
                pieces.unlink()
            bin_info = {
                "split": split,
                **{
                    lang: {"tokens": st.tokens, "unknown": st.unknown} for lang, st in stats.items()
                },
            }
        manifest["distill"] = {"inputs": record, "bin": bin_info}
        atomic_write_json(tmp / "manifest.json", manifest)
    return manifest


# -- student initialisation --------------------------------------------------------------------


def write_init_checkpoint(cfg, student_cfg, chosen, student_dir: RunDir, console) -> Path:
    """``STUDENT/distill/init.pt``: the student with the teacher's tensors copied in."""

    student = build_model_state(train_args(student_cfg, student_dir), student_cfg.train.seed)
    teacher = load_state(chosen.path)["model"]
    state, report = student_state_from_teacher(
        student, teacher, cfg.distill.init, cfg.distill.init_expert
    )
    _log(student_dir, console,
         f"student initialisation from {chosen.path}: {len(report.copied)} tensors copied, "
         f"{len(report.from_experts)} from experts ({cfg.distill.init}), "
         f"{len(report.kept)} kept (see logs/distill.log)")  # fmt: skip
    for line in report.lines():
        _log(student_dir, console, "  " + line, quiet=True)
    atomic_write_json(student_dir.root / "distill" / "init.json", report.as_dict())
    return save_init_checkpoint(state, student_dir.root / "distill" / INIT_CHECKPOINT)


# -- evaluation and report ---------------------------------------------------------------------


def _evaluated(run_cfg: DictConfig, console: Console) -> dict:
    """The eval report of ``run_cfg``: an existing one of the same checkpoint and decoding
    options, or a new evaluation."""

    run_dir = RunDir(run_cfg.run_dir)
    ev = run_cfg.eval
    name = ev.split if ev.source is None else None
    if name is not None and ev.checkpoint != "average":
        path = run_dir.eval / name / REPORT
        try:
            report = read_report(path)
            chosen = choose_checkpoint(
                run_dir.checkpoints, ev.checkpoint, ev.average_last, ev.average_over
            )
            same = (
                report["checkpoint"]["path"] == str(chosen.path)
                and report["checkpoint"]["num_updates"] == chosen.num_updates
                and report["decoding"] == DecodeOptions.from_config(ev).as_dict()
                and _same_model_arguments(report, run_cfg)
            )
            if same:
                console.print(f"reusing {path}", highlight=False)
                return report
        except (OSError, ValueError, KeyError, TypeError, MoeMtError):
            pass
    return evaluate(run_cfg, console=console).report


def _summary(report: dict) -> dict:
    """A run's row of the distillation report: its scores (the macro average over its trained
    directions; a single pair's score), size and speed."""
    return {
        "run_dir": report["run_dir"],
        "arch": report["model"]["arch"],
        "checkpoint": report["checkpoint"]["path"],
        "num_updates": report["checkpoint"]["num_updates"],
        "bleu": report["average"]["BLEU"]["score"],
        "chrf2": report["average"]["chrF2"]["score"],
        "parameters": report["parameters"],
        **decoding_speed(report),
        "reference_sha256": {
            name: d["files"]["reference"]["sha256"] for name, d in report["directions"].items()
        },
    }


def gain_kept(teacher: float, student: float, baseline: float | None) -> float | None:
    """``(student - baseline) / (teacher - baseline)``: the share of the teacher's gain over the
    baseline that the student keeps (None without a baseline or without a gain to share)."""
    if baseline is None or teacher == baseline:
        return None
    return (student - baseline) / (teacher - baseline)


def distill_report(cfg, teacher_cfg, student_cfg, console, extra: dict) -> dict:
    teacher_eval = OmegaConf.merge(teacher_cfg, {"eval": teacher_eval_config(cfg, teacher_cfg)})
    teacher_eval.eval.checkpoint = cfg.distill.teacher_checkpoint
    teacher_eval.eval.bootstrap_baseline = None
    student_eval = OmegaConf.merge(student_cfg, {"eval": {"bootstrap_baseline": None}})
    rows = {
        "teacher": _summary(_evaluated(teacher_eval, console)),
        "student": _summary(_evaluated(student_eval, console)),
        "baseline": None,
    }
    if cfg.distill.baseline is not None:
        base_cfg = OmegaConf.merge(load_config(cfg.distill.baseline), {"eval": cfg.eval})
        base_cfg.eval.bootstrap_baseline = None
        rows["baseline"] = _summary(_evaluated(base_cfg, console))
    shas = {k: r["reference_sha256"] for k, r in rows.items() if r is not None}
    if len({json.dumps(s, sort_keys=True) for s in shas.values()}) > 1:
        raise MoeMtError(f"teacher, student and baseline were scored on other references: {shas}")
    t, s = rows["teacher"], rows["student"]
    b = rows["baseline"]
    return {
        "format": REPORT_FORMAT,
        "mode": cfg.distill.mode,
        "split": cfg.eval.split if cfg.eval.source is None else cfg.eval.source,
        **rows,
        "gain_kept": gain_kept(t["bleu"], s["bleu"], None if b is None else b["bleu"]),
        "parameter_ratio": s["parameters"] / t["parameters"] if t["parameters"] else None,
        "speedup": (
            s["sentences_per_second"] / t["sentences_per_second"]
            if t["sentences_per_second"]
            else None
        ),
        **extra,
        "distill_config": OmegaConf.to_container(cfg.distill),
        **provenance(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


# -- the workflow ------------------------------------------------------------------------------


def distill(cfg: DictConfig, console: Console | None = None) -> DistillResult:
    """Distil the teacher ``cfg.distill.teacher`` into the student of ``cfg`` in ``cfg.run_dir``;
    rerunning resumes (teacher translation chunks, student training) and refreshes the report."""

    console = console or Console(stderr=True)
    check_distill_config(cfg)
    teacher_cfg = teacher_config(cfg)
    student_dir = RunDir(cfg.run_dir)
    chosen = _choose_teacher_checkpoint(cfg)
    # Before the student's run directory is written: a teacher checkpoint that does not fit
    # the teacher's data (prepared again since) would fail in the middle of the student's init.
    teacher_bin = RunDir(teacher_cfg.run_dir).data / "bin"
    check_fits_data(chosen.path, load_state(chosen.path)["model"], teacher_cfg.data, teacher_bin)
    student_cfg = student_config(cfg, teacher_cfg, chosen.path)
    # The student's options too (fairseq's arguments, the model's layers): one line now rather
    # than after the teacher's outputs, the data and the init checkpoint were written.
    parse_fairseq_args(train_args(student_cfg, student_dir))
    check_model(student_cfg)
    extra: dict = {"teacher_outputs": None, "init": None}
    with student_dir.locked():
        _log(student_dir, console, f"moemt distill ({cfg.distill.mode}-level): teacher "
             f"{teacher_cfg.run_dir} checkpoint {chosen.path.name} "
             f"({chosen.num_updates:,} updates) -> student {student_dir.root}")  # fmt: skip
        outputs = None
        if cfg.distill.mode == "sequence":
            _, outputs = teacher_outputs(cfg, teacher_cfg, chosen, student_dir, console)
            extra["teacher_outputs"] = outputs
        prepare_student_data(cfg, teacher_cfg, student_dir, outputs)
        init = None
        if cfg.distill.init_from_teacher and not (student_dir.checkpoints / LAST).exists():
            init = write_init_checkpoint(cfg, student_cfg, chosen, student_dir, console)
    init_json = student_dir.root / "distill" / "init.json"
    if init_json.is_file():
        info = json.loads(init_json.read_text(encoding="utf-8"))
        extra["init"] = {k: info[k] for k in ("copied", "from_experts", "kept")}
    result = train(student_cfg, finetune_from=init, console=console)
    extra["training"] = {
        "num_updates": result.summary.get("num_updates"),
        "wall_seconds": result.summary.get("wall_seconds"),
    }
    report = distill_report(cfg, teacher_cfg, student_cfg, console, extra)
    atomic_write_json(student_dir.root / "distill" / "report.json", report)
    return DistillResult(student_dir.root, report)
