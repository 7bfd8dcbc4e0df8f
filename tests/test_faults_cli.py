"""The CLI's guard: an exception no workflow expected is one line naming the file that holds its
traceback (the run's logs/ when a run directory is known, else a temporary file) and exit code
1; MOEMT_DEBUG=1 lets it through. Expected errors keep their own line (the other catalogues);
a failed write nobody named is still a one-line user error."""

from __future__ import annotations

import errno
import re
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.faults import invoke, one_error_line
from tests.test_prep import _recipe, _write_corpus

_TRACEBACK_FILE = re.compile(r"full traceback in (\S+);")


@pytest.fixture
def recipe(tmp_path, shipped_corpus, monkeypatch) -> Path:
    """A prep recipe whose preparation fails with a bug (a RuntimeError) inside the run dir."""
    from moe_mt.workflows.prep import pipeline

    def bug(*args, **kwargs):
        raise RuntimeError("something no workflow expected\nsecond line")

    monkeypatch.setattr(pipeline, "build", bug)
    return _recipe(tmp_path, _write_corpus(tmp_path / "corpus", shipped_corpus))


def test_unexpected_error_is_one_line_with_the_traceback_in_logs(recipe, tmp_path, monkeypatch):
    monkeypatch.delenv("MOEMT_DEBUG", raising=False)
    line = one_error_line(invoke("prep", recipe))
    assert line.startswith(
        "unexpected error in moemt prep: RuntimeError: something no workflow expected (full "
        f"traceback in {tmp_path / 'run' / 'logs'}/error-prep-"
    )
    assert line.endswith("; MOEMT_DEBUG=1 shows it here)")
    saved = Path(_TRACEBACK_FILE.search(line).group(1))
    text = saved.read_text()
    assert text.startswith("Traceback") and "in bug" in text and "second line" in text
    assert not (tmp_path / "run" / "data").exists()


def test_debug_lets_the_exception_through(recipe, monkeypatch):
    monkeypatch.setenv("MOEMT_DEBUG", "1")
    result = invoke("prep", recipe)
    assert isinstance(result.exception, RuntimeError)
    assert "something no workflow expected" in str(result.exception)


def test_without_a_run_directory_the_traceback_goes_to_a_temporary_file(monkeypatch):
    from moe_mt.cli import ls_command
    from moe_mt.workflows.common import rundir

    monkeypatch.delenv("MOEMT_DEBUG", raising=False)
    monkeypatch.setattr(rundir, "_last_locked", None)

    def bug():
        raise KeyError("registry")

    monkeypatch.setitem(ls_command.LISTINGS, "criteria", bug)
    line = one_error_line(invoke("ls", "criteria"))
    assert line.startswith("unexpected error in moemt ls: KeyError: 'registry' (full traceback in")
    saved = Path(_TRACEBACK_FILE.search(line).group(1))
    try:
        assert saved.name.startswith("moemt-error-ls-") and "KeyError" in saved.read_text()
    finally:
        saved.unlink()


def test_a_write_error_nobody_named_is_still_one_line(tmp_path, monkeypatch):
    """An OSError of a full disk or a read-only file system that no workflow wrapped is the
    user's to fix: one line naming the file, no traceback file."""
    from moe_mt.cli import ls_command

    path = tmp_path / "somewhere.txt"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setitem(ls_command.LISTINGS, "criteria", full)
    assert one_error_line(invoke("ls", "criteria")) == (
        f"no space left on device while writing {path}"
    )


def test_expected_errors_keep_their_line(tmp_path):
    line = one_error_line(invoke("eval", tmp_path / "nope.yaml"))
    assert line == f"{tmp_path / 'nope.yaml'}: no such recipe file"


def test_an_included_file_that_is_not_a_recipe_is_not_quoted(tmp_path):
    """Issue C5: `include: [/etc/passwd]` printed 1,255 bytes of that file in its error line,
    with rich turning `:x:` into an emoji."""
    secret = tmp_path / "passwd"
    secret.write_text("root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/usr/sbin:/bin/false\n")
    piece = tmp_path / "piece.yaml"
    piece.write_text(f"include: [{secret}]\nname: x\n")
    line = one_error_line(invoke("config", piece))
    assert line == f"{secret}: not a recipe (its entries are not recipe keys)"
    # A recipe's misspelt key is still named.
    typo = tmp_path / "typo.yaml"
    typo.write_text("name: x\ntrain:\n  max_updates: 5\n")
    assert one_error_line(invoke("config", typo)) == f"{typo}: unknown key 'train.max_updates'"


def test_error_lines_print_paths_as_they_are(tmp_path):
    """Issue P2: rich markup and emoji codes in a path are printed as written."""
    odd = tmp_path / "exp[seed1]:smile:"
    odd.mkdir()
    assert one_error_line(invoke("eval", odd)) == f"{odd}: not a run directory (no config.yaml)"


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", "."])
def test_a_run_name_that_leaves_runs_is_refused(tmp_path, monkeypatch, name):
    """Issue S1: `name=../../x` wrote data/, config.yaml and .lock two levels above runs/."""
    from moe_mt.config import load_config
    from moe_mt.errors import MoeMtError

    monkeypatch.chdir(tmp_path)
    recipe = Path(__file__).resolve().parent.parent / "recipes" / "demo.yaml"
    with pytest.raises(MoeMtError, match=r"a run's name is one directory name under runs/"):
        load_config(recipe, [f"name={name}"])
    line = one_error_line(invoke("prep", recipe, f"name={name}"))
    assert line.startswith(f"override: name={name!r}: ")
    assert list(tmp_path.iterdir()) == []  # nothing written anywhere
    # Elsewhere is said with run_dir.
    assert load_config(recipe, ["name=x", f"run_dir={tmp_path / 'elsewhere'}"]).name == "x"


