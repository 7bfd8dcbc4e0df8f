"""The ``moemt`` command: the app, the arguments every command shares, the error guard.

Each command is one module, ``<command>_command.py``: it parses, loads the config, calls one
workflow and prints its result table; its ``register`` adds it to the app with this module's
helpers. The workflows in :mod:`moe_mt.workflows` are what tests call directly. A
:class:`MoeMtError` becomes one line on stderr and exit code 1; so does any other exception, its
traceback saved to a file that the line names (:mod:`moe_mt.cli.unexpected`; ``MOEMT_DEBUG=1``
shows it instead). SIGTERM is Ctrl-C's KeyboardInterrupt, so that it gets the same cleanup
(temporaries removed, train's summary written); it ends in ``terminated`` and exit code 143.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import signal
import sys
from typing import Annotated

import rich.markup
import typer
import typer.core
from rich.console import Console

from moe_mt.cli import (
    compare_command,
    config_command,
    distill_command,
    eval_command,
    export_command,
    ls_command,
    prep_command,
    train_command,
    translate_command,
    unexpected,
    version_command,
)
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


#: Whether this process got SIGTERM: workflows re-raise a plain KeyboardInterrupt after their
#: cleanup (train does), so the exception's type cannot say which signal it was.
_terminated = False


def _sigterm(signum, frame) -> None:
    """SIGTERM as Ctrl-C; a second one ends the process at once (SIGTERM's default)."""
    global _terminated
    _terminated = True
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_is_an_interrupt():
    global _terminated
    _terminated = False
    try:
        previous = signal.signal(signal.SIGTERM, _sigterm)
    except ValueError:  # not the main thread (an embedding host): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupted() -> None:
    """The line and exit code of Ctrl-C (130) or SIGTERM (143), as a shell reports them."""
    if _terminated:
        err_console.print("[yellow]terminated[/]")
        sys.exit(128 + signal.SIGTERM)
    err_console.print("[yellow]interrupted[/]")
    sys.exit(128 + signal.SIGINT)


class OneLineUsageErrors(typer.core.TyperGroup):
    """A usage error (a missing argument, an unknown option or command) is one line on stderr,
    as every other error a user's input causes, instead of Typer's usage panel."""

    def main(self, *args, standalone_mode: bool = True, **kwargs):
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            with _sigterm_is_an_interrupt():
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
        except (*_ABORTS, KeyboardInterrupt):
            _interrupted()
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
            _interrupted()
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


# Typer lists the commands in the order they are added: the pipeline's, then the helpers.
for _command in (
    prep_command,
    train_command,
    eval_command,
    translate_command,
    distill_command,
    export_command,
    compare_command,
    config_command,
    ls_command,
    version_command,
):
    _command.register(
        app,
        user_errors=user_errors,
        config_arg=ConfigArg,
        overrides_arg=OverridesArg,
        console=console,
        err_console=err_console,
    )


if __name__ == "__main__":
    app()
