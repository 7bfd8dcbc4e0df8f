"""Parameter and FLOP summary of the model a config trains (``moemt train --dry-run`` prints it).

The model is built exactly as ``moemt train`` builds it (the config's fairseq arguments, the
architecture's defaults), with the run's prepared dictionaries when they exist, else a joined
dictionary of ``data.spm.vocab_size`` symbols (plus fairseq's 4 specials). Parameters are counted
here, from the modules, not by fairseq (whose encoder layers would count unused copies, see
:mod:`moe_mt.models.transformer`); shared tensors (tied embeddings) count once.

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

from pathlib import Path

from omegaconf import DictConfig
from rich.table import Table
from torch import nn

from moe_mt.errors import MoeMtError
from moe_mt.workflows.common.rundir import RunDir
from moe_mt.workflows.train.fairseq_args import train_args

SENTENCE_TOKENS = 32


def build_model(cfg: DictConfig):
    """The fairseq model ``moemt train`` would train for ``cfg`` (randomly initialised)."""
    import moe_mt

    moe_mt.register()
    from fairseq import options
    from fairseq.models import ARCH_MODEL_REGISTRY

    run_dir = RunDir(cfg.run_dir)
    args = options.parse_args_and_arch(options.get_training_parser(), train_args(cfg, run_dir))
    src_dict, tgt_dict = _dictionaries(cfg, Path(run_dir.data) / "bin")
    task = _DictTask(src_dict, tgt_dict)
    return ARCH_MODEL_REGISTRY[args.arch].build_model(args, task)


class _DictTask:
    """What ``TransformerModel.build_model`` reads from a task: its two dictionaries."""

    def __init__(self, src_dict, tgt_dict) -> None:
        self.source_dictionary, self.target_dictionary = src_dict, tgt_dict


def _dictionaries(cfg: DictConfig, bin_dir: Path):
    from fairseq.data import Dictionary

    if cfg.data.pairs:  # multilingual: one dictionary, with the task's language tokens
        from moe_mt.workflows.prep.corpora import task_dictionary

        joint = task_dictionary(cfg.data, bin_dir)
        return joint, joint
    paths = [bin_dir / f"dict.{cfg.data.src}.txt", bin_dir / f"dict.{cfg.data.tgt}.txt"]
    if all(p.is_file() for p in paths):
        src = Dictionary.load(str(paths[0]))
        tgt = src if cfg.data.joined_dictionary else Dictionary.load(str(paths[1]))
        return src, tgt
    vocab = Dictionary()
    for i in range(cfg.data.spm.vocab_size):
        vocab.add_symbol(f"w{i}")
    return vocab, vocab


def model_summary(cfg: DictConfig, sentence_tokens: int = SENTENCE_TOKENS) -> dict:
    """Parameters and forward FLOPs per token of ``cfg``'s model (see the module docstring)."""
    try:
        model = build_model(cfg)
    except ValueError as exc:  # an option the architecture refuses (e.g. heads not dividing d)
        raise MoeMtError(f"model: {exc}") from exc
    return summarize(model, cfg.model.arch, sentence_tokens)


def summarize(model: nn.Module, arch: str, sentence_tokens: int = SENTENCE_TOKENS) -> dict:
    """The summary dict of a built model."""
    counter = _Counter(sentence_tokens)
    encoder = counter.macs(model.encoder)
    decoder = counter.macs(model.decoder)
    parameters = _count(model.parameters())
    return {
        "arch": arch,
        "parameters": parameters,
        "active_parameters": parameters - counter.inactive,
        "expert_parameters": counter.experts,
        "projection_parameters": counter.projections,
        "moe_layers": counter.moe_layers,
        "encoder_flops": 2 * encoder,
        "decoder_flops": 2 * decoder,
        "flops_per_token": 2 * (encoder + decoder),
        "sentence_tokens": sentence_tokens,
    }


def _count(parameters) -> int:
    seen, total = set(), 0
    for p in parameters:
        if id(p) not in seen and not p.is_meta:
            seen.add(id(p))
            total += p.numel()
    return total


class _Counter:
    """Walks a module tree: MACs per token, and expert / inactive / projection parameters."""

    def __init__(self, sentence_tokens: int) -> None:
        self.sentence_tokens = sentence_tokens
        self.experts = self.inactive = self.projections = self.moe_layers = 0

    def macs(self, module: nn.Module) -> int:
        from moe_mt.models.mhmoe import MultiHeadMoE
        from moe_mt.models.soft_moe import SoftMoEFeedForward
        from moe_mt.moe import MoEFeedForward

        if isinstance(module, MultiHeadMoE):
            self.moe_layers += 1
            d, h = module.d_model, module.heads
            self.projections += _count(
                [*module.multi_head.parameters(), *module.merge.parameters()]
            )
            reach = min(module.num_experts, h * module.moe.router.k)
            return 2 * d * d + h * self._topk(module.moe, reach)
        if isinstance(module, SoftMoEFeedForward):
            self.moe_layers += 1
            return self._soft(module)
        if isinstance(module, MoEFeedForward):
            self.moe_layers += 1
            return self._topk(module, module.router.k)
        if isinstance(module, nn.Linear):
            return 0 if module.weight.is_meta else module.weight.numel()
        return sum(self.macs(child) for child in module.children())

    def _topk(self, block, reach: int) -> int:
        """MACs of one routed row (token or sub-token); books the unreachable experts."""
        bank, k = block.experts, block.router.k
        per_expert = _count(bank.parameters()) // bank.num_experts
        self.experts += per_expert * bank.num_experts
        self.inactive += per_expert * (bank.num_experts - reach)
        router = self._router_macs(block.router)
        return router + k * (bank.d_model * bank.d_ff + bank.d_ff * bank.d_out)

    @staticmethod
    def _router_macs(router) -> int:
        return sum(p.numel() for p in router.parameters() if p.dim() == 2)

    def _soft(self, block) -> int:
        bank, router = block.experts, block.router
        self.experts += _count(bank.parameters())
        slots = router.num_experts * router.slots_per_expert
        expert = bank.d_model * bank.d_ff + bank.d_ff * bank.d_out
        routing = slots * (2 * bank.d_model + bank.d_out)  # logits, dispatch, combine
        return routing + round(slots * expert / self.sentence_tokens)


def _millions(n: int) -> str:
    return f"{n / 1e6:,.2f}M"


def summary_table(summary: dict) -> Table:
    """A rich table of :func:`model_summary`'s dict."""
    table = Table(title=summary["arch"])
    table.add_column("parameters, forward FLOPs")
    table.add_column("value", justify="right")
    rows = [
        ("parameters", _millions(summary["parameters"])),
        ("active parameters per token", _millions(summary["active_parameters"])),
        ("expert parameters", _millions(summary["expert_parameters"])),
        ("MH-MoE projections (2 d^2 + 2 d / layer)", _millions(summary["projection_parameters"])),
        ("MoE layers", str(summary["moe_layers"])),
        ("encoder MFLOPs per source token", f"{summary['encoder_flops'] / 1e6:,.2f}"),
        ("decoder MFLOPs per target token", f"{summary['decoder_flops'] / 1e6:,.2f}"),
        ("MFLOPs per token pair (2 x MACs)", f"{summary['flops_per_token'] / 1e6:,.2f}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    table.caption = (
        "forward, weight matmuls only (no attention scores); "
        f"Soft MoE at {summary['sentence_tokens']} tokens per sentence"
    )
    return table
