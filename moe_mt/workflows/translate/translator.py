"""Translate text with a trained run: subwords in (sentencepiece, or data.subword's BPE), fairseq
beam search, text out.

:class:`Translator` loads a checkpoint of a run directory with its task (the dictionaries of
``data/bin``) and the run's sentencepiece model(s) (``data/manifest.json``), and translates a
list of lines. Lines are batched by fairseq's own inference dataset and batch sampler (sorted by
length, bounded by ``max_tokens`` and ``batch_size``); hypotheses come back in input order. Beam
search is fairseq's ``SequenceGenerator``, built by ``task.build_generator``.

Empty (or blank) input lines give empty output lines without reaching the model; a source
longer than the model's positions is cut to fit (and counted in ``Translations.truncated``).

Multilingual runs (``translation_multi_simple_epoch``) translate one direction at a time: the
task, set up for that direction, prefixes the source with its language token and forces the
target language token as the decoder's first token; every language token is stripped from the
output (:meth:`Translator._language_tokens`);
:meth:`Translator.for_direction` gives the same loaded models another direction.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

import moe_mt
from moe_mt.checkpoints import load_state, state_num_updates
from moe_mt.config import load_config
from moe_mt.data_prep.segmentation import load_segmenter
from moe_mt.errors import MoeMtError
from moe_mt.models.transformer import BETTERTRANSFORMER_PARAMS
from moe_mt.workflows.common.manifest import read_manifest, trained_directions
from moe_mt.workflows.common.rundir import RunDir
from moe_mt.workflows.common.vocabulary import check_fits_data


@dataclass(frozen=True)
class DecodeOptions:
    """Beam search and batching (the decoding keys of ``EvalConfig``)."""

    beam: int = 5
    lenpen: float = 1.0
    max_len_a: float = 1.2  # hypotheses are at most max_len_a * source length + max_len_b
    max_len_b: int = 10
    no_repeat_ngram_size: int = 0
    max_tokens: int | None = 6000  # source tokens per batch (padding included)
    batch_size: int | None = None  # sentences per batch

    @classmethod
    def from_config(cls, eval_cfg: DictConfig) -> DecodeOptions:
        options = cls(**{name: eval_cfg[name] for name in cls.__dataclass_fields__})
        options.check()
        return options

    def check(self) -> None:
        if self.beam < 1:
            raise MoeMtError(f"eval.beam must be at least 1, not {self.beam}")
        if self.max_tokens is None and self.batch_size is None:
            raise MoeMtError("eval.max_tokens or eval.batch_size must be set")
        if self.max_len_a == 0 and self.max_len_b < 1:  # negatives: the config's bounds
            # fairseq's generator asserts a length limit of at least one token.
            raise MoeMtError(
                f"eval.max_len_a={self.max_len_a}, eval.max_len_b={self.max_len_b}: the length "
                "limit max_len_a * source length + max_len_b must allow at least 1 token"
            )
        for key in ("max_tokens", "batch_size"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise MoeMtError(f"eval.{key} must be at least 1, not {value}")

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Translations:
    """Hypotheses in input order, with the counts behind the speed figures."""

    hypotheses: list[str]
    seconds: float  # encoding + beam search + decoding, model loading excluded
    source_tokens: int  # subword tokens fed to the encoder (EOS included)
    generated_tokens: int  # subword tokens of the best hypotheses (EOS included, as fairseq)
    truncated: int  # sources cut to the model's maximum source positions

    @property
    def sentences_per_second(self) -> float:
        return len(self.hypotheses) / self.seconds if self.seconds > 0 else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0


def count_parameters(model: torch.nn.Module) -> int:
    """Trainable weights of ``model``: each shared tensor once, BetterTransformer copies not."""
    from fairseq.modules.transformer_layer import TransformerEncoderLayerBase

    copies = {
        id(getattr(module, name))
        for module in model.modules()
        if isinstance(module, TransformerEncoderLayerBase)
        for name in BETTERTRANSFORMER_PARAMS
        if isinstance(getattr(module, name, None), torch.nn.Parameter)
    }
    return sum(p.numel() for p in model.parameters() if id(p) not in copies)


class Translator:
    """A loaded model (or ensemble), its task, the sentencepiece models and decoding options."""

    def __init__(
        self, models, task, options: DecodeOptions, spm_src, spm_tgt, num_updates: int, arch=None
    ):
        self.models = models
        self.task = task
        self.options = options
        self.spm_src = spm_src
        self.spm_tgt = spm_tgt
        self.num_updates = num_updates
        self.arch = arch
        self.generator = task.build_generator(models, _generation_config(options))
        from fairseq import utils

        self.max_positions = utils.resolve_max_positions(
            task.max_positions(), *[m.max_positions() for m in models]
        )

    @classmethod
    def load(
        cls,
        run_dir: str | Path,
        checkpoint: str | Path,
        options: DecodeOptions,
        model_overrides: dict | None = None,
        direction: tuple[str, str] | None = None,
    ):
        """Load ``checkpoint`` with the task, dictionaries and spm model(s) of ``run_dir``;
        ``model_overrides`` replace model args of the checkpoint
        (:func:`moe_mt.models.families.eval_overrides`).
        Multilingual runs translate ``direction`` (``(src, tgt)``; default: the first trained)."""
        moe_mt.register()
        from fairseq import checkpoint_utils

        run = RunDir(run_dir)
        manifest = read_manifest(run.manifest)
        bin_dir = run.data / manifest["files"]["bin"]
        # The checkpoint names the data-bin it was trained on; read this run's (a copied or
        # moved run directory keeps working).
        overrides = {**(model_overrides or {}), "data": str(bin_dir)}
        first = trained_directions(manifest)[0]
        src, tgt = direction or (first.src, first.tgt)
        if manifest.get("multilingual"):
            check_languages(manifest["languages"]["langs"], src, tgt)
            # A source and target language set the task up for inference in that direction.
            overrides.update(source_lang=src, target_lang=tgt)
        elif (src, tgt) != (first.src, first.tgt):
            raise MoeMtError(f"{src}-{tgt}: this run translates {first} only (no data.pairs)")
        state = load_state(checkpoint, overrides)
        check_fits_data(Path(checkpoint), state["model"], load_config(run.root).data, bin_dir)
        try:
            models, model_cfg, task = checkpoint_utils.load_model_ensemble_and_task(
                [str(checkpoint)], arg_overrides=overrides, state=state
            )
        except (RuntimeError, KeyError, FileNotFoundError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise MoeMtError(f"{checkpoint}: cannot load model with {bin_dir}: {first}") from exc
        num_updates = state_num_updates(state)
        del state
        on_gpu = torch.cuda.is_available()  # decode where fairseq's trainer trains
        for model in models:
            model.eval()
            model.make_generation_fast_(beamable_mm_beam_size=options.beam, need_attn=False)
            if on_gpu:
                model.cuda()
        spm_src, spm_tgt = (
            load_segmenter(run.data, manifest["files"], lang) for lang in (src, tgt)
        )
        arch = getattr(model_cfg.model, "arch", None) or getattr(model_cfg.model, "_name", None)
        return cls(models, task, options, spm_src, spm_tgt, num_updates, arch)

    @property
    def multilingual(self) -> bool:
        from fairseq.tasks.translation_multi_simple_epoch import TranslationMultiSimpleEpochTask

        return isinstance(self.task, TranslationMultiSimpleEpochTask)

    @property
    def direction(self) -> tuple[str, str]:
        """``(src, tgt)``: what this translator translates."""
        # fairseq's multilingual task keeps its options in ``args``, the translation task in
        # ``cfg``.
        options = self.task.args if self.multilingual else self.task.cfg
        return options.source_lang, options.target_lang

    def for_direction(self, src: str, tgt: str) -> Translator:
        """The same models and options translating ``src`` -> ``tgt``: this translator for its
        own direction; for multilingual runs the task (language tokens) and generator are set
        up again for another one, the models shared."""
        if (src, tgt) == self.direction:
            return self
        if not self.multilingual:
            here = "-".join(self.direction)
            raise MoeMtError(f"{src}-{tgt}: this run translates {here} only (no data.pairs)")
        from fairseq import tasks

        check_languages(self.task.langs, src, tgt)
        args = copy.deepcopy(self.task.args)  # the task keeps (and reads) its own Namespace
        args.source_lang, args.target_lang = src, tgt
        return Translator(
            self.models,
            tasks.setup_task(args),
            self.options,
            self.spm_src,
            self.spm_tgt,
            self.num_updates,
            self.arch,
        )

    def _language_tokens(self) -> set[int]:
        """The ``__<lang>__`` ids of a multilingual run: never text. The generator strips the
        forced target token only; an undertrained model can emit another one mid-sentence."""
        if not self.multilingual:
            return set()
        from fairseq.data.multilingual.multilingual_utils import get_lang_tok

        style = self.task.args.lang_tok_style
        tgt_dict = self.task.target_dictionary
        return {tgt_dict.index(get_lang_tok(lang, style)) for lang in self.task.langs}

    @property
    def num_parameters(self) -> int:
        return sum(count_parameters(m) for m in self.models)

    def translate(
        self, lines: Sequence[str], on_batch: Callable[[int], None] | None = None
    ) -> Translations:
        """Translate ``lines`` (no newlines); ``on_batch(n)`` after each batch of n lines."""
        started = time.perf_counter()
        hypotheses = [""] * len(lines)
        ids, tokens, truncated = self._encode(lines)
        if len(ids) < len(lines) and on_batch is not None:
            on_batch(len(lines) - len(ids))  # blank lines: done already
        generated = 0
        if ids:
            dataset = self.task.build_dataset_for_inference(tokens, [t.numel() for t in tokens])
            batches = self.task.get_batch_iterator(
                dataset=dataset,
                max_tokens=self.options.max_tokens,
                max_sentences=self.options.batch_size,
                max_positions=self.max_positions,
                ignore_invalid_inputs=False,
                disable_iterator_cache=True,
            )
            with warnings.catch_warnings():
                # fairseq's iterator asks for pinned memory, which CPU-only torch warns about.
                warnings.filterwarnings("ignore", message=".*pin_memory.*")
                batches = batches.next_epoch_itr(shuffle=False)
            strip = set(getattr(self.generator, "symbols_to_strip_from_output", None) or ())
            strip |= self._language_tokens()
            tgt_dict = self.task.target_dictionary
            from fairseq.utils import move_to_cuda

            on_gpu = any(p.is_cuda for m in self.models for p in m.parameters())
            for batch in batches:
                if on_gpu:
                    batch = move_to_cuda(batch)
                results = self.task.inference_step(self.generator, self.models, batch)
                for index, hypos in zip(batch["id"].tolist(), results, strict=True):
                    best = hypos[0]["tokens"]
                    generated += best.numel()
                    pieces = tgt_dict.string(best.int().cpu(), extra_symbols_to_ignore=strip)
                    hypotheses[ids[index]] = self.spm_tgt.decode(pieces.split())
                if on_batch is not None:
                    on_batch(len(results))
        return Translations(
            hypotheses=hypotheses,
            seconds=time.perf_counter() - started,
            source_tokens=sum(t.numel() for t in tokens),
            generated_tokens=generated,
            truncated=truncated,
        )

    def _encode(self, lines: Sequence[str]):
        """Token tensors of the non-blank lines, their line numbers, and how many were cut."""
        src_dict = self.task.source_dictionary
        limit = self.max_positions[0] if isinstance(self.max_positions, tuple) else None
        if limit is not None and self.multilingual and self.task.args.langtoks["main"][0]:
            limit -= 1  # the task prepends the encoder's language token after this cut
        ids, texts = [], []
        for number, line in enumerate(lines):
            if line.strip():
                ids.append(number)
                texts.append(line)
        tokens, truncated = [], 0
        for pieces in self.spm_src.encode(texts, out_type=str):
            encoded = src_dict.encode_line(
                " ".join(pieces), add_if_not_exist=False, append_eos=True
            ).long()
            if limit is not None and encoded.numel() > limit:
                encoded = torch.cat([encoded[: limit - 1], encoded[-1:]])
                truncated += 1
            tokens.append(encoded)
        longest = max((t.numel() for t in tokens), default=0)
        if self.options.max_tokens is not None and longest > self.options.max_tokens:
            raise MoeMtError(
                f"eval.max_tokens={self.options.max_tokens} is less than the longest source "
                f"({longest} tokens); raise it"
            )
        return ids, tokens, truncated


def check_languages(known, src: str, tgt: str) -> None:
    for lang in (src, tgt):
        if lang not in known:
            raise MoeMtError(
                f"{src}-{tgt}: language '{lang}' is not one of the run's ({', '.join(known)})"
            )


def _generation_config(options: DecodeOptions):
    from fairseq.dataclass.configs import GenerationConfig

    return GenerationConfig(
        beam=options.beam,
        lenpen=options.lenpen,
        max_len_a=options.max_len_a,
        max_len_b=options.max_len_b,
        no_repeat_ngram_size=options.no_repeat_ngram_size,
    )
