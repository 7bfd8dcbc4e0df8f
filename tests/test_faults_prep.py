"""moemt prep: its bad inputs and faults, each one line on stderr, exit code 1 and no data/ that
looks complete (the good path is tests/test_prep.py).

Cases: a fatal line in any split (file:line), unequal line counts, a missing file, config errors
(unknown key, wrong type, out of range, YAML syntax), an empty valid/test split, sentencepiece
refusing the vocabulary, a second process, data that checkpoints were trained on (refused
unless --overwrite), a run_dir that is a file, a read-only run directory, a full disk.
"""

from __future__ import annotations

import errno
import json

import pytest

from moe_mt.errors import MoeMtError
from moe_mt.workflows.common.rundir import RunDir
from moe_mt.workflows.prep.pipeline import prep
from tests.faults import fail_writes, invoke, leftovers, one_error_line, small_tmpfs
from tests.test_prep import SMALL, _load, _recipe, _set_line, _write_corpus


@pytest.fixture
def corpus(tmp_path, shipped_corpus):
    return _write_corpus(tmp_path / "corpus", shipped_corpus)


def _run(*args: str) -> tuple[int, str]:
    """Exit code and, on failure, the one line (``error: ...``) that ``moemt prep`` printed."""
    result = invoke("prep", *args)
    if result.exit_code == 0:
        return 0, ""
    return result.exit_code, "error: " + one_error_line(result)


# (file, line number, replacement bytes, expected message) — each fatal for the given split.
FATAL_LINES = [
    ("valid.en", 7, b"caf\xe9 au lait", "valid.en:7: invalid UTF-8"),
    ("test.de", 12, b"Hallo\x07 Welt", "test.de:12: control character U+0007"),
    ("valid.en", 5, "a\u2028b".encode(), "valid.en:5: control character U+2028 at column 2"),
    ("train.de", 3, b"Windows line\r", "train.de:3: carriage return"),
    ("valid.de", 9, b"   ", "valid.de:9: empty line"),
    ("test.en", 4, b"x" * 3000, "test.en:4: line of 3000 characters exceeds max_line_chars=2000"),
]


@pytest.mark.parametrize(("name", "number", "content", "expected"), FATAL_LINES)
def test_fatal_line_problems_name_file_and_line(tmp_path, corpus, name, number, content, expected):
    _set_line(corpus / name, number, content)
    code, message = _run(str(_recipe(tmp_path, corpus)))
    assert code == 1
    assert message.startswith("error: ")
    assert f"{corpus}/{expected}" in message
    assert not (tmp_path / "run" / "data").exists()  # nothing half-written


def test_line_count_mismatch_names_both_files(tmp_path, corpus):
    path = corpus / "test.de"
    path.write_bytes(path.read_bytes() + b"one more line\n")
    code, message = _run(str(_recipe(tmp_path, corpus)))
    assert code == 1
    assert f"{corpus}/test.en: {SMALL} lines but {corpus}/test.de: {SMALL + 1} lines" in message


def test_missing_file(tmp_path, corpus):
    (corpus / "valid.de").unlink()
    code, message = _run(str(_recipe(tmp_path, corpus)))
    assert code == 1
    assert f"{corpus}/valid.de: no such file" in message


def test_config_errors_name_key_and_origin(tmp_path, corpus):
    recipe = _recipe(tmp_path, corpus, extra="  clean: {max_wrds: 3}\n")
    code, message = _run(str(recipe))
    assert code == 1 and f"{recipe}: unknown key 'data.clean.max_wrds'" in message

    recipe = _recipe(tmp_path, corpus)
    code, message = _run(str(recipe), "data.spm.vocab=10")
    assert code == 1 and "override: unknown key 'data.spm.vocab'" in message
    code, message = _run(str(recipe), "data.spm.vocab_size=many")
    assert code == 1 and "override: data.spm.vocab_size:" in message
    code, message = _run(str(recipe), "data.spm.vocab_size")
    assert code == 1 and "override 'data.spm.vocab_size' is not of the form key=value" in message

    recipe.write_text("name: t\ndata: {src: en}\n", encoding="utf-8")
    code, message = _run(str(recipe))
    assert code == 1 and "missing mandatory key(s): data.tgt, data.train, data.valid" in message


