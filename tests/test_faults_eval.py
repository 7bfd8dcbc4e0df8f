"""moemt eval and moemt translate: their bad inputs and faults, each one line on stderr, exit
code 1, and no report that looks complete (the good path is tests/test_eval.py and
tests/test_translate.py).

Cases: unequal line counts, a busy run directory, an unprepared split, a source without a
reference, invalid UTF-8, a direction the run does not translate, a checkpoint that does not fit
the data (prepared again since), an unloadable or malicious checkpoint, a report made from
another source under the same name, a read-only run directory, a deleted sentencepiece model.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from moe_mt.errors import MoeMtError
from moe_mt.workflows.common.rundir import RunDir
from moe_mt.workflows.evaluate.evaluation import evaluate
from tests.faults import fail_writes, invoke, one_error_line
from tests.test_eval import _cfg, _pair


@pytest.fixture(scope="module")
def run_copy(trained_demo, tmp_path_factory) -> Path:
    """One copy of the trained run shared by the tests that leave its data and checkpoints."""
    target = tmp_path_factory.mktemp("eval_faults") / "run"
    shutil.copytree(trained_demo, target)
    return target


def test_eval_line_count_mismatch_exits_1(run_copy, tmp_path):
    source, reference = _pair(tmp_path, 5, extra_reference_line=True)
    line = one_error_line(
        invoke("eval", run_copy, f"eval.source={source}", f"eval.reference={reference}")
    )
    assert str(source) in line and str(reference) in line
    assert "5 lines" in line and "6 lines" in line


def test_eval_refuses_a_busy_run_dir(run_copy):
    with RunDir(run_copy).locked():
        with pytest.raises(MoeMtError, match="in use"):
            evaluate(_cfg(run_copy))


def test_eval_input_errors(run_copy, tmp_path):
    with pytest.raises(MoeMtError, match="eval.split=train: not a prepared split"):
        evaluate(_cfg(run_copy, "eval.split=train"))
    with pytest.raises(MoeMtError, match="give both or neither"):
        evaluate(_cfg(run_copy, f"eval.source={tmp_path / 'x.en'}"))
    bad = tmp_path / "bad.en"
    bad.write_bytes(b"ok\n\xff\n")
    with pytest.raises(MoeMtError, match=r"bad.en:2: invalid UTF-8"):
        evaluate(_cfg(run_copy, f"eval.source={bad}", f"eval.reference={bad}"))
    # A single-pair run translates its own direction only (no language tokens for another).
    with pytest.raises(
        MoeMtError, match=r"^eval.directions=\['de-en'\]: this run translates en-de"
    ):
        evaluate(_cfg(run_copy, "eval.directions=[de-en]"))


@pytest.fixture(scope="module")
def reprepared(trained_demo, tmp_path_factory) -> Path:
    """A trained run whose data were prepared again with a smaller vocabulary (its dictionaries
    lost entries), so that its checkpoints no longer fit them."""
    target = tmp_path_factory.mktemp("reprepared") / "run"
    shutil.copytree(trained_demo, target)
    for lang in ("en", "de"):
        path = target / "data" / "bin" / f"dict.{lang}.txt"
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        path.write_text("".join(lines[:-100]), encoding="utf-8")
    # As prep writes them: the manifest records the smaller dictionaries (not damaged ones).
    manifest_path = target / "data" / "manifest.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    manifest["dictionary_size"] = {lang: n - 100 for lang, n in manifest["dictionary_size"].items()}
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    return target


def _vocabulary_line(run_dir: Path) -> str:
    checkpoint = run_dir / "checkpoints" / "checkpoint_last.pt"
    # fairseq's dictionaries: 4 special symbols, then one line per entry.
    src, tgt = (
        len((run_dir / "data" / "bin" / f"dict.{lang}.txt").read_text().splitlines()) + 4
        for lang in ("en", "de")
    )
    return (
        f"{checkpoint}: does not fit the data in {run_dir / 'data' / 'bin'} (vocabulary size: "
        f"source {src + 100} in the checkpoint, {src} in the data; target {tgt + 100} in the "
        f"checkpoint, {tgt} in the data): the data were prepared again with another config "
        "after training; prepare them with the config the checkpoint was trained with, or train "
        "again"
    )


def test_checkpoint_that_does_not_fit_the_data(reprepared):
    """It used to fail inside fairseq's load_state_dict, its message cut off at the first of
    three size mismatches."""
    assert one_error_line(invoke("eval", reprepared)) == _vocabulary_line(reprepared)
    assert not (reprepared / "eval").exists()
    result = invoke("translate", reprepared, input="Hello.\n")
    assert one_error_line(result) == _vocabulary_line(reprepared)


class _Payload:
    """A pickle that runs code when loaded without weights_only: it creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_and_damaged_checkpoints_are_not_loaded(run_copy, tmp_path):
    """Refused without torch's advice to load them with weights_only=False (which would run
    the payload), and without running anything."""
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _Payload(marker)}, evil)
    line = one_error_line(invoke("eval", run_copy, f"eval.checkpoint={evil}"))
    assert line == (
        f"{evil}: not a loadable checkpoint: it holds the global posix.system, which a safe "
        "load refuses (nothing in the file was run)"
    )
    assert not marker.exists()

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    truncated = tmp_path / "truncated.pt"
    last = run_copy / "checkpoints" / "checkpoint_last.pt"
    truncated.write_bytes(last.read_bytes()[:1000])
    for path in (garbage, truncated):
        line = one_error_line(invoke("eval", run_copy, f"eval.checkpoint={path}"))
        assert line.startswith(f"{path}: not a loadable checkpoint: ")
        assert "damaged" in line and "weights_only" not in line


