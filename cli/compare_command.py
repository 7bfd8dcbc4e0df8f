"""``moemt compare``: evaluated runs side by side, the table printed, the files written.

:func:`register` adds the command to the ``moemt`` app; it receives main's helpers (error
mapping, argument types, consoles) so that this module does not import ``moe_mt.cli.main``.
"""

# No `from __future__ import annotations`: typer reads the parameter annotations.
from typing import Annotated

import typer
from rich.table import Table

EXAMPLES = """Examples:

  moemt compare runs/demo runs/demo_switch
  moemt compare runs/demo runs/demo_switch runs/demo_thor --out compare/demo"""


def compare_table(result: dict) -> Table:
    # The workflow (torch, fairseq) is imported when the command runs, not at start-up.
    from moe_mt.workflows.compare.comparison import SIGNIFICANCE, mean_score_cell

    where = result.get("eval_name", result["split"])
    directions = result["directions"]
    what = f"{result['lines']} lines"
    if len(directions) > 1:
        what += f", mean of {len(directions)} directions"
    table = Table(title=f"compare {result['split'] or 'files'} ({what}, eval/{where})")
    metrics = result.get("metrics", ["BLEU", "chrF2", "TER"])  # + BLEU4 tok, where reported
    columns = ("run", *metrics, "params", "active/token", "ckpt updates", "updates",
               "train wall s", "sent/s", "act. rate", "dropped")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "run" else "right")
    for row in result["runs"]:
        table.add_row(
            row["name"],
            *(mean_score_cell(row, m) for m in metrics),
            *(
                "-" if row[k] is None else f"{row[k]:,}"
                for k in (
                    "parameters",
                    "active_parameters",
                    "checkpoint_updates",
                    "updates",
                    "train_wall_seconds",
                    "sentences_per_second",
                )
            ),  # fmt: skip
            *(
                "-" if row[k] is None else f"{row[k]:.3f}"
                for k in ("activation_rate", "dropped_fraction")
            ),
        )
    table.caption = (
        f"baseline {result['baseline']}; mean ± 95% CI (p) of paired bootstrap, "
        f"* p < {SIGNIFICANCE}; " + "; ".join(f"{m} {s}" for m, s in result["signatures"].items())
    )
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
        console.print(compare_table(result))
        for line in result["decoding_differs"]:
            console.print(f"warning: decoded otherwise than the baseline: {line}", highlight=False)
        console.print(
            f"wrote {out} (compare.md, compare.json, {', '.join(result['plots']) or 'no plots'})"
        )

    app.command("compare", epilog=EXAMPLES)(user_errors(compare_command))