def test_failure_after_cleaning_leaves_no_data_dir(tmp_path, corpus):
    with pytest.raises(MoeMtError, match="Vocabulary size too high"):
        prep(_load(tmp_path, corpus, "data.spm.vocab_size=100000"))
    run = tmp_path / "run"
    assert not (run / "data").exists()
    assert [p.name for p in run.iterdir() if p.name.startswith(".data")] == []


def test_second_process_is_refused(tmp_path, corpus):
    cfg = _load(tmp_path, corpus)
    with RunDir(cfg.run_dir).locked():
        with pytest.raises(MoeMtError, match="run directory is in use by pid"):
            prep(cfg)


def test_yaml_syntax_error_names_file_line_and_column(tmp_path, corpus):
    recipe = _recipe(tmp_path, corpus)
    recipe.write_text(recipe.read_text() + "  clean: {max_words: [3\n", encoding="utf-8")
    code, message = _run(str(recipe))
    assert code == 1
    assert message.startswith(f"error: {recipe}:")
    assert "YAML syntax error: expected ',' or ']'" in message
    line = int(message.split(f"{recipe}:")[1].split(":")[0])
    assert line == len(recipe.read_text().splitlines()) + 1  # where the parser gave up


@pytest.mark.parametrize(
    ("key", "value", "bound"),
    [
        ("data.spm.vocab_size", "0", "must be at least 1"),
        ("data.clean.max_length_ratio", "0.5", "must be at least 1.0"),
        ("data.spm.character_coverage", "1.5", "must be in (0.0, 1.0]"),
        ("data.workers", "0", "must be at least 1"),
    ],
)
def test_out_of_range_values_name_the_key(tmp_path, corpus, key, value, bound):
    recipe = str(_recipe(tmp_path, corpus))
    for dry_run in ([], ["--dry-run"]):  # the plan too: the check is the config's
        code, line = _run(recipe, f"{key}={value}", *dry_run)
        assert (code, line) == (1, f"error: override: {key}={value}: {bound}")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("split", ["valid", "test"])
def test_empty_valid_or_test_split_is_refused(tmp_path, corpus, split):
    for lang in ("en", "de"):
        (corpus / f"{split}.{lang}").write_bytes(b"")
    code, message = _run(str(_recipe(tmp_path, corpus)))
    assert code == 1
    assert message == (
        f"error: {corpus}/{split}.en: empty: a valid or test split needs at least one sentence pair"
    )
    assert not (tmp_path / "run" / "data").exists()


def _trained(tmp_path, corpus) -> RunDir:
    """A prepared run with a checkpoint (its content does not matter to prep)."""
    prep(_load(tmp_path, corpus))
    run = RunDir(tmp_path / "run")
    run.checkpoints.mkdir()
    (run.checkpoints / "checkpoint_last.pt").write_bytes(b"trained on data/")
    return run


