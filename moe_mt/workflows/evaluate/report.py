"""``report.json`` of ``moemt eval``: one schema for one direction or many (format 2), and the
reports written before it (format 1) read in the same form.

Format 2, in ``RUN_DIR/eval/<name>/``::

    report.json   run_dir, name, split (null for a file pair), lines (all directions),
                  directions: {<s>-<t>: {lines, zero_shot, files {source, reference (path,
                  sha256), hypotheses (relative to the report)}, scores, legacy_bleu,
                  bootstrap, timing, truncated_sources, expert_usage, <family that draws
                  experts: thor>}},
                  average (macro over the trained directions), zero_shot_average,
                  checkpoint, decoding, engine {name (fairseq | ctranslate2), quantization,
                  threads; ctranslate2: version, compute_type, export, export_reused,
                  decoding_differences}, timing {load_seconds, threads}, parameters, model,
                  eval_config, versions, git commit, created
    <s>-<t>/hyp.txt           one detokenised hypothesis per source line
    <s>-<t>/expert_usage.png  MoE models: tokens per expert per MoE layer

Format 1 had two schemas: the single-pair one (``scores``, ``files`` and ``timing`` at the top,
``hyp.txt`` beside the report) and the multilingual one (format 2 less the relative hypothesis
paths). :func:`read_report` gives both in the format-2 form.
"""

from __future__ import annotations

import json
from pathlib import Path

from moe_mt.errors import MoeMtError
from moe_mt.models import families
from moe_mt.workflows.evaluate.scoring import macro_average

#: The decoding options that change the hypotheses, as ``report.json``'s ``decoding`` records them:
#: eval compares them before it replaces a report, compare shows and checks them for every row.
OUTPUT_DECODING = ("beam", "lenpen", "max_len_a", "max_len_b", "no_repeat_ngram_size")

REPORT_FORMAT = 2
REPORT = "report.json"
HYPOTHESES = "hyp.txt"
EXPERT_USAGE_PNG = "expert_usage.png"
#: Per-direction fields of a format-1 single-pair report, kept at its top level (and the
#: consistency entry of each family that draws its experts, named after the family).
_DIRECTION_KEYS = ("files", "scores", "legacy_bleu", "bootstrap", "truncated_sources",
                   "expert_usage")  # fmt: skip


def _direction_keys() -> tuple[str, ...]:
    return _DIRECTION_KEYS + tuple(f.name for f in families.families() if f.draws_key)


def read_report(path: Path) -> dict:
    """The eval report at ``path`` in the format-2 form; a missing or unreadable one is an error
    that says how to make it."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError:
        raise MoeMtError(f"{path}: no eval report; run `moemt eval` on its run first") from None
    except ValueError as exc:
        raise MoeMtError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(report, dict) or "checkpoint" not in report:
        raise MoeMtError(f"{path}: not a moemt eval report")
    return upgraded(report)


def upgraded(report: dict) -> dict:
    """A format-1 report in the format-2 form (format 2 as it is)."""
    if report.get("format", 1) >= 2:
        return report
    if "directions" in report:  # format-1 multilingual: hypotheses under <direction>/
        for name, direction in report["directions"].items():
            direction["files"]["hypotheses"] = f"{name}/{HYPOTHESES}"
        return report
    keys = _direction_keys()
    direction = {key: report.get(key) for key in keys}
    direction["files"] = {**report["files"], "hypotheses": HYPOTHESES}
    timing = report.get("timing") or {}
    direction.update(lines=report["lines"], zero_shot=False, timing=timing)
    name = _direction_of(report)
    rest = {k: v for k, v in report.items() if k not in keys}
    return {
        **rest,
        "directions": {name: direction},
        "average": macro_average({name: direction["scores"]}),
        "zero_shot_average": None,
        "timing": {k: timing[k] for k in ("load_seconds", "threads") if k in timing},
    }


def _direction_of(report: dict) -> str:
    """A format-1 single-pair report's direction: the suffixes of its source and reference."""
    source = Path(report["files"]["source"]["path"]).suffix.lstrip(".")
    reference = Path(report["files"]["reference"]["path"]).suffix.lstrip(".")
    return f"{source}-{reference}" if source and reference else "src-tgt"


def hypotheses_file(report_path: Path, report: dict, direction: str) -> Path:
    """The hypothesis file of ``direction`` in the report at ``report_path``."""
    return Path(report_path).parent / report["directions"][direction]["files"]["hypotheses"]


def decoding_speed(report: dict) -> dict:
    """Sentences and generated tokens per second over every direction of a report: their sums
    over the summed translation time (None when nothing was timed)."""
    directions = report["directions"].values()
    seconds = sum(d["timing"].get("translate_seconds") or 0 for d in directions)
    tokens = sum(d["timing"].get("generated_tokens") or 0 for d in directions)
    if not seconds:
        return {"sentences_per_second": None, "tokens_per_second": None}
    return {
        "sentences_per_second": round(report["lines"] / seconds, 2),
        "tokens_per_second": round(tokens / seconds, 1),
    }
