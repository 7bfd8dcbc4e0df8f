"""sentencepiece: train on the cleaned training text, encode every split into pieces."""

from __future__ import annotations

import io
from pathlib import Path

import sentencepiece as spm

from moe_mt.config import SpmConfig
from moe_mt.errors import MoeMtError

MODEL_TYPES = ("unigram", "bpe", "char", "word")


def train_spm(inputs: list[Path], model_prefix: Path, cfg: SpmConfig) -> Path:
    """Train one model on the concatenated ``inputs``; return the ``.model`` path.

    sentencepiece hands the model to Python (``model_writer``) and Python writes it, with the
    ``.vocab`` beside it (``piece<TAB>score`` as sentencepiece writes it): sentencepiece's own
    writer ignores a failed write, so a full disk left a truncated model that failed later as
    "could not parse ModelProto"; Python's write fails where it happens (``OSError``, which
    prep reports as one line naming the path).
    """
    if cfg.model_type not in MODEL_TYPES:
        raise MoeMtError(
            f"data.spm.model_type: '{cfg.model_type}' is not one of {', '.join(MODEL_TYPES)}"
        )
    # The seed of spm's sentence sampling is process-global in sentencepiece's API.
    spm.set_random_generator_seed(cfg.seed)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            input=[str(p) for p in inputs],
            model_writer=model,
            vocab_size=cfg.vocab_size,
            model_type=cfg.model_type,
            character_coverage=cfg.character_coverage,
            input_sentence_size=cfg.input_sentence_size,
            shuffle_input_sentence=True,
            # fairseq adds its own <s>, <pad>, </s>, <unk>: keep spm's specials out of the text.
            bos_id=-1,
            eos_id=-1,
            unk_id=0,
            # The same number of threads trains the same model on any machine; another number
            # trains another one (the threads' expected counts are summed in another order).
            num_threads=cfg.threads,
            minloglevel=1,  # warnings and errors only
        )
    except RuntimeError as exc:
        # spm says e.g. "Vocabulary size too high (8000). Please set it to a value <= 3612."
        raise MoeMtError(f"data.spm: sentencepiece training failed: {str(exc).strip()}") from exc
    processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
    vocab = "".join(
        f"{processor.id_to_piece(i)}\t{processor.get_score(i):g}\n"
        for i in range(processor.get_piece_size())
    )
    path = Path(f"{model_prefix}.model")  # spm.en -> spm.en.model (not with_suffix)
    path.write_bytes(model.getvalue())
    Path(f"{model_prefix}.vocab").write_text(vocab, encoding="utf-8")
    return path


class Encoder:
    """Encodes lines into space-separated pieces with one trained model, on ``threads`` threads
    (encoding a line does not depend on the others, so the output does not depend on them)."""

    def __init__(self, model: Path, threads: int = 1):
        self.processor = spm.SentencePieceProcessor(model_file=str(model))
        self.threads = threads

    def encode(self, lines: list[str]) -> list[str]:
        pieces = self.processor.encode(lines, out_type=str, num_threads=self.threads)
        return [" ".join(p) for p in pieces]

    def decode(self, pieces: list[str]) -> list[str]:
        return [self.processor.decode(p.split()) for p in pieces]
