"""``moemt eval``: parse, load the config, call the workflow, print the scores.

:func:`register` adds the command to the ``moemt`` app; it receives main's helpers (error
mapping, argument types, consoles) so that this module does not import ``moe_mt.cli.main``.
"""

# No `from __future__ import annotations`: typer reads the parameter annotations, which are
# the argument types handed to register().
import inspect

from rich.console import Group
from rich.table import Table
from rich.text import Text

from moe_mt.cli.common import section_help
from moe_mt.config import load_config

EXAMPLES = """Examples:

  moemt eval recipes/demo.yaml
  moemt eval runs/demo eval.engine=ctranslate2 eval.quantization=int8   # eval/test-ct2-int8
  moemt eval recipes/demo_switch.yaml eval.bootstrap_baseline=runs/demo"""


def eval_table(report: dict):
    """One row per direction (BLEU, chrF2, TER, speed); with several, the macro average of the
    trained ones, then the zero-shot ones and theirs; the signatures and the checkpoint below."""
    # The workflows (torch, fairseq) are imported when a command runs, not at start-up.
    from moe_mt.workflows.evaluate.scoring import METRICS

    directions = report["directions"]
    title = f"eval {report['name']} ({report['lines']:,} lines"
    table = Table(
        title=title + (f", {len(directions)} directions)" if len(directions) > 1 else ")")
    )
    for column in ("direction", "lines", *METRICS, "sent/s"):
        table.add_column(column, justify="left" if column == "direction" else "right")
    notes = []
    for zero_shot, label in ((False, "average"), (True, "zero-shot average")):
        rows = {k: d for k, d in directions.items() if bool(d.get("zero_shot")) is zero_shot}
        for name, info in rows.items():
            scores = info["scores"]
            table.add_row(
                f"{name} (zero-shot)" if zero_shot else name,
                f"{info['lines']:,}",
                *(f"{scores[m]['score']:.2f}" for m in METRICS),
                f"{info['timing']['sentences_per_second']:.1f}",
                end_section=name == list(rows)[-1],
            )
        average = report.get("zero_shot_average" if zero_shot else "average")
        if average and len(directions) > 1:
            lines = sum(info["lines"] for info in rows.values())
            table.add_row(
                label, f"{lines:,}", *(f"{average[m]['score']:.2f}" for m in METRICS), "",
                style="bold", end_section=True,
            )  # fmt: skip
            notes.append(f"{label}: unweighted mean of the {len(rows)} directions' scores")
    first = next(iter(directions.values()))["scores"]  # every direction is scored alike
    checkpoint = report["checkpoint"]
    source = checkpoint["path"]
    if checkpoint["choice"] == "average":
        names = ", ".join(_name(c["path"]) for c in checkpoint["averaged"])
        source += f" (average of {names}{', reused' if checkpoint['reused'] else ''})"
    notes += [
        *(f"{m} {first[m]['signature']}" for m in METRICS),
        f"checkpoint {source}, {checkpoint['num_updates']:,} updates; "
        f"{report['parameters']:,} parameters; beam {report['decoding']['beam']}",
    ]
    return Group(table, *(Text(line) for line in notes))


def bootstrap_table(bootstrap: dict, direction: str) -> Table:
    baseline = bootstrap["baseline"]["run_dir"]
    table = Table(
        title=f"{direction}: paired bootstrap against {baseline} "
        f"({bootstrap['resamples']:,} resamples, seed {bootstrap['seed']})"
    )
    for column in ("metric", "baseline", "this run", "p-value"):
        table.add_column(column, justify="left" if column == "metric" else "right")
    for name, m in bootstrap["metrics"].items():
        table.add_row(
            name,
            f"{m['baseline']:.2f} ({m['baseline_mean']:.2f} ± {m['baseline_ci95']:.2f})",
            f"{m['system']:.2f} ({m['system_mean']:.2f} ± {m['system_ci95']:.2f})",
            f"{m['p_value']:.4f}",
        )
    table.caption = (
        "score (bootstrap mean ± 95% CI half-width); p-value: how often a difference this large "
        "arises by chance (paired bootstrap resampling, sacrebleu)"
    )
    return table


def expert_usage_table(usage: dict, direction: str) -> Table:
    """One row per MoE layer: tokens routed, active experts, most/least used expert's load."""
    table = Table(
        title=f"{direction}: expert usage (activation rate: share of experts reached per forward "
        "pass; load: tokens relative to a uniform share)"
    )
    columns = ("layer", "tokens", "active experts", "activation rate", "load max", "load min",
               "dropped")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "layer" else "right")
    for name, layer in usage["layers"].items():
        rate = layer.get("activation_rate")
        table.add_row(
            name,
            f"{sum(layer['tokens']):,}",
            f"{layer['active_experts']}/{len(layer['tokens'])}",
            "-" if rate is None else f"{rate:.2%}",
            f"{layer['load_max']:.2f}",
            f"{layer['load_min']:.2f}",
            f"{layer['dropped']:,}",
        )
    return table


def _name(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def register(app, *, user_errors, config_arg, overrides_arg, console, err_console) -> None:
    """Add ``eval`` to ``app``."""

    def eval_command(config: config_arg, overrides: overrides_arg = None) -> None:
        """Translate a test set with a checkpoint and score it (BLEU, chrF2, TER; sacrebleu)."""
        from moe_mt.workflows.evaluate.evaluation import evaluate

        cfg = load_config(config, overrides or [])
        result = evaluate(cfg, console=err_console)
        console.print(eval_table(result.report))
        for direction, info in result.report["directions"].items():
            if info["bootstrap"] is not None:
                console.print(bootstrap_table(info["bootstrap"], direction))
            if info["expert_usage"] is not None and len(result.report["directions"]) == 1:
                console.print(expert_usage_table(info["expert_usage"], direction))
        plots = any(d["expert_usage"] for d in result.report["directions"].values())
        written = "report.json, <src>-<tgt>/hyp.txt" + (", <src>-<tgt>/expert_usage.png" * plots)
        console.print(f"wrote {result.out_dir} ({written})", highlight=False)

    help_text = f"{inspect.cleandoc(eval_command.__doc__)}\n\n{section_help('eval')}"
    app.command("eval", help=help_text, epilog=EXAMPLES)(user_errors(eval_command))