def test_data_of_a_trained_run_are_not_replaced(tmp_path, corpus):
    """Prep again with another vocabulary would make the checkpoints unloadable: refused with
    the keys that changed, unless --overwrite."""
    run = _trained(tmp_path, corpus)
    manifest = run.manifest.read_bytes()
    recipe = str(_recipe(tmp_path, corpus))
    code, message = _run(recipe, "data.spm.vocab_size=250")
    assert code == 1
    assert message.startswith(f"error: {run.data}: the checkpoints in {run.checkpoints} were")
    assert "(data.spm.vocab_size: 300 -> 250)" in message and "--overwrite" in message
    assert run.manifest.read_bytes() == manifest

    # Another input file is another change (the same config).
    with (
        open(corpus / "train.en", "a", encoding="utf-8") as out,
        open(corpus / "train.de", "a", encoding="utf-8") as out_de,
    ):
        out.write("one more sentence\n")
        out_de.write("noch ein Satz\n")
    code, message = _run(recipe)
    assert code == 1 and f"{corpus}/train.en: changed (sha256)" in message
    assert run.manifest.read_bytes() == manifest

    code, _ = _run(recipe, "data.spm.vocab_size=250", "--overwrite")
    assert code == 0
    assert json.loads(run.manifest.read_text())["config"]["spm"]["vocab_size"] == 250


def test_a_trained_runs_unreadable_manifest_does_not_let_prep_replace_its_data(tmp_path, corpus):
    """Issue R5: with manifest.json damaged, prep replaced a trained run's data with another
    vocabulary and exited 0; without a readable manifest the guard must refuse."""
    run = _trained(tmp_path, corpus)
    run.manifest.write_text("{ not json")
    vocab = (run.data / "bin" / "dict.en.txt").read_bytes()
    recipe = str(_recipe(tmp_path, corpus))
    code, message = _run(recipe, "data.spm.vocab_size=250")
    assert code == 1
    assert message == (
        f"error: {run.manifest}: missing or unreadable, and {run.checkpoints} holds checkpoints "
        "trained on these data; use --overwrite to prepare them anyway, or another run_dir"
    )
    assert (run.data / "bin" / "dict.en.txt").read_bytes() == vocab
    code, _ = _run(recipe, "data.spm.vocab_size=250", "--overwrite")
    assert code == 0


def test_a_trained_run_may_change_its_test_set(tmp_path, corpus):
    """The same data are nothing to do; another test set is not what the checkpoints were
    trained on (nor another data.test or data.zero_shot: tests/test_multilingual.py)."""
    run = _trained(tmp_path, corpus)
    assert prep(_load(tmp_path, corpus)).up_to_date
    for lang, line in (("en", "One more test."), ("de", "Noch ein Test.")):
        with open(corpus / f"test.{lang}", "a", encoding="utf-8") as out:
            out.write(line + "\n")
    result = prep(_load(tmp_path, corpus))
    assert not result.up_to_date
    assert result.manifest["corpora"]["en-de"]["splits"]["test"]["lines"]["raw"] == SMALL + 1
    assert (run.checkpoints / "checkpoint_last.pt").is_file()


def test_run_dir_that_is_a_file(tmp_path, corpus):
    (tmp_path / "run").write_text("not a directory")
    code, message = _run(str(_recipe(tmp_path, corpus)))
    assert code == 1
    assert message == f"error: run_dir={tmp_path / 'run'}: exists and is not a directory"


def test_read_only_run_directory(tmp_path, corpus, monkeypatch):
    (tmp_path / "run").mkdir()
    fail_writes(monkeypatch, tmp_path / "run", errno.EROFS)
    code, message = _run(str(_recipe(tmp_path, corpus)))
    assert code == 1
    assert message == f"error: read-only file system while writing {tmp_path / 'run' / '.lock'}"


@pytest.mark.parametrize("file", ["spm.model", "train.de"])
def test_full_disk_keeps_the_previous_data(tmp_path, corpus, monkeypatch, file):
    """A full disk while writing sentencepiece's model (it used to surface as "could not parse
    ModelProto") or the cleaned text: one line naming data/, no temporary directory left, the
    previous data/ as it was."""
    prep(_load(tmp_path, corpus))
    run = RunDir(tmp_path / "run")
    manifest = run.manifest.read_bytes()
    fail_writes(monkeypatch, run.root, errno.ENOSPC, only=lambda path: path.name == file)
    code, message = _run(str(_recipe(tmp_path, corpus)), "data.spm.vocab_size=250")
    assert code == 1
    assert message == (
        f"error: no space left on device while writing {run.data}; {run.data} is left as it was"
    )
    assert run.manifest.read_bytes() == manifest
    assert leftovers(run.root) == []


