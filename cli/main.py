"""The ``moemt`` command: parse, load the config, call one workflow, print the result.

No logic lives here beyond turning arguments into a config and results into tables; the
workflows in :mod:`moe_mt.workflows` are what tests call directly. A :class:`MoeMtError` becomes
one line on stderr and exit code 1; so does any other exception, its traceback saved to a file
that the line names (:mod:`moe_mt.cli.unexpected`; ``MOEMT_DEBUG=1`` shows it instead).
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import Annotated

import rich.markup
import typer
import typer.core
from rich.console import Console

import moe_mt
from moe_mt.cli import report, unexpected
from moe_mt.errors import MoeMtError

console = Console()
# fairseq announces at import that an optional speech dependency is missing: not our concern.
logging.getLogger("fairseq.tasks.text_to_speech").setLevel(logging.WARNING)
err_console = Console(stderr=True)


def print_error(message: str) -> None:
    """One line on stderr: ``error: message``."""
    message = rich.markup.escape(message)  # paths and messages may hold [brackets]
    # ... and :name: text, which rich would turn into an emoji (`root:x:0:0` into root❌0:0)
    err_console.print(
        f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True, emoji=False
    )


# click's exceptions, wherever this typer takes click from (newer releases vendor it).
_click_errors = sys.modules[typer.BadParameter.__module__]
# `moemt` alone prints the help, then raises this (click >= 8.2).
_NO_ARGS_IS_HELP = getattr(_click_errors, "NoArgsIsHelpError", ())
# Ctrl-C outside a command: typer's own Abort, or click's where typer uses click's.
_ABORTS = tuple({typer.Abort, getattr(_click_errors, "Abort", typer.Abort)})


class OneLineUsageErrors(typer.core.TyperGroup):
    """A usage error (a missing argument, an unknown option or command) is one line on stderr,
    as every other error a user's input causes, instead of Typer's usage panel."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            # Returns the exit code of an Exit (--help: 0), else the command's return value.
            result = super().main(*args, standalone_mode=False, **kwargs)
        except _NO_ARGS_IS_HELP as exc:  # the help is printed already
            sys.exit(exc.exit_code)
        except _click_errors.ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            where = f"{ctx.command_path}: " if ctx is not None else ""
            usage = isinstance(exc, _click_errors.UsageError) and ctx is not None
            hint = f" (see {ctx.command_path} --help)" if usage else ""
            print_error(f"{where}{exc.format_message()}{hint}")
            sys.exit(exc.exit_code)
        except _ABORTS:
            err_console.print("[yellow]interrupted[/]")
            sys.exit(130)
        except Exception as exc:  # outside any command (the commands have user_errors)
            if unexpected.debugging():
                raise
            print_error(unexpected.one_line(exc, "command"))
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