def _test_set(folder: Path, lines: int) -> tuple[Path, Path]:
    """``folder/test.en`` and ``folder/test.de``: ``lines`` lines of the shipped test set."""
    source, reference = _pair(folder, lines)
    return source.rename(folder / "test.en"), reference.rename(folder / "test.de")


def test_two_sources_of_the_same_file_name_keep_their_reports(run_copy, tmp_path):
    """``iwslt17/test.en`` then ``flores200/test.en`` both landed in eval/test.en/, the second
    replacing the first's report; now each has its own name, and where names still collide a
    report of another source is not replaced unless eval.name says so."""
    first, first_ref = _test_set(tmp_path / "iwslt17", 3)
    second, second_ref = _test_set(tmp_path / "flores200", 4)
    for source, reference in ((first, first_ref), (second, second_ref)):
        result = evaluate(
            _cfg(run_copy, "eval.beam=1", f"eval.source={source}", f"eval.reference={reference}")
        )
        assert result.out_dir == run_copy / "eval" / f"{source.parent.name}_test.en"
    assert (run_copy / "eval" / "iwslt17_test.en" / "report.json").is_file()

    # Another folder of the same name: the same default name, another source.
    other, other_ref = _test_set(tmp_path / "elsewhere" / "iwslt17", 5)
    report = run_copy / "eval" / "iwslt17_test.en" / "report.json"
    before = report.read_bytes()
    args = ["eval.beam=1", f"eval.source={other}", f"eval.reference={other_ref}"]
    line = one_error_line(invoke("eval", run_copy, *args))
    assert line.startswith(f"{report}: made from another source ({first}, sha256 ")
    assert line.endswith(
        f"not {other}; give eval.name=NAME to keep both, or eval.name=iwslt17_test.en to replace it"
    )
    assert report.read_bytes() == before
    result = evaluate(_cfg(run_copy, *args, "eval.name=iwslt17_test.en"))  # said so: replaced
    assert result.report["lines"] == 5


def test_read_only_run_directory(run_copy, monkeypatch):
    fail_writes(monkeypatch, run_copy, errno.EROFS)
    line = one_error_line(invoke("eval", run_copy, "eval.beam=1"))
    assert line == f"read-only file system while writing {run_copy / '.lock'}"


def test_run_dir_that_is_a_file(run_copy, tmp_path):
    path = tmp_path / "file"
    path.write_text("not a run")
    line = one_error_line(invoke("eval", run_copy, f"run_dir={path}"))
    assert line == f"run_dir={path}: exists and is not a directory"