def test_full_tmpfs(tmp_path, corpus):
    """The same on a real full file system, where a tmpfs can be mounted (else skipped)."""
    with small_tmpfs(tmp_path, size="64k") as disk:
        code, message = _run(str(_recipe(tmp_path, corpus)), f"run_dir={disk / 'run'}")
        assert code == 1 and "no space left on device while writing" in message
        assert leftovers(disk) == [] and not (disk / "run" / "data").exists()


def test_interpolated_data_key_is_resolved_before_it_is_compared(tmp_path, corpus, monkeypatch):
    """``data.spm.vocab_size: ${env:MOEMT_TEST_PV}``: the manifest, its fingerprint and
    config.yaml hold the value, so PV=300 after PV=280 prepares again (it said up to date: the
    text had not changed); the text as written stays provenance (meta.unresolved)."""
    path = _recipe(tmp_path, corpus)
    text = path.read_text().replace("{vocab_size: 300}", '{vocab_size: "${env:MOEMT_TEST_PV}"}')
    path.write_text(text)
    recipe = str(path)
    run = RunDir(tmp_path / "run")
    for vocab_size in ("280", "300"):
        monkeypatch.setenv("MOEMT_TEST_PV", vocab_size)
        assert _run(recipe) == (0, "")
        manifest = json.loads(run.manifest.read_text())
        assert manifest["config"]["spm"]["vocab_size"] == int(vocab_size)
        assert manifest["unresolved"] == {"data.spm.vocab_size": "${env:MOEMT_TEST_PV}"}
        config = run.config.read_text()
        assert f"vocab_size: {vocab_size}\n" in config
        assert "data.spm.vocab_size: ${env:MOEMT_TEST_PV}" in config.partition("\nmeta:\n")[2]


# -- signals and dead workers (issues G1, G2, G3) --------------------------------------------------

#: ``moemt prep ARGS`` whose cleaning workers note their pid in MARKS, then sleep (HOW=sleep) or
#: are killed as by the OOM killer (HOW=kill): ``python -c SCRIPT MARKS HOW ARGS...``.
_PREP_WITH_WORKERS = """
import os, signal, sys, time
from pathlib import Path
# As at a terminal: a shell's background job (a test run started with `&`) inherits SIGINT
# ignored, and Python then keeps it ignored.
signal.signal(signal.SIGINT, signal.default_int_handler)
from moe_mt.cli.main import app
from moe_mt.data_prep import clean_files

def screen(*job):
    Path(sys.argv[1], str(os.getpid())).touch()
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(120)

clean_files.CHUNK_LINES = 10
clean_files._screen = screen
app(["prep", *sys.argv[3:]], prog_name="moemt")
"""


def _prep_with_workers(tmp_path, corpus, how: str, signal_to=None):
    """Run the script above with two workers; once both work, send ``signal_to(pid)``; the
    exit code, moemt's lines on stderr and the workers' pids."""
    import os
    import subprocess
    import sys
    import time

    from tests.conftest import REPO

    marks = tmp_path / "workers"
    marks.mkdir()
    args = [str(marks), how, str(_recipe(tmp_path, corpus)), "data.workers=2"]
    process = subprocess.Popen(
        [sys.executable, "-c", _PREP_WITH_WORKERS, *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        start_new_session=True,  # a process group of its own, as a terminal's job
    )
    try:
        if signal_to is not None:
            deadline = time.monotonic() + 60
            while len(list(marks.iterdir())) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            signal_to(process.pid)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, 9)
            process.wait()
    from tests.faults import own_lines

    return process.returncode, own_lines(stderr), [int(p.name) for p in marks.iterdir()]


