"""moemt prep on every real corpus in ../shared/data that has train/valid/test.

Two small ones run by default; the rest are marked slow (about 5-15 s each).
"""

from __future__ import annotations

import pytest

from moe_mt.config import load_config
from moe_mt.workflows.prep.pipeline import prep
from tests.conftest import REPO

CORPORA = [
    # (directory under shared/data, src, tgt, default run?)
    ("iwslt14_de_en", "de", "en", True),
    ("tatoeba_en_xx/en-ro", "en", "ro", True),
    ("multi30k_en_de", "en", "de", False),
    ("multi30k_en_fr", "en", "fr", False),
    ("tatoeba_en_xx/en-de", "en", "de", False),
    ("tatoeba_en_xx/en-es", "en", "es", False),
    ("tatoeba_en_xx/en-fr", "en", "fr", False),
    ("tatoeba_en_xx/en-nl", "en", "nl", False),
    ("tatoeba_en_xx/en-pt", "en", "pt", False),
]


@pytest.mark.parametrize(
    ("name", "src", "tgt"),
    [
        pytest.param(name, src, tgt, marks=() if default else pytest.mark.slow, id=name)
        for name, src, tgt, default in CORPORA
    ],
)
def test_prep_shared_corpus(shared_data, tmp_path, name, src, tgt):
    corpus = shared_data / name
    cfg = load_config(
        REPO / "recipes" / "demo.yaml",
        [
            f"run_dir={tmp_path / 'run'}",
            f"data.src={src}",
            f"data.tgt={tgt}",
            *(f"data.{split}={corpus / split}" for split in ("train", "valid", "test")),
            "data.spm.vocab_size=2000",
        ],
    )
    (corpus_info,) = prep(cfg).manifest["corpora"].values()
    splits = corpus_info["splits"]
    for split in ("valid", "test"):
        assert splits[split]["lines"]["kept"] == splits[split]["lines"]["raw"]
    train = splits["train"]["lines"]
    assert train["kept"] > 0.95 * train["raw"]
