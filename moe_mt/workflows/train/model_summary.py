"""Parameter and FLOP summary of the model a config trains (``moemt train --dry-run`` prints it).

The model is built exactly as ``moemt train`` builds it (the config's fairseq arguments, the
architecture's defaults), with the run's prepared dictionaries when they exist, else a joined
dictionary of ``data.spm.vocab_size`` symbols (plus fairseq's 4 specials). Parameters are counted
here, from the modules, not by fairseq (whose encoder layers would count unused copies, see
:mod:`moe_mt.models.transformer`); shared tensors (tied embeddings) count once.

Every MoE block is counted by the counter its model file registers
(:mod:`moe_mt.models.families`; the formulas below are those of the built-in families' counters,
in their model files); a module that holds experts or parameters of its own and that nothing
counts is an error, never a silent zero.

Counts:

- ``parameters``: every trained parameter.
- ``expert_parameters``: the weights and biases of every expert bank.
- ``active_parameters``: those one token's forward pass uses: everything but the experts a token
  cannot reach. Top-k layers (Switch, X-MoE): ``k`` of the ``E`` experts; MH-MoE: ``k`` per
  sub-token, so at most ``min(E, h k)`` experts per token, plus the two ``d x d`` projections
  (``2 d^2 + 2 d`` per layer, counted in full); Soft MoE: all experts (every token feeds every
  slot).
- ``projection_parameters``: MH-MoE's multi-head and merge projections (0 elsewhere).

Forward FLOPs per token, ``flops_per_token = 2 * MACs`` (a multiply-accumulate is 2 FLOPs),
with MACs the multiply-accumulates of the weight matrices one token goes through:

- every ``nn.Linear`` ``in x out`` applied to the token: ``in * out`` (attention projections,
  dense FFN, the output projection over the vocabulary, MH-MoE's ``2 d^2``);
- top-k MoE FFN: router (``d E``; cosine: ``d r + r E``) + ``k (d f + f d)``;
- MH-MoE FFN: ``2 d^2`` + ``h`` sub-tokens x (router on ``d / h`` + ``k`` experts
  ``(d/h) f' + f' (d/h)``), ``f' = f / k`` by default: ``2 d^2 + d E + 2 d f`` for top-k;
- Soft MoE FFN, for sentences of ``n`` tokens (``sentence_tokens``, default 32): logits,
  dispatch and combine ``3 E s d`` + the experts' slots shared by the sentence's tokens
  ``(E s / n) (d f + f d)``.

Not counted: attention scores and weighted sums (``2 n d`` per token and attention layer,
length-dependent), embeddings lookups, biases, layer norms, softmaxes. ``encoder_flops`` is per
source token, ``decoder_flops`` per target token (with its output projection),
``flops_per_token`` their sum: a source and a target token of the same sentence pair.
"""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import DictConfig
from rich.table import Table
from torch import nn

from moe_mt.errors import MoeMtError
from moe_mt.models import families
from moe_mt.models.families import parameter_count
from moe_mt.workflows.common.rundir import RunDir
from moe_mt.workflows.common.vocabulary import model_dictionaries
from moe_mt.workflows.train.fairseq_args import train_args

SENTENCE_TOKENS = 32


def build_model(cfg: DictConfig):
    """The fairseq model ``moemt train`` would train for ``cfg`` (randomly initialised).

    Raises:
        MoeMtError: ``model: ...``, an option the layers refuse when built (moemt's
            ``ValueError``, fairseq's ``assert``: attention heads not dividing the width).
    """
    import moe_mt

    moe_mt.register()
    from fairseq import options
    from fairseq.models import ARCH_MODEL_REGISTRY

    run_dir = RunDir(cfg.run_dir)
    args = options.parse_args_and_arch(options.get_training_parser(), train_args(cfg, run_dir))
    src_dict, tgt_dict = model_dictionaries(cfg.data, Path(run_dir.data) / "bin")
    task = _DictTask(src_dict, tgt_dict)
    try:
        return ARCH_MODEL_REGISTRY[args.arch].build_model(args, task)
    except ValueError as exc:
        raise MoeMtError(f"model: {_recipe_keys(str(exc))}") from exc
    except AssertionError as exc:  # fairseq's modules check their options with assert
        raise MoeMtError(f"model: {exc or 'an option fairseq refuses (assertion)'}") from exc


def _recipe_keys(message: str) -> str:
    """The layers name their options as fairseq does (``moe_top_k=9``); say the recipe's key
    (``model.moe.top_k=9``), the one the user set."""
    return re.sub(r"\bmoe_(\w+)=", r"model.moe.\1=", message)