def _gone(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.slow  # seconds; the default run stays near 6 min (-m slow runs it)
@pytest.mark.parametrize(
    "send, code, line",
    [
        ("ctrl-c", 130, "interrupted"),  # the terminal signals the whole process group
        ("sigterm", 143, "terminated"),  # `kill PID`, a scheduler's stop: the parent only
    ],
)
def test_a_signal_during_the_worker_pool_is_one_line_and_no_leftovers(
    tmp_path, corpus, send, code, line
):
    """Issues G1, G2: Ctrl-C printed two workers' tracebacks (32 lines) before "interrupted";
    SIGTERM exited 143 without a word and left .data.building.* behind."""
    import os
    import signal

    if send == "ctrl-c":
        signal_to = lambda pid: os.killpg(pid, signal.SIGINT)  # noqa: E731
    else:
        signal_to = lambda pid: os.kill(pid, signal.SIGTERM)  # noqa: E731
    exit_code, lines, workers = _prep_with_workers(tmp_path, corpus, "sleep", signal_to)
    assert (exit_code, lines) == (code, [line])
    assert len(workers) == 2 and all(_gone(pid) for pid in workers)
    assert leftovers(tmp_path / "run") == [] and not (tmp_path / "run" / "data").exists()


def test_a_killed_worker_is_one_line_naming_it_and_the_signal(tmp_path, corpus):
    """Issue G3: a worker killed with SIGKILL (the OOM killer) made prep wait for ever."""
    import re

    exit_code, lines, workers = _prep_with_workers(tmp_path, corpus, "kill")
    assert exit_code == 1 and len(lines) == 1, lines
    match = re.fullmatch(
        r"error: prep worker process (\d+) was killed by SIGKILL \(the system ran out of "
        r"memory\? lower data\.workers\); prep stopped",
        lines[0],
    )
    assert match and int(match.group(1)) in workers, lines
    assert leftovers(tmp_path / "run") == [] and not (tmp_path / "run" / "data").exists()


def test_temporaries_of_dead_processes_are_removed_by_the_next_command(tmp_path, corpus):
    """Issue G2: a command killed past its cleanup left .data.building.*, export/.ct2-*.building.*
    and checkpoints/.checkpoint_*.tmp that no later command removed. Their names hold the
    writer's pid: a dead writer's are removed by the next write there, a live one's kept."""
    import os
    import subprocess

    from moe_mt.checkpoints import atomic_torch_save

    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = os.getpid()
    run = tmp_path / "run"
    checkpoints = run / "checkpoints"
    checkpoints.mkdir(parents=True)
    for pid in (dead.pid, alive):
        (run / f".data.building.{pid}.abcd_123").mkdir()
        (run / f".data.building.{pid}.abcd_123" / "train.en").write_text("half")
        (checkpoints / f".checkpoint_last.pt.{pid}.x1y2z3w4.tmp").write_bytes(b"half")
    result = prep(_load(tmp_path, corpus))
    atomic_torch_save({"x": 1}, checkpoints / "checkpoint_best.pt")
    assert leftovers(run) == [
        f".data.building.{alive}.abcd_123",
        f"checkpoints/.checkpoint_last.pt.{alive}.x1y2z3w4.tmp",
    ]
    # The previous data/ moved aside by a writer that died before the new one was in place
    # is put back, before prep looks at it (here: up to date, the checkpoints' data).
    (run / "data").rename(run / f".data.old.{dead.pid}")
    again = prep(_load(tmp_path, corpus))
    assert again.up_to_date and again.manifest == result.manifest
    assert not (run / f".data.old.{dead.pid}").exists()
    # export/ is built by the same building_dir.
    from moe_mt.workflows.common.rundir import building_dir

    (run / "export" / f".ct2-int8.building.{dead.pid}.q9w8e7r6").mkdir(parents=True)
    with building_dir(run / "export" / "ct2-float32") as tmp:
        (tmp / "model.bin").write_bytes(b"done")
    assert sorted(p.name for p in (run / "export").iterdir()) == ["ct2-float32"]


# -- hostile archives of a downloaded corpus ------------------------------------------------------


@pytest.mark.parametrize("kind", ["tar", "zip", "gz"])
def test_an_archive_that_expands_far_beyond_its_size_is_refused(tmp_path, monkeypatch, kind):
    """A gzip bomb (32 MiB of zeros in 32 KiB; the issue's: 1 MB expanding to 1 GiB) was
    extracted until the disk was full. Refused once it passes 100 times its size; nothing left."""
    import gzip
    import zipfile

    from moe_mt.data_prep import download_extract
    from moe_mt.data_prep.download_extract import ExtractError, extract
    from tests.test_download import make_tar

    monkeypatch.setattr(download_extract, "MIN_EXPANSION_LIMIT", 1 << 20)
    zeros, member = bytes(32 << 20), "bomb.en"
    if kind == "gz":
        archive = tmp_path / "bomb.en.gz"
        archive.write_bytes(gzip.compress(zeros))
    elif kind == "tar":
        archive = make_tar(tmp_path / "bomb.tgz", {"ok.en": b"fine\n", member: zeros})
    else:
        archive = tmp_path / "bomb.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("ok.en", b"fine\n")
            zf.writestr(member, zeros)
    size = archive.stat().st_size
    assert size < 1 << 20
    with pytest.raises(ExtractError) as err:
        extract(archive, tmp_path / "out", declared_size=size)
    limit = download_extract._size(100 * size)
    assert str(err.value) == (
        f"{archive}: refusing member {member!r}: the archive expands beyond {limit} (100 times "
        f"the archive's {download_extract._size(size)}); a damaged or hostile archive"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == [archive.name]


def test_extraction_checks_the_free_space(tmp_path, monkeypatch):
    """A member larger than the free space is refused before it is written; extraction stops
    when the disk is about to fill, instead of filling it."""
    import collections
    import gzip
    import shutil

    from moe_mt.data_prep.download_extract import ExtractError, extract
    from tests.test_download import make_tar

    usage = collections.namedtuple("usage", "total used free")
    free = {"bytes": 10 << 20}
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 40, 0, free["bytes"]))
    archive = make_tar(tmp_path / "a.tgz", {"train.en": b"x" * 4096})
    with pytest.raises(ExtractError) as err:
        extract(archive, tmp_path / "out")
    assert str(err.value) == (
        f"{archive}: not enough free space in {tmp_path} to extract 'train.en': 4.0 KiB needed, "
        "10.0 MiB free"
    )
    gz = tmp_path / "b.en.gz"  # no trustworthy size before it is unpacked
    gz.write_bytes(gzip.compress(b"y" * 4096))
    with pytest.raises(ExtractError, match=r"to extract 'b\.en': 10\.0 MiB left after 4\.0 KiB$"):
        extract(gz, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tgz", "b.en.gz"]
    free["bytes"] = 1 << 30
    assert (extract(gz, tmp_path / "out") / "b.en").read_bytes() == b"y" * 4096


def test_an_interpolated_relative_path_is_relative_to_its_recipe(tmp_path, corpus, monkeypatch):
    """`data.train: ${env:...}/train` was left relative (to whatever the working directory
    was): resolved, it is relative to the recipe file that says it, as a written path is."""
    from moe_mt.config import load_config, unresolved

    path = _recipe(tmp_path, corpus)
    text = path.read_text().replace(f"train: {corpus}/train", "train: ${env:CORPUS}/train")
    path.write_text(text)
    monkeypatch.setenv("CORPUS", corpus.name)  # `corpus`, next to the recipe
    monkeypatch.chdir(corpus)
    cfg = load_config(path)
    assert cfg.data.train == str(corpus / "train")
    assert unresolved(cfg) == {"data.train": "${env:CORPUS}/train"}
