"""``moemt distill``: parse, load the config, call the workflow, print the report.

:func:`register` adds the command to the ``moemt`` app; it receives main's helpers (error
mapping, argument types, consoles) so that this module does not import ``moe_mt.cli.main``.
"""

# No `from __future__ import annotations`: typer reads the parameter annotations, which are
# the argument types handed to register().
import inspect

from rich.table import Table

from moe_mt.cli.common import section_help


def distill_table(report: dict) -> Table:
    """Teacher, student and baseline side by side: BLEU, chrF2, parameters, speed."""
    table = Table(title=f"distill ({report['mode']}-level KD) on {report['split']}")
    for column in ("model", "arch", "BLEU", "chrF2", "parameters", "sent/s", "tokens/s"):
        table.add_column(column, justify="left" if column in ("model", "arch") else "right")
    for name in ("teacher", "student", "baseline"):
        row = report.get(name)
        if row is None:
            continue
        table.add_row(
            name,
            str(row["arch"]),
            f"{row['bleu']:.2f}",
            f"{row['chrf2']:.2f}",
            f"{row['parameters']:,}",
            f"{row['sentences_per_second']:.1f}",
            f"{row['tokens_per_second']:.0f}",
        )
    kept = report.get("gain_kept")
    parts = [
        "gain kept: "
        + (
            "-" if kept is None else f"{100 * kept:.1f}% of the teacher's gain over the baseline"
        ),  # fmt: skip
    ]
    if report.get("parameter_ratio") is not None:
        parts.append(f"student/teacher parameters {report['parameter_ratio']:.3f}")
    if report.get("speedup") is not None:
        parts.append(f"student/teacher sentences/s {report['speedup']:.2f}")
    table.caption = "; ".join(parts)
    return table


EXAMPLES = """Examples:

  moemt distill recipes/demo_distill.yaml
  moemt distill recipes/demo_distill.yaml distill.teacher_weight=0.5"""


def register(app, *, user_errors, config_arg, overrides_arg, console, err_console) -> None:
    """Add ``distill`` to ``app``."""

    def distill_command(config: config_arg, overrides: overrides_arg = None) -> None:
        """Distil the teacher run distill.teacher into the dense student of CONFIG.

        Word- or sequence-level knowledge distillation, in the student's own run directory;
        rerun the same command to resume.
        """
        from moe_mt.config import load_config
        from moe_mt.workflows.distill.distillation import distill

        cfg = load_config(config, overrides or [])
        result = distill(cfg, console=err_console)
        console.print(distill_table(result.report))
        console.print(f"wrote {result.run_dir}/distill/report.json", highlight=False)

    help_text = f"{inspect.cleandoc(distill_command.__doc__)}\n\n{section_help('distill')}"
    app.command("distill", help=help_text, epilog=EXAMPLES)(user_errors(distill_command))