class _DictTask:
    """What ``TransformerModel.build_model`` reads from a task: its two dictionaries."""

    def __init__(self, src_dict, tgt_dict) -> None:
        self.source_dictionary, self.target_dictionary = src_dict, tgt_dict


def model_summary(cfg: DictConfig, sentence_tokens: int = SENTENCE_TOKENS) -> dict:
    """Parameters and forward FLOPs per token of ``cfg``'s model (see the module docstring)."""
    return summarize(build_model(cfg), cfg.model.arch, sentence_tokens)


def summarize(model: nn.Module, arch: str, sentence_tokens: int = SENTENCE_TOKENS) -> dict:
    """The summary dict of a built model.

    Raises:
        MoeMtError: a module that holds experts, or parameters of its own, that no registered
            family counts (:func:`_refuse_unknown`).
    """
    tally = _Tally(sentence_tokens)
    encoder = tally.macs(model.encoder)
    decoder = tally.macs(model.decoder)
    parameters = parameter_count(model.parameters())
    return {
        "arch": arch,
        "parameters": parameters,
        "active_parameters": parameters - tally.inactive,
        "expert_parameters": tally.experts,
        "projection_parameters": tally.projections,
        "moe_layers": tally.moe_layers,
        "encoder_flops": 2 * encoder,
        "decoder_flops": 2 * decoder,
        "flops_per_token": 2 * (encoder + decoder),
        "sentence_tokens": sentence_tokens,
    }


#: Modules with parameters but no multiply-accumulate per token that counts (lookups, norms).
NO_MACS = (nn.Embedding, nn.LayerNorm)


class _Tally:
    """Walks a module tree: MACs per token, and expert / inactive / projection parameters.

    An MoE block is counted by its registered counter
    (:func:`moe_mt.models.families.block_counter`), an ``nn.Linear`` as ``in x out``; anything
    else is a container whose children are walked.
    """

    def __init__(self, sentence_tokens: int) -> None:
        self.sentence_tokens = sentence_tokens
        self.experts = self.inactive = self.projections = self.moe_layers = 0

    def macs(self, module: nn.Module) -> int:
        counter = families.block_counter(type(module))
        if counter is not None:
            count = counter(module, self.sentence_tokens)
            self.moe_layers += 1
            self.experts += count.expert_parameters
            self.inactive += count.inactive_parameters
            self.projections += count.projection_parameters
            return count.macs
        if isinstance(module, nn.Linear):
            return 0 if module.weight.is_meta else module.weight.numel()
        _refuse_unknown(module)
        return sum(self.macs(child) for child in module.children())


def _refuse_unknown(module: nn.Module) -> None:
    """A module that no family counts may only be a container (its children are counted) or
    a lookup / norm: one holding an expert bank or other parameters of its own would count 0."""
    from moe_mt.moe import ExpertBank

    holds_experts = isinstance(module, ExpertBank) or any(
        isinstance(child, ExpertBank) for child in module.children()
    )
    own = any(p is not None for p in module._parameters.values())
    if holds_experts or (own and not isinstance(module, NO_MACS)):
        cls = type(module)
        what = "holds experts" if holds_experts else "has parameters of its own"
        raise MoeMtError(
            f"model summary: block {cls.__module__}.{cls.__qualname__} {what} but nothing "
            "counts it: register a counter for it with "
            "moe_mt.models.families.register_counter (see docs/extending.md)"
        )


def _millions(n: int) -> str:
    return f"{n / 1e6:,.2f}M"


def summary_table(summary: dict) -> Table:
    """A rich table of :func:`model_summary`'s dict."""
    table = Table(title=summary["arch"])
    table.add_column("parameters, forward FLOPs")
    table.add_column("value", justify="right")
    moe = summary["moe_layers"] > 0  # a dense model shows no MoE rows
    rows = [
        ("parameters", _millions(summary["parameters"])),
        ("active parameters per token", _millions(summary["active_parameters"])),
        *([("expert parameters", _millions(summary["expert_parameters"]))] if moe else []),
        *(
            [
                (
                    "MH-MoE projections (2 d^2 + 2 d / layer)",
                    _millions(summary["projection_parameters"]),
                )
            ]
            if summary["projection_parameters"]
            else []
        ),
        *([("MoE layers", str(summary["moe_layers"]))] if moe else []),
        ("encoder MFLOPs per source token", f"{summary['encoder_flops'] / 1e6:,.2f}"),
        ("decoder MFLOPs per target token", f"{summary['decoder_flops'] / 1e6:,.2f}"),
        ("MFLOPs per token pair (2 x MACs)", f"{summary['flops_per_token'] / 1e6:,.2f}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    table.caption = "forward, weight matmuls only (no attention scores)" + (
        f"; Soft MoE at {summary['sentence_tokens']} tokens per sentence" if moe else ""
    )
    return table
