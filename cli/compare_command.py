"""``moemt compare``: evaluated runs side by side, the table printed, the files written.

:func:`register` adds the command to the ``moemt`` app; it receives main's helpers (error
mapping, argument types, consoles) so that this module does not import ``moe_mt.cli.main``.
"""

# No `from __future__ import annotations`: typer reads the parameter annotations.
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

EXAMPLES = """Examples:

  moemt compare runs/demo runs/demo_switch
  moemt compare runs/demo runs/demo_switch runs/demo_thor --out compare/demo"""


#: Below this console width the comparison is printed run by run instead of as one wide table.
WIDE_TABLE_COLUMNS = 160
COST_KEYS = (
    ("params", "parameters"), ("active/token", "active_parameters"),
    ("ckpt updates", "checkpoint_updates"), ("updates", "updates"),
    ("train wall s", "train_wall_seconds"), ("sent/s", "sentences_per_second"),
)  # fmt: skip
RATE_KEYS = (("act. rate", "activation_rate"), ("dropped", "dropped_fraction"))


def compare_title(result: dict) -> str:
    where = result.get("eval_name", result["split"])
    directions = result["directions"]
    what = f"{result['lines']} lines"
    if len(directions) > 1:
        what += f", mean of {len(directions)} directions"
    return f"compare {result['split'] or 'files'} ({what}, eval/{where})"


def compare_caption(result: dict) -> str:
    from moe_mt.workflows.compare.comparison import SIGNIFICANCE

    return (
        f"baseline {result['baseline']}; mean ± 95% CI (p) of paired bootstrap, "
        f"* p < {SIGNIFICANCE}; " + "; ".join(f"{m} {s}" for m, s in result["signatures"].items())
    )


def _cost_cells(row: dict) -> list[tuple[str, str]]:
    return [(label, "-" if row[k] is None else f"{row[k]:,}") for label, k in COST_KEYS] + [
        (label, "-" if row[k] is None else f"{row[k]:.3f}") for label, k in RATE_KEYS
    ]


def compare_lines(result: dict) -> list[str]:
    """The comparison run by run, for a narrow console or a CI log: each run's scores on a line
    of their own, then its costs, so that nothing is truncated at 80 columns."""
    from moe_mt.workflows.compare.comparison import mean_score_cell

    metrics = result.get("metrics", ["BLEU", "chrF2", "TER"])
    lines = [compare_title(result)]
    for row in result["runs"]:
        lines.append(row["name"])
        lines += [f"  {m:<8} {mean_score_cell(row, m)}" for m in metrics]
        lines.append("  " + ", ".join(f"{label} {value}" for label, value in _cost_cells(row)))
    return [*lines, compare_caption(result)]


def compare_table(result: dict) -> Table:
    # The workflow (torch, fairseq) is imported when the command runs, not at start-up.
    from moe_mt.workflows.compare.comparison import mean_score_cell

    table = Table(title=compare_title(result))
    metrics = result.get("metrics", ["BLEU", "chrF2", "TER"])  # + BLEU4 tok, where reported
    columns = ("run", *metrics, "params", "active/token", "ckpt updates", "updates",
               "train wall s", "sent/s", "act. rate", "dropped")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "run" else "right")
    for row in result["runs"]:
        table.add_row(
            row["name"],
            *(mean_score_cell(row, m) for m in metrics),
            *(value for _, value in _cost_cells(row)),
        )
    table.caption = compare_caption(result)
    return table


def register(app, *, user_errors, config_arg, overrides_arg, console, err_console) -> None:
    """Add ``compare`` to ``app``."""

    def compare_command(
        run_dirs: Annotated[
            list[str],
            typer.Argument(
                help="Evaluated run directories, or a run's eval directory (RUN_DIR/eval/NAME: "
                "e.g. its CTranslate2 export's report, eval/test-ct2-int8)."
            ),
        ],
        baseline: Annotated[
            str | None, typer.Option(help="Run directory of the baseline (default: the first run).")
        ] = None,
        split: Annotated[str, typer.Option(help="The evaluated split to compare.")] = "test",
        out: Annotated[
            str, typer.Option(help="Directory for compare.md, .json and plots.")
        ] = "compare",
        resamples: Annotated[int, typer.Option(help="Paired bootstrap resamples.")] = 1000,
        seed: Annotated[int, typer.Option(help="Paired bootstrap seed.")] = 12345,
        eval_name: Annotated[
            str | None,
            typer.Option(
                help="Compare the reports in eval/NAME (`moemt eval ... eval.name=NAME`)."
            ),
        ] = None,
    ) -> None:
        """Evaluated runs side by side, with paired bootstrap against the baseline."""
        from moe_mt.workflows.compare.comparison import compare

        result = compare(run_dirs, out, baseline, split, resamples, seed, eval_name=eval_name)
        if console.width >= WIDE_TABLE_COLUMNS:
            console.print(compare_table(result))
        else:
            for line in compare_lines(result):
                console.print(line, highlight=False, markup=False, soft_wrap=True)
        for line in result["decoding_differs"]:
            console.print(f"warning: decoded otherwise than the baseline: {line}", highlight=False)
        console.print(
            f"wrote {Path(out) / 'compare.md'} (and compare.json, "
            f"{', '.join(result['plots']) or 'no plots'})",
            highlight=False, markup=False, soft_wrap=True,
        )  # fmt: skip

    app.command("compare", epilog=EXAMPLES)(user_errors(compare_command))
