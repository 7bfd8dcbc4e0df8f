"""``moemt translate``: the lines of stdin translated to stdout, one per line; what was used on
stderr.

:func:`register` adds the command to the ``moemt`` app; it receives main's helpers (error
mapping, argument types, consoles) so that this module does not import ``moe_mt.cli.main``.
"""

# No `from __future__ import annotations`: typer reads the parameter annotations, which are
# the argument types handed to register().
import inspect
import os
import signal
import sys
from typing import Annotated

import typer

from moe_mt.cli.common import section_help
from moe_mt.config import load_config
from moe_mt.errors import MoeMtError

EXAMPLES = """Examples:

  echo "Where is the station?" | moemt translate runs/demo
  moemt translate runs/demo --engine ctranslate2 eval.quantization=int8 < input.en
  moemt translate recipes/demo.yaml eval.beam=1 < input.en > output.de"""


def _read_stdin_lines():
    """Lines of stdin as UTF-8 text, newline removed, read lazily."""
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:  # a text-only stream (some embedding hosts)
        for line in sys.stdin:
            yield line.rstrip("\n")
        return
    for number, raw in enumerate(stream, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise MoeMtError(f"<stdin>:{number}: invalid UTF-8") from None
        yield text[:-1] if text.endswith("\n") else text


def _write_stdout(lines: list[str]) -> None:
    """Write ``lines`` to stdout; a reader that went away (``| head``) ends the command as
    SIGPIPE ends ``cat``: silently, exit code 141."""
    data = "".join(line + "\n" for line in lines)
    stream = getattr(sys.stdout, "buffer", None)
    try:
        if stream is None:
            sys.stdout.write(data)
            sys.stdout.flush()
        else:
            sys.stdout.flush()
            stream.write(data.encode("utf-8"))
            stream.flush()
    except BrokenPipeError:
        # What is still buffered goes to /dev/null, so that Python's flush at exit does not
        # print "Exception ignored ... BrokenPipeError" (the recipe of Python's signal docs).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        raise SystemExit(128 + signal.SIGPIPE) from None


def _check_streams() -> None:
    """stdin and stdout closed at start-up (``<&-``, ``>&-``) are None in Python."""
    for name, stream, role in (
        ("stdin", sys.stdin, "the lines to translate are read from it"),
        ("stdout", sys.stdout, "the translations are written to it"),
    ):
        if stream is None:
            raise MoeMtError(f"{name} is closed; {role}")


def register(app, *, user_errors, config_arg, overrides_arg, console, err_console) -> None:
    """Add ``translate`` to ``app``."""

    def translate_command(
        config: config_arg,
        overrides: overrides_arg = None,
        src: Annotated[
            str | None, typer.Option("--src", help="Multilingual runs: source language.")
        ] = None,
        tgt: Annotated[
            str | None, typer.Option("--tgt", help="Multilingual runs: target language.")
        ] = None,
        engine: Annotated[
            str | None,
            typer.Option(
                "--engine",
                help="fairseq | ctranslate2 (the run's export, made on demand; "
                "eval.quantization sets its weight type). Default: eval.engine.",
            ),
        ] = None,
    ) -> None:
        """Translate the lines of stdin to stdout, one per line, with eval's checkpoint choice."""
        # The workflow (torch, fairseq) is imported when the command runs, not at start-up.
        from moe_mt.workflows.export.stream import translate_stream

        _check_streams()
        if (src is None) != (tgt is None):
            raise MoeMtError("--src and --tgt go together")
        direction = [f"eval.directions=[{src}-{tgt}]"] if src is not None else []
        chosen_engine = [f"eval.engine={engine}"] if engine is not None else []
        cfg = load_config(config, [*(overrides or []), *direction, *chosen_engine])
        # Interactive: answer each line at once; piped: batch up to 10,000 lines at a time.
        chunk = 1 if sys.stdin.isatty() else 10_000
        summary = translate_stream(cfg, _read_stdin_lines(), _write_stdout, chunk_lines=chunk)
        chosen, used = summary.checkpoint, summary.engine
        how = used["name"]
        if how != "fairseq":
            how += f" {used['quantization']}"
        err_console.print(
            f"translated {summary.lines:,} lines in {summary.seconds:.1f} s with "
            f"{chosen.path} ({chosen.num_updates:,} updates, {how})"
            + (f"; {summary.truncated} over-long sources cut" if summary.truncated else ""),
            highlight=False,
        )

    help_text = f"{inspect.cleandoc(translate_command.__doc__)}\n\n{section_help('eval')}"
    app.command("translate", help=help_text, epilog=EXAMPLES)(user_errors(translate_command))