def test_a_deleted_sentencepiece_model_is_one_line_and_prep_rebuilds_it(trained_demo, tmp_path):
    """Issue R2: a deleted data/spm.model was sentencepiece's `RuntimeError: NOT_FOUND` in eval
    and translate, and prep called the data up to date."""
    from moe_mt.workflows.prep.pipeline import prep

    run = tmp_path / "run"
    shutil.copytree(trained_demo, run)
    model = run / "data" / "spm.model"
    model.unlink()
    line = one_error_line(invoke("eval", run))
    assert line == f"{model}: missing from the prepared data; run `moemt prep` again"
    assert not (run / "eval").exists()
    # The same config and inputs: prep rebuilds the same data (the checkpoints still fit).
    result = prep(_cfg(run))
    assert not result.up_to_date and model.is_file()
    assert (
        result.manifest["fingerprint"]
        == json.loads((trained_demo / "data" / "manifest.json").read_text())["fingerprint"]
    )


def _cut(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.parametrize(
    "suffix",
    [".bin", pytest.param(".idx", marks=pytest.mark.slow)],  # the .idx: -m slow, 7 s
)
def test_a_truncated_binarised_split_is_one_line(trained_demo, tmp_path, suffix):
    """Issue R1: a data/bin/*.bin or *.idx cut short ended in fairseq's ValueError (and for the
    index an "Exception ignored in __del__" traceback); now one line naming the file, before
    fairseq opens it (eval, translate, and train's model check)."""
    run = tmp_path / "run"
    shutil.copytree(trained_demo, run)
    path = run / "data" / "bin" / f"valid.en-de.en{suffix}"
    size = path.stat().st_size
    _cut(path, size // 2)
    line = one_error_line(invoke("eval", run, "eval.beam=1"))
    assert line.startswith(f"{path} is damaged ({size // 2} bytes; ")
    assert line.endswith("): prepare the data again (`moemt prep`)")
    assert not (run / "eval").exists()
    assert one_error_line(invoke("translate", run, input="Hello.\n")) == line
    result = invoke("train", run / "config.yaml", f"run_dir={run}", "--dry-run")
    assert one_error_line(result) == line
    # and `moemt prep`, as the line advises, rebuilds the damaged data (not "up to date")
    prepped = invoke("prep", run / "config.yaml", f"run_dir={run}")
    assert prepped.exit_code == 0, prepped.output
    assert "up to date" not in prepped.output and path.stat().st_size == size


def test_a_truncated_dictionary_is_damaged_not_prepared_again(trained_demo, tmp_path):
    """Issue R3: a dictionary cut short was blamed on a re-prep with another config; the
    manifest records its entries, so it is called damaged."""
    run = tmp_path / "run"
    shutil.copytree(trained_demo, run)
    path = run / "data" / "bin" / "dict.en.txt"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[:-100]), encoding="utf-8")
    kept, recorded = len(lines) - 100, len(lines)
    expected = (
        f"{path} is damaged ({kept} lines, the manifest records {recorded}): prepare the data "
        "again (`moemt prep`)"
    )
    assert one_error_line(invoke("eval", run, "eval.beam=1")) == expected
    assert one_error_line(invoke("translate", run, input="Hello.\n")) == expected
    # Cut inside its last line: the same count of lines, the last one without its count.
    path.write_text("".join(lines)[:-3], encoding="utf-8")
    line = one_error_line(invoke("eval", run, "eval.beam=1"))
    assert line == (
        f"{path} is damaged (its last line is cut short): prepare the data again (`moemt prep`)"
    )


@pytest.mark.parametrize("key", ["languages", "files"])
def test_a_manifest_of_another_shape_is_one_line(trained_demo, tmp_path, key):
    """Issue R6: a manifest without its languages or files ended in ``KeyError: 'languages'``
    (eval) or ``KeyError: 'files'`` (translate)."""
    run = tmp_path / "run"
    shutil.copytree(trained_demo, run)
    path = run / "data" / "manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    del manifest[key]
    path.write_text(json.dumps(manifest), encoding="utf-8")
    expected = (
        f"{path}: not a manifest of prepared data (no key '{key}'); run `moemt prep` on this "
        "config again"
    )
    assert one_error_line(invoke("eval", run, "eval.beam=1")) == expected
    assert one_error_line(invoke("translate", run, input="Hello.\n")) == expected