@pytest.mark.parametrize(
    "source, expected",
    [
        (None, r"MOEMT_PLUGINS: cannot import family module {m}: No module named '{m}'$"),
        ("x = (\n", r"MOEMT_PLUGINS: family module {m}: .*{m}\.py:1: '\(' was never closed$"),
        (
            "import os\nraise RuntimeError('boom')\n",
            r"MOEMT_PLUGINS: cannot import family module {m}: .*{m}\.py:2: RuntimeError: boom$",
        ),
    ],
    ids=["missing", "syntax-error", "raises"],
)
def test_a_broken_plugin_is_one_line_naming_module_and_place(
    source, expected, tmp_path, monkeypatch
):
    """Issue 35, P1: a plugin that cannot be imported is one line, not a traceback."""
    module = f"moemt_probe_plugin_{len(expected)}"
    if source is not None:
        (tmp_path / f"{module}.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("MOEMT_PLUGINS", module)
    line = one_error_line(invoke("config", REPO / "recipes" / "demo.yaml", "model.arch"))
    assert re.match(expected.format(m=module), line), line


def test_a_mistyped_family_is_one_line_with_the_closest():
    """Issue 34, item 14: not fairseq's "invalid choice: 'swich_transformer_demo'"."""
    line = one_error_line(
        invoke("config", REPO / "recipes" / "demo.yaml", "model.arch", "model.family=swich")
    )
    assert line.startswith("override: model.family=swich is not a model family (closest: switch;")


# -- closed and broken standard streams (issue I1, I2) ---------------------------------------------

#: ``moemt translate ARGS`` with the translation replaced by a copy of each line, 1,000 times:
#: what matters here is stdin and stdout, not the model.
_FAKE_TRANSLATE = """
import sys
from moe_mt.cli.main import app
from moe_mt.workflows.export import stream

def translate_stream(cfg, lines, write, chunk_lines):
    for line in lines:
        write([line] * 1000)

stream.translate_stream = translate_stream
app(["translate", *sys.argv[1:]], prog_name="moemt")
"""


def _translate_shell(redirections: str):
    """``moemt translate recipes/demo.yaml REDIRECTIONS`` (a shell's) with the fake above."""
    import shlex
    import subprocess
    import sys

    command = (
        f"{shlex.quote(sys.executable)} -c {shlex.quote(_FAKE_TRANSLATE)} "
        f"{shlex.quote(str(REPO / 'recipes' / 'demo.yaml'))} {redirections}"
    )
    return subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, cwd=REPO, timeout=120
    )


@pytest.mark.slow  # seconds; the default run stays near 6 min (-m slow runs it)
@pytest.mark.parametrize(
    "redirections, expected",
    [
        ("<&-", "stdin is closed; the lines to translate are read from it"),
        ("</dev/null >&-", "stdout is closed; the translations are written to it"),
    ],
    ids=["stdin", "stdout"],
)
def test_translate_with_a_closed_stream_is_one_line(redirections, expected):
    """Issue I1: `moemt translate RUN <&-` (or `>&-`) ended in an AttributeError."""
    from tests.faults import own_lines

    result = _translate_shell(redirections)
    assert result.returncode == 1, result.stderr
    assert own_lines(result.stderr) == [f"error: {expected}"]


def test_translate_into_a_closed_pipe_is_silent_with_sigpipes_code():
    """Issue I2: `moemt translate RUN < big | head -n 1` ended in a BrokenPipeError and
    Python's "Exception ignored"; as `cat | head`: nothing on stderr, exit code 141."""
    import signal

    from tests.faults import own_lines

    result = _translate_shell(
        '< <(yes "Where is the station?" | head -n 20000) | head -n 1; exit "${PIPESTATUS[0]}"'
    )
    assert result.stdout == "Where is the station?\n"
    assert own_lines(result.stderr) == []
    assert result.returncode == 128 + signal.SIGPIPE


@pytest.mark.parametrize("reraised", [False, True], ids=["as-is", "re-raised-by-the-workflow"])
def test_sigterm_is_an_interrupt_with_its_own_line_and_code(monkeypatch, reraised):
    """Issue G2: SIGTERM exited 143 without a word and skipped the cleanup Ctrl-C gets. It is
    now Ctrl-C's KeyboardInterrupt (so the same cleanup runs), then one line and 143, also
    when the workflow re-raises a plain KeyboardInterrupt after its cleanup (train does)."""
    import os
    import signal
    import time

    from moe_mt.cli import ls_command
    from tests.faults import own_lines

    def stopped():
        # Unhandled, SIGTERM would end pytest itself.
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None), "not handled"
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(30)
        except KeyboardInterrupt:
            if reraised:
                raise KeyboardInterrupt from None
            raise

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setitem(ls_command.LISTINGS, "criteria", stopped)
    result = invoke("ls", "criteria")
    assert (result.exit_code, own_lines(result.stderr)) == (143, ["terminated"])
    assert signal.getsignal(signal.SIGTERM) == before  # restored after the command
