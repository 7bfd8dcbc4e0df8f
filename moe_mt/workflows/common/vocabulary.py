"""The vocabularies a model embeds, from a run's prepared data, and whether a checkpoint's
embeddings fit them.

A checkpoint's embedding matrices have one row per dictionary entry of the data it was trained
on. Data prepared again with another vocabulary (``data.spm.vocab_size``) no longer fit: fairseq
then fails deep in ``load_state_dict`` with three size mismatches cut off at the first line.
:func:`check_fits_data` says it in one line, before anything is loaded or written (eval,
translate, distill's teacher).

A dictionary cut short is another matter: :func:`check_prepared` compares each with the entries
its manifest records (``dictionary_size``) and says the file is damaged; the binarised splits are
checked there too (:func:`.binarized.check_binarized`), before fairseq opens anything.
"""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import DictConfig

from moe_mt.errors import MoeMtError
from moe_mt.workflows.common.binarized import check_binarized, damaged
from moe_mt.workflows.common.manifest import directions, languages

#: Entries of a fairseq dictionary that its file does not list (<s>, <pad>, </s>, <unk>).
SPECIAL_SYMBOLS = 4


def check_dictionaries(bin_dir: Path) -> None:
    """Refuse a dictionary of ``bin_dir`` with another number of entries than the manifest
    beside it (``data/manifest.json``) records, or cut inside a line: it is damaged, not
    prepared again (that rewrites the manifest too). Nothing to check without a manifest."""
    try:
        manifest = json.loads((Path(bin_dir).parent / "manifest.json").read_text("utf-8"))
        recorded = dict(manifest.get("dictionary_size") or {})
    except (OSError, ValueError, TypeError, AttributeError):
        return  # read (and reported) where the manifest is read
    for lang, size in recorded.items():
        path = Path(bin_dir) / f"dict.{lang}.txt"
        if not path.is_file():
            continue  # a missing dictionary is reported where it is read
        text = path.read_bytes()
        lines = text.count(b"\n") + (not text.endswith(b"\n") and bool(text))
        if lines + SPECIAL_SYMBOLS != size:
            raise damaged(path, f"{lines} lines, the manifest records {size - SPECIAL_SYMBOLS}")
        if text and not text.endswith(b"\n"):
            raise damaged(path, "its last line is cut short")


def check_prepared(bin_dir: Path) -> None:
    """Refuse a prepared ``bin_dir`` with a damaged dictionary or binarised split (one line
    naming the file); nothing to check before prep."""
    check_dictionaries(bin_dir)
    check_binarized(bin_dir)


#: The embedding of each side in a fairseq encoder-decoder's state dict.
EMBEDDINGS = {"source": "encoder.embed_tokens.weight", "target": "decoder.embed_tokens.weight"}


def model_dictionaries(data_cfg: DictConfig, bin_dir: Path):
    """(source, target) fairseq dictionaries a model of ``data_cfg`` embeds: the prepared ones
    in ``bin_dir`` (multilingual: the joint one with the task's language tokens), or, before
    prep, a stand-in of ``data.spm.vocab_size`` symbols."""
    from fairseq.data import Dictionary

    check_prepared(bin_dir)
    if data_cfg.pairs:  # multilingual: one dictionary, with the task's language tokens
        joint = task_dictionary(data_cfg, bin_dir)
        return joint, joint
    paths = [bin_dir / f"dict.{data_cfg.src}.txt", bin_dir / f"dict.{data_cfg.tgt}.txt"]
    if all(p.is_file() for p in paths):
        src = Dictionary.load(str(paths[0]))
        tgt = src if data_cfg.joined_dictionary else Dictionary.load(str(paths[1]))
        return src, tgt
    vocab = Dictionary()
    for i in range(data_cfg.spm.vocab_size):
        vocab.add_symbol(f"w{i}")
    return vocab, vocab


def task_dictionary(data_cfg: DictConfig, bin_dir: Path):
    """The dictionary a model of ``data.pairs`` embeds: the prepared joint one (before prep, a
    stand-in of ``data.spm.vocab_size`` symbols) with the ``__<lang>__`` token of every
    language added as ``translation_multi_simple_epoch`` adds them (fairseq's
    ``augment_dictionary``, default token style)."""
    from fairseq.data import Dictionary
    from fairseq.data.multilingual.multilingual_utils import augment_dictionary

    langs = languages(directions(data_cfg))
    path = bin_dir / f"dict.{langs[0]}.txt"
    if path.is_file():
        dictionary = Dictionary.load(str(path))
    else:
        dictionary = Dictionary()
        for i in range(data_cfg.spm.vocab_size):
            dictionary.add_symbol(f"w{i}")
    augment_dictionary(dictionary, langs, lang_tok_style="multilingual")
    return dictionary


def check_fits_data(checkpoint: Path, model_state: dict, data_cfg: DictConfig, bin_dir: Path):
    """Refuse a checkpoint whose embeddings have another number of rows than the prepared
    dictionaries in ``bin_dir`` have entries, naming both sizes; nothing to check when the
    dictionaries are not there (their absence is reported where they are read)."""
    if not bin_dir.is_dir():
        return
    dictionaries = dict(zip(EMBEDDINGS, model_dictionaries(data_cfg, bin_dir), strict=True))
    mismatches = []
    for side, key in EMBEDDINGS.items():
        weight = model_state.get(key)
        if weight is not None and weight.shape[0] != len(dictionaries[side]):
            mismatches.append(
                f"{side} {weight.shape[0]} in the checkpoint, {len(dictionaries[side])} in the data"
            )
    if mismatches:
        raise MoeMtError(
            f"{checkpoint}: does not fit the data in {bin_dir} (vocabulary size: "
            f"{'; '.join(mismatches)}): the data were prepared again with another config after "
            "training; prepare them with the config the checkpoint was trained with, or train "
            "again"
        )