app = typer.Typer(
    name="moemt",
    help="Train, compare and distil Mixture-of-Experts Transformers for machine translation.",
    cls=OneLineUsageErrors,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigArg = Annotated[
    str, typer.Argument(help="Recipe YAML, or a run directory holding config.yaml.")
]
OverridesArg = Annotated[
    list[str] | None,
    typer.Argument(
        help="Recipe pieces merged after the recipe (e.g. recipes/families/switch.yaml), then "
        "key=value overrides (e.g. data.spm.vocab_size=4000)."
    ),
]


def user_errors(fn):
    """The CLI's guard around every command: a MoeMtError is its one line on stderr and exit 1;
    any other exception one line naming the file that holds its traceback, and exit 1
    (:mod:`moe_mt.cli.unexpected`); ``MOEMT_DEBUG=1`` lets the traceback through."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MoeMtError as exc:
            print_error(str(exc))
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            err_console.print("[yellow]interrupted[/]")
            sys.exit(130)
        except (typer.Exit, typer.Abort, _click_errors.ClickException):
            raise  # click's own control flow: --help, usage errors
        except Exception as exc:
            if unexpected.debugging():
                raise
            print_error(unexpected.one_line(exc, fn.__name__.removesuffix("_command")))
            sys.exit(1)

    return wrapper


@app.callback()
def main() -> None:
    """moemt: one experiment directory per run; see README.md."""


PREP_EXAMPLES = """Examples:

  moemt prep recipes/demo.yaml --dry-run   # the plan only: nothing written
  moemt prep recipes/demo.yaml
  moemt prep recipes/demo_switch.yaml data.spm.vocab_size=4000"""


@app.command(epilog=PREP_EXAMPLES)
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
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace data that this run's checkpoints were trained on (refused otherwise).",
        ),
    ] = False,
) -> None:
    """Validate, clean, tokenise (sentencepiece) and binarise a parallel corpus.

    Recipe keys: the data section (`moemt config RECIPE data` prints each with its help).
    """
    from moe_mt.config import load_config
    from moe_mt.workflows.prep.pipeline import prep as run_prep

    cfg = load_config(config, overrides or [])
    if dry_run:
        from moe_mt.workflows.prep.plan import prep_plan

        for line in prep_plan(cfg).lines:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        return
    result = run_prep(cfg, console=err_console, overwrite=overwrite)
    if result.up_to_date:
        console.print(
            f"data in {result.run_dir}/data is up to date (same inputs and config): nothing to do"
        )
    console.print(report.prep_table(result.manifest))
    console.print(f"wrote {result.run_dir}/data (manifest.json)")


TRAIN_EXAMPLES = """Examples:

  moemt train recipes/demo_switch.yaml --dry-run   # parameters, FLOPs
  moemt train recipes/demo.yaml train.max_update=3000
  moemt train recipes/europarl/en_ro.yaml recipes/families/switch.yaml model.moe.top_k=2"""


@app.command(epilog=TRAIN_EXAMPLES)
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
    """Train (or resume) the model of CONFIG with fairseq, in its run directory.

    Recipe keys: the model and train sections (`moemt config RECIPE model`, `... train`);
    architectures: `moemt ls archs`.
    """
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


def _register(module) -> None:
    """Add the commands of ``module`` (its ``register``) to the app, with main's helpers."""
    module.register(
        app,
        user_errors=user_errors,
        config_arg=ConfigArg,
        overrides_arg=OverridesArg,
        console=console,
        err_console=err_console,
    )


# Typer lists the commands in the order they are added: the pipeline's, then the helpers.
from moe_mt.cli import (  # noqa: E402
    config_command,
    distill_command,
    eval_commands,
    export_command,
    ls_command,
)

_register(eval_commands)  # eval, translate
_register(distill_command)
_register(export_command)


COMPARE_EXAMPLES = """Examples:

  moemt compare runs/demo runs/demo_switch
  moemt compare runs/demo runs/demo_switch runs/demo_thor --out compare/demo"""


@app.command(epilog=COMPARE_EXAMPLES)
@user_errors
def compare(
    run_dirs: Annotated[
        list[str],
        typer.Argument(
            help="Evaluated run directories, or a run's eval directory (RUN_DIR/eval/NAME: e.g. "
            "its CTranslate2 export's report, eval/test-ct2-int8)."
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
        typer.Option(help="Compare the reports in eval/NAME (`moemt eval ... eval.name=NAME`)."),
    ] = None,
) -> None:
    """Evaluated runs side by side, with paired bootstrap against the baseline."""
    from moe_mt.workflows.compare.comparison import compare as run_compare

    result = run_compare(run_dirs, out, baseline, split, resamples, seed, eval_name=eval_name)
    console.print(report.compare_table(result))
    for line in result["decoding_differs"]:
        console.print(f"warning: decoded otherwise than the baseline: {line}", highlight=False)
    console.print(
        f"wrote {out} (compare.md, compare.json, {', '.join(result['plots']) or 'no plots'})"
    )


_register(config_command)
_register(ls_command)


@app.command(epilog="Examples:\n\n  moemt version\n  moemt version | grep fairseq")
@user_errors
def version() -> None:
    """Print the moemt version and the versions it runs with."""
    from moe_mt.provenance import provenance

    info = provenance()
    console.print(f"moemt {moe_mt.__version__} (commit {info['git_commit']})")
    for name, value in info["versions"].items():
        console.print(f"  {name} {value}")


if __name__ == "__main__":
    app()
