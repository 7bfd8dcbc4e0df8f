"""The vocabularies a model embeds, from a run's prepared data, and whether a checkpoint's
embeddings fit them.

A checkpoint's embedding matrices have one row per dictionary entry of the data it was trained
on. Data prepared again with another vocabulary (``data.spm.vocab_size``) no longer fit: fairseq
then fails deep in ``load_state_dict`` with three size mismatches cut off at the first line.
:func:`check_fits_data` says it in one line, before anything is loaded or written (eval,
translate, distill's teacher).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from moe_mt.errors import MoeMtError
from moe_mt.workflows.common.manifest import directions, languages

#: The embedding of each side in a fairseq encoder-decoder's state dict.
EMBEDDINGS = {"source": "encoder.embed_tokens.weight", "target": "decoder.embed_tokens.weight"}


def model_dictionaries(data_cfg: DictConfig, bin_dir: Path):
    """(source, target) fairseq dictionaries a model of ``data_cfg`` embeds: the prepared ones
    in ``bin_dir`` (multilingual: the joint one with the task's language tokens), or, before
    prep, a stand-in of ``data.spm.vocab_size`` symbols."""
    from fairseq.data import Dictionary

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
