"""Downloads, checksums, extraction and corpus building against a local HTTP server (127.0.0.1).

The fixture archives are generated in tmp directories; the server can cut the connection
mid-body, ignore Range requests, or serve changed bytes.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import os
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from moe_mt.data_prep import download as dl
from moe_mt.data_prep.download import (
    ChecksumError,
    DownloadError,
    download,
    fetch_corpus,
    resolve_sacrebleu,
)
from moe_mt.data_prep.download_extract import MARKER, ExtractError, extract
from moe_mt.data_prep.source_text import iter_sgml, iter_tags
from moe_mt.data_prep.sources import (
    Archive,
    Format,
    Holdout,
    Part,
    SacrebleuPart,
    Source,
    get_source,
    list_sources,
    register_source,
    unregister_source,
)

FAST = {"timeout": 5.0, "retries": 3, "backoff": 0.0}


# --------------------------------------------------------------------------------------------
# The local server
# --------------------------------------------------------------------------------------------


class Server:
    """Serves ``files`` (path -> bytes); ``mode`` per path: normal, cut_first, cut_always,
    ignore_range. ``requests`` logs (path, Range header)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.modes: dict[str, str] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                with server.lock:
                    server.requests.append((self.path, self.headers.get("Range")))
                    count = sum(1 for p, _ in server.requests if p == self.path)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                mode = server.modes.get(self.path, "normal")
                rng = self.headers.get("Range")
                start = 0
                if rng and mode != "ignore_range":
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(body):
                        self.send_error(416, "Range Not Satisfiable")
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                payload = body[start:]
                if mode == "cut_always" or (mode == "cut_first" and count == 1):
                    self.wfile.write(payload[: len(payload) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def add(self, path: str, body: bytes, mode: str = "normal") -> str:
        self.files[path] = body
        self.modes[path] = mode
        return self.base + path

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


BODY = bytes(range(256)) * 800  # 200 KiB, several read chunks


# --------------------------------------------------------------------------------------------
# download()
# --------------------------------------------------------------------------------------------


def test_download_verifies_and_is_a_noop_the_second_time(server, tmp_path):
    url = server.add("/a.bin", BODY)
    dest = tmp_path / "a.bin"
    assert download(url, dest, sha(BODY), progress=False, **FAST) == dest
    assert dest.read_bytes() == BODY
    assert not (tmp_path / "a.bin.part").exists()
    download(url, dest, sha(BODY), progress=False, **FAST)
    assert len(server.requests) == 1


def test_resume_after_a_cut_connection(server, tmp_path):
    url = server.add("/cut.bin", BODY, mode="cut_first")
    dest = tmp_path / "cut.bin"
    download(url, dest, sha(BODY), progress=False, **FAST)
    assert dest.read_bytes() == BODY
    (first, range0), (second, range1) = server.requests
    assert range0 is None
    assert range1 == f"bytes={len(BODY) // 2}-"


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    url = server.add("/norange.bin", BODY, mode="ignore_range")
    dest = tmp_path / "norange.bin"
    (tmp_path / "norange.bin.part").write_bytes(b"stale bytes that must not survive")
    download(url, dest, sha(BODY), progress=False, **FAST)
    assert dest.read_bytes() == BODY
    assert server.requests[0][1] == "bytes=33-"


def test_part_longer_than_the_file_restarts(server, tmp_path):
    url = server.add("/long.bin", BODY)
    dest = tmp_path / "long.bin"
    (tmp_path / "long.bin.part").write_bytes(BODY + b"extra")
    download(url, dest, sha(BODY), progress=False, **FAST)
    assert dest.read_bytes() == BODY
    assert [r for _, r in server.requests] == [f"bytes={len(BODY) + 5}-", None]


def test_a_download_in_progress_elsewhere_is_refused(server, tmp_path):
    import fcntl

    url = server.add("/locked.bin", BODY)
    dest = tmp_path / "locked.bin"
    with open(tmp_path / "locked.bin.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        with pytest.raises(DownloadError, match="in use by another process"):
            download(url, dest, progress=False, **FAST)
    assert download(url, dest, progress=False, **FAST).read_bytes() == BODY


def test_checksum_mismatch_names_file_and_both_hashes(server, tmp_path):
    url = server.add("/bad.bin", BODY)
    dest = tmp_path / "bad.bin"
    wrong = "0" * 64
    with pytest.raises(ChecksumError) as err:
        download(url, dest, wrong, progress=False, **FAST)
    message = str(err.value)
    assert "\n" not in message
    assert "bad.bin" in message and wrong in message and sha(BODY) in message
    assert not dest.exists() and not (tmp_path / "bad.bin.part").exists()
    assert (tmp_path / "bad.bin.bad").read_bytes() == BODY


def test_http_error_and_exhausted_retries_are_one_line_naming_the_url(server, tmp_path):
    with pytest.raises(DownloadError, match=r"HTTP 404") as err:
        download(server.base + "/missing", tmp_path / "m", progress=False, **FAST)
    assert server.base + "/missing" in str(err.value) and "\n" not in str(err.value)
    url = server.add("/always.bin", BODY, mode="cut_always")
    with pytest.raises(DownloadError, match="connection cut") as err:
        download(url, tmp_path / "always.bin", progress=False, **FAST)
    assert url in str(err.value) and not (tmp_path / "always.bin").exists()
    assert len([p for p, _ in server.requests if p == "/always.bin"]) == FAST["retries"] + 1


# --------------------------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------------------------


def make_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize("maker, name", [(make_tar, "a.tar.gz"), (make_zip, "a.zip")])
def test_extract_all_then_noop(tmp_path, maker, name):
    archive = maker(tmp_path / name, {"d/x.txt": b"x\n", "d/sub/y.txt": b"y\n"})
    dest = extract(archive, tmp_path / "out")
    assert (dest / "d/x.txt").read_bytes() == b"x\n"
    assert (dest / "d/sub/y.txt").read_bytes() == b"y\n"
    stamp = (dest / MARKER).stat().st_mtime_ns
    archive.unlink()  # a no-op must not even open the archive
    extract(archive, dest)
    assert (dest / MARKER).stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if ".extracting-" in p.name]


def test_extract_selected_members_adds_missing_ones(tmp_path):
    archive = make_tar(tmp_path / "a.tgz", {"a": b"1", "b": b"2", "c": b"3"})
    dest = extract(archive, tmp_path / "out", ["a"])
    assert sorted(p.name for p in dest.iterdir() if p.name != MARKER) == ["a"]
    extract(archive, dest, ["b"])
    assert json.loads((dest / MARKER).read_text())["members"] == ["a", "b"]
    with pytest.raises(ExtractError, match="no member 'zz'"):
        extract(archive, dest, ["zz"])


@pytest.mark.parametrize("maker, name", [(make_tar, "evil.tar.gz"), (make_zip, "evil.zip")])
@pytest.mark.parametrize("member", ["../escape.txt", "/abs/escape.txt", "ok/../../escape.txt"])
def test_extract_refuses_path_traversal(tmp_path, maker, name, member):
    archive = maker(tmp_path / name, {"fine.txt": b"ok", member: b"evil"})
    with pytest.raises(ExtractError, match="escapes the target directory") as err:
        extract(archive, tmp_path / "root" / "out")
    assert name in str(err.value)
    assert not (tmp_path / "root" / "out").exists()
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "root/escape.txt").exists()


def test_extract_refuses_links(tmp_path):
    path = tmp_path / "link.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("link")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(ExtractError, match="not a regular file"):
        extract(path, tmp_path / "out")


def test_extract_gz_single_file(tmp_path):
    path = tmp_path / "one.en.gz"
    path.write_bytes(gzip.compress(b"hello\n"))
    assert (extract(path, tmp_path / "out") / "one.en").read_bytes() == b"hello\n"


# --------------------------------------------------------------------------------------------
# text formats
# --------------------------------------------------------------------------------------------

SGM = """<srcset setid="newstest" srclang="any">
<doc sysid="ref" docid="1" genre="news" origlang="en">
<p>
<seg id="1">  Hello   world. </seg>
<seg id="2">It’s &amp; done.</seg>
</p>
</doc>
</srcset>
"""


def test_sgml_extraction_matches_sacrebleu(tmp_path):
    from sacrebleu.dataset.fake_sgml import FakeSGMLDataset

    src = tmp_path / "t.sgm"
    src.write_text(SGM, encoding="utf-8")
    theirs = tmp_path / "t.txt"
    FakeSGMLDataset._convert_format(FakeSGMLDataset.__new__(FakeSGMLDataset), str(src), str(theirs))
    assert list(iter_sgml(src)) == theirs.read_text(encoding="utf-8").splitlines()
    assert list(iter_sgml(src)) == ["Hello world.", "It’s &amp; done."]


def test_tags_drop_and_strip(tmp_path):
    path = tmp_path / "train.tags.de-en.en"
    path.write_text(
        "<url>http://ted</url>\n<talkid>1</talkid>\n<title>A title</title>\n"
        " plain line \n<description>About</description>\nx\u2028y\r\n",
        encoding="utf-8",
    )
    lines = list(iter_tags(path, ("url", "talkid"), ("title", "description")))
    assert lines == ["A title", "plain line", "About", "x y"]


# --------------------------------------------------------------------------------------------
# fetch_corpus
# --------------------------------------------------------------------------------------------


def lines(n: int, lang: str, tag: str) -> bytes:
    return "".join(f"{tag} {lang} {i}\n" for i in range(1, n + 1)).encode()


def sgm(lang: str, n: int = 3) -> bytes:
    segs = "".join(f'<seg id="{i}"> test {lang} ’{i}’ </seg>\n' for i in range(1, n + 1))
    return f'<refset>\n<doc docid="d">\n{segs}</doc>\n</refset>\n'.encode()


@pytest.fixture
def fake_source(server, tmp_path):
    """A source with a two-part train (tgz + zip), a sampled valid, an SGML test and a split
    made of one plain file per language without published checksum."""
    tgz = make_tar(
        tmp_path / "c.tgz",
        {
            "c/train1.en": lines(5, "en", "a"),
            "c/train1.de": lines(5, "de", "a"),
            "c/test.en.sgm": sgm("en"),
            "c/test.de.sgm": sgm("de"),
            "c/unused": b"not extracted",
        },
    )
    zp = make_zip(
        tmp_path / "m.zip", {"train2.en": lines(4, "en", "b"), "train2.de": lines(4, "de", "b")}
    )
    tgz_archive = Archive(
        (server.add("/c.tgz", tgz.read_bytes()),), "c.tgz", sha(tgz.read_bytes()), "test"
    )
    zip_archive = Archive(
        (server.add("/m.zip", zp.read_bytes()),), "m.zip", sha(zp.read_bytes()), "t"
    )
    plain = {
        lang: Archive(
            (server.add(f"/dev2.{lang}", lines(2, lang, "p")),), f"dev2.{lang}", None, "test: TOFU"
        )
        for lang in ("en", "de")
    }
    source = Source(
        name="fake_en_de",
        description="test",
        languages=("en", "de"),
        splits={
            "train": [
                Part(tgz_archive, {"en": "c/train1.en", "de": "c/train1.de"}),
                Part(zip_archive, {"en": "train2.en", "de": "train2.de"}),
            ],
            "test": [
                Part(
                    tgz_archive,
                    {"en": "c/test.en.sgm", "de": "c/test.de.sgm"},
                    format=Format.SGML,
                    replacements=(("\u2019", "'"),),
                )
            ],
            "dev2": [Part(plain, {"en": "", "de": ""})],
        },
        holdouts=(Holdout("valid", "train", every=3),),
        license="test",
    )
    register_source(source)
    yield source
    unregister_source(source.name)


def test_fetch_corpus_end_to_end_then_noop(server, tmp_path, fake_source):
    cache = tmp_path / "cache"
    corpus = fetch_corpus("fake_en_de", cache, progress=False, **FAST)
    read = {
        s: {lang: p.read_text().splitlines() for lang, p in f.items()}
        for s, f in corpus.files.items()
    }
    everything = [f"a en {i}" for i in range(1, 6)] + [f"b en {i}" for i in range(1, 5)]
    assert read["valid"]["en"] == everything[2::3]  # lines 3, 6, 9 (awk's NR % 3 == 0)
    assert read["train"]["en"] == [x for i, x in enumerate(everything, 1) if i % 3]
    assert read["train"]["de"] == [x.replace(" en ", " de ") for x in read["train"]["en"]]
    assert read["test"]["de"] == [f"test de '{i}'" for i in range(1, 4)]
    assert read["dev2"]["en"] == ["p en 1", "p en 2"]
    assert corpus.lines == {"train": 6, "test": 3, "dev2": 2, "valid": 3}
    assert set(corpus.unverified) == {"dev2.en", "dev2.de"}
    records = json.loads((cache / "checksums.json").read_text())
    assert records["dev2.en"]["verified"] is False
    assert records["dev2.en"]["sha256"] == sha(lines(2, "en", "p"))
    assert not (cache / "extracted" / "c.tgz" / "c" / "unused").exists()
    assert not list(corpus.directory.glob("*.tmp"))

    before = len(server.requests)
    stamps = {p: p.stat().st_mtime_ns for p in corpus.directory.iterdir()}
    again = fetch_corpus("fake_en_de", cache, progress=False, **FAST)
    assert again == corpus
    assert len(server.requests) == before
    assert {p: p.stat().st_mtime_ns for p in corpus.directory.iterdir()} == stamps


def test_first_use_checksum_is_enforced_later(server, tmp_path, fake_source):
    cache = tmp_path / "cache"
    fetch_corpus(fake_source, cache, progress=False, **FAST)
    server.files["/dev2.en"] = b"changed upstream\np\n"
    (cache / "downloads" / "dev2.en").unlink()
    (cache / "downloads" / "dev2.en.sha256").unlink()
    (cache / "corpora" / "fake_en_de" / ".moemt-corpus.json").unlink()
    with pytest.raises(ChecksumError, match="dev2.en.*recorded on first use"):
        fetch_corpus(fake_source, cache, progress=False, **FAST)
    assert not (cache / "downloads" / "dev2.en").exists()


def test_misaligned_part_is_an_error_and_leaves_no_output(server, tmp_path):
    tgz = make_tar(tmp_path / "x.tgz", {"x.en": lines(3, "en", "x"), "x.de": lines(2, "de", "x")})
    archive = Archive(
        (server.add("/x.tgz", tgz.read_bytes()),), "x.tgz", sha(tgz.read_bytes()), "t"
    )
    source = Source(
        "misaligned",
        "t",
        ("en", "de"),
        {"train": [Part(archive, {"en": "x.en", "de": "x.de"})]},
        "t",
    )
    with pytest.raises(DownloadError, match="not line-aligned") as err:
        fetch_corpus(source, tmp_path / "cache", progress=False, **FAST)
    assert "x.en" in str(err.value) and "x.de" in str(err.value)
    out = tmp_path / "cache" / "corpora" / "misaligned"
    assert sorted(p.name for p in out.iterdir()) == []


def test_sacrebleu_part_uses_sacrebleus_registry(server, tmp_path, monkeypatch):
    part = resolve_sacrebleu(SacrebleuPart("wmt14/full", "en-de"))
    assert part.archive.urls == ("https://statmt.org/wmt14/test-full.tgz",)
    assert part.archive.md5 == "a8cd784e006feb32ac6f3d9ec7eb389a"
    assert part.members == {
        "en": "test-full/newstest2014-deen-src.en.sgm",
        "de": "test-full/newstest2014-deen-ref.de.sgm",
    }

    from sacrebleu.dataset import DATASETS

    tgz = make_tar(tmp_path / "t.tgz", {"t/src.en.sgm": sgm("en"), "t/ref.de.sgm": sgm("de")})
    body = tgz.read_bytes()

    class Fake:
        data = [server.add("/sb/test.tgz", body)]
        md5 = [hashlib.md5(body).hexdigest()]
        langpairs = {"en-de": ["t/src.en.sgm", "t/ref.de.sgm"]}

    monkeypatch.setitem(DATASETS, "fake/test", Fake)
    source = Source("sb", "t", ("en", "de"), {"test": [SacrebleuPart("fake/test", "en-de")]}, "t")
    corpus = fetch_corpus(source, tmp_path / "cache", progress=False, **FAST)
    assert corpus.files["test"]["en"].read_text().splitlines()[0] == "test en ’1’"
    assert corpus.unverified == ()

    Fake.md5 = ["0" * 32]
    monkeypatch.setattr(dl, "_load_checksums", lambda cache: {})
    with pytest.raises(ChecksumError, match="expected md5 0{32}"):
        fetch_corpus(
            Source("sb2", "t", ("en", "de"), {"test": [SacrebleuPart("fake/test", "en-de")]}, "t"),
            tmp_path / "cache2",
            progress=False,
            **FAST,
        )


def test_outputs_are_written_atomically(tmp_path, server, fake_source, monkeypatch):
    """A failure half-way leaves neither the outputs nor the marker."""
    real = dl._member_files
    calls = {"n": 0}

    def flaky(part, *args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise DownloadError("simulated failure")
        return real(part, *args)

    monkeypatch.setattr(dl, "_member_files", flaky)
    with pytest.raises(DownloadError, match="simulated"):
        fetch_corpus(fake_source, tmp_path / "cache", progress=False, **FAST)
    out = tmp_path / "cache" / "corpora" / "fake_en_de"
    assert os.listdir(out) == []


# --------------------------------------------------------------------------------------------
# Registry entries on fixture archives with the real layout
# --------------------------------------------------------------------------------------------


def served_copy(source: Source, server: Server, bodies: dict[str, bytes]) -> Source:
    """``source`` with each archive served locally from ``bodies[filename]``."""

    def local(archive: Archive) -> Archive:
        body = bodies[archive.filename]
        url = server.add("/" + archive.filename, body)
        return dataclasses.replace(archive, urls=(url,), sha256=sha(body), md5=None)

    def part(p):
        if isinstance(p.archive, dict):
            return dataclasses.replace(p, archive={k: local(a) for k, a in p.archive.items()})
        return dataclasses.replace(p, archive=local(p.archive))

    splits = {split: [part(p) for p in parts] for split, parts in source.splits.items()}
    return dataclasses.replace(source, splits=splits)


def iwslt_xml(stem: str, lang: str, n: int) -> bytes:
    segs = "".join(f'<seg id="{i}"> {stem} {lang} {i} it’s </seg>\n' for i in range(1, n + 1))
    return f'<mteval>\n<refset>\n<doc docid="1">\n<talkid>1</talkid>\n{segs}</doc>\n'.encode()


def train_tags(lang: str, n: int) -> bytes:
    head = "<url>http://www.ted.com/x</url>\n<keywords>k</keywords>\n<talkid>7</talkid>\n"
    head += f"<title>Title {lang}</title>\n<description>About {lang}</description>\n"
    return (head + "".join(f"line {lang} {i}\n" for i in range(1, n + 1))).encode()


def test_iwslt14_entry_on_a_fixture_archive(server, tmp_path):
    stems = ["TED.dev2010", "TEDX.dev2012", "TED.tst2010", "TED.tst2011", "TED.tst2012"]
    members = {}
    for lang in ("de", "en"):
        members[f"de-en/train.tags.de-en.{lang}"] = train_tags(lang, 44)
        for stem in stems:
            members[f"de-en/IWSLT14.{stem}.de-en.{lang}.xml"] = iwslt_xml(stem, lang, 2)
    tgz = make_tar(tmp_path / "iwslt14.tgz", members)
    source = served_copy(
        get_source("iwslt14_de_en"), server, {"iwslt14-de-en.tgz": tgz.read_bytes()}
    )
    corpus = fetch_corpus(source, tmp_path / "cache", progress=False, **FAST)
    en = {split: corpus.files[split]["en"].read_text().splitlines() for split in corpus.files}
    extracted = ["Title en", "About en"] + [f"line en {i}" for i in range(1, 45)]  # 46 lines
    assert en["valid"] == [extracted[22], extracted[45]]  # NR % 23 == 0
    assert en["train"] == [x for i, x in enumerate(extracted, 1) if i % 23]
    assert en["test"] == [f"{stem} en {i} it's" for stem in stems for i in (1, 2)]
    assert corpus.lowercase and corpus.unverified == ()
    de = corpus.files["train"]["de"].read_text().splitlines()
    assert de == [x.replace(" en", " de") for x in en["train"]]


def test_iwslt17_entry_on_a_fixture_archive(server, tmp_path):
    members = {}
    for lang in ("en", "de"):
        tags = train_tags(lang, 3).decode()
        head = "<doc docid='1'>\n<speaker>S</speaker>\n<reviewer href='r'>R</reviewer>\n"
        tags = f"{head}{tags}</doc>\n"
        members[f"en-de/train.tags.en-de.{lang}"] = tags.encode()
        members[f"en-de/IWSLT17.TED.dev2010.en-de.{lang}.xml"] = iwslt_xml("dev2010", lang, 2)
        for year in range(2010, 2016):
            stem = f"tst{year}"
            members[f"en-de/IWSLT17.TED.{stem}.en-de.{lang}.xml"] = iwslt_xml(stem, lang, 1)
    tgz = make_tar(tmp_path / "iwslt17.tgz", members)
    source = served_copy(
        get_source("iwslt17_en_de"), server, {"iwslt17-en-de.tgz": tgz.read_bytes()}
    )
    corpus = fetch_corpus(source, tmp_path / "cache", progress=False, **FAST)
    read = {s: corpus.files[s]["de"].read_text().splitlines() for s in corpus.files}
    assert read["train"] == ["Title de", "About de", "line de 1", "line de 2", "line de 3"]
    assert read["valid"] == ["dev2010 de 1 it’s", "dev2010 de 2 it’s"]
    assert read["test"] == [f"tst{year} de 1 it’s" for year in range(2010, 2016)]
    assert corpus.lines == {"train": 5, "valid": 2, "test": 6}


def fixture_bodies(source: Source, tmp_path: Path) -> tuple[Source, dict[str, bytes], dict]:
    """Archives with ``source``'s declared layout, 2 sentences per member; the expected counts."""
    resolved = {
        split: [resolve_sacrebleu(p) if isinstance(p, SacrebleuPart) else p for p in parts]
        for split, parts in source.splits.items()
    }
    archives: dict[str, Archive] = {}
    members: dict[str, dict[str, bytes]] = {}
    for split, parts in resolved.items():
        for part in parts:
            for lang in source.languages:
                archive = part.archive_for(lang)
                body = sgm(lang, 2) if part.format is Format.SGML else lines(2, lang, split)
                if part.members[lang].endswith(".gz") or archive.kind == "gz":
                    body = gzip.compress(body)
                archives[archive.filename] = archive
                members.setdefault(archive.filename, {})[part.members[lang]] = body
    bodies = {}
    for filename, content in members.items():
        path = tmp_path / filename
        if archives[filename].kind == "tar":
            make_tar(path, content)
        elif archives[filename].kind == "zip":
            make_zip(path, content)
        else:
            (body,) = content.values()
            path.write_bytes(body)
        bodies[filename] = path.read_bytes()
    counts = {split: 2 * len(parts) for split, parts in resolved.items()}
    for holdout in source.holdouts:
        counts[holdout.split] = counts[holdout.from_split] // holdout.every
        counts[holdout.from_split] -= counts[holdout.split]
    return dataclasses.replace(source, splits=resolved), bodies, counts


@pytest.mark.parametrize("name", [s.name for s in list_sources()])
def test_every_registry_entry_builds_from_archives_of_its_layout(server, tmp_path, name):
    source, bodies, counts = fixture_bodies(get_source(name), tmp_path)
    local = served_copy(source, server, bodies)
    corpus = fetch_corpus(local, tmp_path / "cache", progress=False, **FAST)
    assert corpus.lines == counts
    for split, files in corpus.files.items():
        sizes = [len(p.read_text().splitlines()) for p in files.values()]
        assert sizes == [counts[split]] * 2