def test_a_data_override_of_the_test_set_is_refused(run_copy, tmp_path):
    """Issue E1: ``moemt eval RUN data.test=other/test`` scored the prepared test set, the
    override neither used nor mentioned; eval.source/eval.reference score other files."""
    other = tmp_path / "other" / "test"
    line = one_error_line(invoke("eval", run_copy, f"data.test={other}"))
    assert line.startswith("data.test: ")
    assert line.endswith(
        f" -> '{other}': eval scores the test sets prepared in {run_copy / 'data'}, not data.*; "
        "to score other files give eval.source=FILE eval.reference=FILE (or translate them with "
        "`moemt translate`), to prepare others run `moemt prep`"
    )


@pytest.fixture(scope="module")
def exported_run(trained_demo, tmp_path_factory):
    """A copy of the trained run, its export made (float32), and the config that made it."""
    from moe_mt.workflows.export.exporter import export

    run = tmp_path_factory.mktemp("export_faults") / "run"
    shutil.copytree(trained_demo, run)
    cfg = _cfg(run, "eval.beam=1")
    return run, cfg, export(cfg)


def _load_export(out: Path):
    from moe_mt.workflows.export.ct2_translator import Ct2Translator
    from moe_mt.workflows.translate.translator import DecodeOptions

    info = json.loads((out / "export.json").read_text(encoding="utf-8"))
    return Ct2Translator.load(out, info, DecodeOptions(beam=1), ("en", "de"), threads=1)


def test_a_truncated_export_model_is_rebuilt_not_reused(exported_run):
    """Issue X1: a model.bin cut short was "reused (same inputs)", then CTranslate2 failed with
    a RuntimeError; export.json records every file's size, checked at reuse and at load."""
    from moe_mt.workflows.export.exporter import export

    run, cfg, first = exported_run
    model = first.out_dir / "model.bin"
    size = model.stat().st_size
    assert first.info["files"]["model.bin"] == size
    _cut(model, size // 2)
    with pytest.raises(MoeMtError) as refused:
        _load_export(first.out_dir)
    assert str(refused.value) == (
        f"{first.out_dir}: damaged export (model.bin: {size // 2} bytes, export.json records "
        f"{size}); export it again (`moemt export`)"
    )
    again = export(cfg)
    assert not again.reused and model.stat().st_size == size
    assert export(cfg).reused
    _cut(model, size // 2)  # eval and translate with the export rebuild it (ensure_export)
    result = invoke("translate", run, "eval.beam=1", "--engine", "ctranslate2", input="Hi.\n")
    assert result.exit_code == 0, result.output
    assert model.stat().st_size == size


def test_an_export_naming_files_outside_it_is_refused(exported_run, tmp_path):
    """Issue X3: export.json naming ``../../outside.model``, or spm.model a link to
    /etc/passwd, made translate open a file outside the export."""
    from moe_mt.workflows.export.exporter import export

    run, cfg, first = exported_run
    out = first.out_dir
    info_path = out / "export.json"
    info = json.loads(info_path.read_text(encoding="utf-8"))
    info["spm"] = {lang: "../../outside.model" for lang in info["spm"]}
    info_path.write_text(json.dumps(info), encoding="utf-8")
    with pytest.raises(MoeMtError) as refused:
        _load_export(out)
    assert str(refused.value) == (
        f"{out}: damaged export (export.json names '../../outside.model', not a file of the "
        "export directory); export it again (`moemt export`)"
    )
    assert not export(cfg).reused  # rebuilt: its own names again
    spm = out / "spm.model"
    spm.unlink()
    spm.symlink_to("/etc/passwd")
    with pytest.raises(MoeMtError) as refused:
        _load_export(out)
    assert str(refused.value) == (
        f"{out}: damaged export (spm.model is a link; an export holds its own files); export it "
        "again (`moemt export`)"
    )
    rebuilt = export(cfg)
    assert not rebuilt.reused and not spm.is_symlink() and spm.is_file()
