"""The ``moemt`` command: parse, load the config, call one workflow, print the result.

No logic lives here beyond turning arguments into a config and results into tables; the
workflows in :mod:`moe_mt.workflows` are what tests call directly. A :class:`MoeMtError` becomes
one line on stderr and exit code 1.
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import Annotated

import rich.markup
import typer
from rich.console import Console

import moe_mt
from moe_mt.cli import report
from moe_mt.errors import MoeMtError

app = typer.Typer(
    name="moemt",
    help="Train, compare and distil Mixture-of-Experts Transformers for machine translation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
# fairseq announces at import that an optional speech dependency is missing: not our concern.
logging.getLogger("fairseq.tasks.text_to_speech").setLevel(logging.WARNING)
err_console = Console(stderr=True)

ConfigArg = Annotated[
    str, typer.Argument(help="Recipe YAML, or a run directory holding config.yaml.")
]
OverridesArg = Annotated[
    list[str] | None, typer.Argument(help="key=value overrides, e.g. data.spm.vocab_size=4000")
]


def user_errors(fn):
    """Report a MoeMtError as one line on stderr and exit non-zero."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MoeMtError as exc:
            message = rich.markup.escape(str(exc))  # paths and messages may hold [brackets]
            err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            sys.exit(130)

    return wrapper


@app.callback()
def main() -> None:
    """moemt: one experiment directory per run; see README.md."""


@app.command()
@user_errors
def prep(
    config: ConfigArg,
    overrides: OverridesArg = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print what would be downloaded (URLs, sizes, checksums, cache) and written.",
        ),
    ] = False,
) -> None:
    """Validate, clean, tokenise (sentencepiece) and binarise a parallel corpus."""
    from moe_mt.config import load_config
    from moe_mt.workflows.prep.pipeline import prep as run_prep

    cfg = load_config(config, overrides or [])
    if dry_run:
        from moe_mt.workflows.prep.plan import prep_plan

        for line in prep_plan(cfg).lines:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        return
    result = run_prep(cfg, console=err_console)
    if result.up_to_date:
        console.print(
            f"data in {result.run_dir}/data is up to date (same inputs and config): nothing to do"
        )
    console.print(report.prep_table(result.manifest))
    console.print(f"wrote {result.run_dir}/data (manifest.json)")


@app.command()
@user_errors
def train(
    config: ConfigArg,
    overrides: OverridesArg = None,
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Delete this run's checkpoints and logs, start over."),
    ] = False,
    finetune_from: Annotated[
        str | None,
        typer.Option(help="Start from this checkpoint or run directory's weights (new optimizer)."),
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the resolved config, fairseq arguments and parameter/FLOP summary only.",
        ),
    ] = False,
) -> None:
    """Train (or resume) the model of CONFIG with fairseq, in its run directory."""
    import shlex

    from moe_mt.config import load_config, to_yaml
    from moe_mt.workflows.train.trainer import train as run_train

    cfg = load_config(config, overrides or [])
    result = run_train(
        cfg, overwrite=overwrite, finetune_from=finetune_from, dry_run=dry_run, console=err_console
    )
    if dry_run:
        console.print(to_yaml(cfg), highlight=False, markup=False)
        console.print(
            "fairseq-train " + shlex.join(result.fairseq_args), highlight=False, markup=False
        )
        from moe_mt.workflows.train.model_summary import model_summary, summary_table

        console.print(summary_table(model_summary(cfg)))
        return
    if result.rank == 0:  # under torchrun/srun, rank 0 alone reports
        console.print(report.train_table(result))


@app.command()
@user_errors
def compare(
    run_dirs: Annotated[list[str], typer.Argument(help="Evaluated run directories.")],
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
        typer.Option(help="Compare the reports in eval/NAME (`moemt eval ... eval.name=NAME`)."),
    ] = None,
) -> None:
    """Evaluated runs side by side, with paired bootstrap against the baseline."""
    from moe_mt.workflows.compare.comparison import compare as run_compare

    result = run_compare(run_dirs, out, baseline, split, resamples, seed, eval_name=eval_name)
    console.print(report.compare_table(result))
    console.print(
        f"wrote {out} (compare.md, compare.json, {', '.join(result['plots']) or 'no plots'})"
    )


@app.command()
def version() -> None:
    """Print the moemt version and the versions it runs with."""
    from moe_mt.provenance import provenance

    info = provenance()
    console.print(f"moemt {moe_mt.__version__} (commit {info['git_commit']})")
    for name, value in info["versions"].items():
        console.print(f"  {name} {value}")


from moe_mt.cli import eval_commands  # noqa: E402  (registers `eval` and `translate`)

eval_commands.register(
    app,
    user_errors=user_errors,
    config_arg=ConfigArg,
    overrides_arg=OverridesArg,
    console=console,
    err_console=err_console,
)

from moe_mt.cli import distill_command  # noqa: E402  (registers `distill`)

distill_command.register(
    app,
    user_errors=user_errors,
    config_arg=ConfigArg,
    overrides_arg=OverridesArg,
    console=console,
    err_console=err_console,
)


if __name__ == "__main__":
    app()
