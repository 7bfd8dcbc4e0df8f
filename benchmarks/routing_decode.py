"""What a routed model's MoE layers see in teacher forcing against beam search (X-MoE diagnosis).

For a trained run (Switch or X-MoE) this measures, on a prepared split:

- ``teacher``: the references teacher-forced in eval mode, in batches of ``--max-tokens`` as
  training builds them, once without capacity (eval, as ``moemt eval``) and once with the
  training capacity factor (the drop pattern of training): token nll, EOS nll, the nll of the
  tokens training would drop, with and without their FFN, and the dropped share per position;
- ``decode``: beam search variants (beam, n-gram blocking, the training capacity factor at
  decoding): BLEU, chrF2, hypothesis/reference length, and the gap between the beam's own token
  scores (incremental decoding) and a full forward pass over the same hypotheses;
- router statistics per decoder MoE layer for reference prefixes (teacher forcing), for the
  beam's own steps (incremental) and for the finished hypotheses re-run by a full forward pass:
  combine weight ``g`` (quantiles), router entropy, experts' load; for the cosine router also the
  top-1 cosine, the top-1 - top-2 margin and the norm of the projection ``W x`` before its L2
  normalisation.

    flock /tmp/moemt-cpu.lock .venv/bin/python benchmarks/routing_decode.py runs/demo_xmoe
    .venv/bin/python benchmarks/routing_decode.py RUN --limit 200 --variants beam5-ngram3 beam1

Prints one JSON object (``--out`` also writes it).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

VARIANTS = {
    # name: (beam, no_repeat_ngram_size, eval capacity factor: None = as trained for eval)
    "beam5-ngram3": (5, 3, None),
    "beam5": (5, 0, None),
    "beam1": (1, 0, None),
    "beam5-ngram3-cap1.25": (5, 3, 1.25),
}


class RouterTap:
    """Per-token router statistics of the decoder's MoE layers, gathered by forward hooks."""

    def __init__(self, model):
        self.rows: dict[str, list[dict[str, torch.Tensor]]] = defaultdict(list)
        self.handles = []
        self.active = True
        for name, block in model.moe_layers():
            if name.startswith("decoder."):
                self.handles.append(block.router.register_forward_hook(self._hook(name)))

    def _hook(self, name):
        def hook(router, args, routing):
            if not self.active:
                return
            x = args[0].detach().float()
            pad = args[1] if len(args) > 1 else None
            keep = torch.ones(x.shape[0], dtype=torch.bool) if pad is None else ~pad
            row = {
                "g": routing.combine_weight[:, 0].detach().float(),
                "expert": routing.expert_index[:, 0].detach(),
                "entropy": -(routing.probs * routing.probs.clamp_min(1e-12).log()).sum(-1),
            }
            if hasattr(router, "proj"):
                proj = F.linear(x, router.proj.float())
                cos = (
                    F.normalize(proj, dim=-1) @ F.normalize(router.expert_embed.float(), dim=-1).t()
                )
                top = cos.topk(2, dim=-1).values
                row.update(
                    cos1=top[:, 0], margin=top[:, 0] - top[:, 1], proj_norm=proj.norm(dim=-1)
                )
            self.rows[name].append({k: v.detach()[keep] for k, v in row.items()})

        return hook

    def take(self) -> dict[str, dict[str, torch.Tensor]]:
        out = {
            n: {k: torch.cat([r[k] for r in rows]) for k in rows[0]}
            for n, rows in self.rows.items()
        }
        self.rows.clear()
        return out

    def close(self):
        for h in self.handles:
            h.remove()


def summary(stats: dict[str, torch.Tensor], num_experts: int) -> dict:
    out = {"tokens": int(stats["g"].numel())}
    qs = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95])
    for key in ("g", "entropy", "cos1", "margin", "proj_norm"):
        if key in stats:
            v = stats[key].float()
            out[key] = {
                "mean": round(float(v.mean()), 4),
                "q05_25_50_75_95": [round(float(q), 4) for q in v.quantile(qs)],
            }
    load = torch.bincount(stats["expert"], minlength=num_experts).float()
    out["load_share"] = [round(float(x), 3) for x in (load / load.sum())]
    return out


def set_eval_capacity(model, factor):
    for _, block in model.moe_layers():
        block.eval_capacity_factor = factor


def batches(task, split: str, max_tokens: int, limit: int | None):
    """Length-sorted batches of at most ``max_tokens`` (fairseq's own batching) of the first
    ``limit`` sentences of ``split``."""
    task.load_dataset(split)
    dataset = task.dataset(split)
    indices = dataset.ordered_indices()
    if limit is not None:
        indices = indices[indices < limit]
    sampler = dataset.batch_by_size(indices, max_tokens=max_tokens)
    return dataset, [dataset.collater([dataset[int(i)] for i in b]) for b in sampler]


def teacher_forced(model, task, split, max_tokens, limit, capacity):
    """Token nll (nats) of the references in eval mode with eval capacity ``capacity``."""
    from moe_mt.models.moe_layers import collect_moe_outputs

    set_eval_capacity(model, capacity)
    _, items = batches(task, split, max_tokens, limit)
    pad, eos = task.target_dictionary.pad(), task.target_dictionary.eos()
    records = []
    for sample in items:
        net = sample["net_input"]
        with torch.no_grad(), collect_moe_outputs() as outs:
            logits, _ = model(**net)
        lprobs = logits.float().log_softmax(-1)
        target = sample["target"]
        nll = -lprobs.gather(-1, target.unsqueeze(-1)).squeeze(-1)  # [b, n]
        b, n = target.shape
        dec = [o.output for o in outs if o.name.startswith("decoder.")][0]
        # A token without any kept assignment gets a zero FFN output ([n, b, d] -> [b, n]).
        kept = dec.y.abs().sum(-1).ne(0).t()
        real = target.ne(pad)
        pos = torch.arange(n).expand(b, n)
        records.append((nll[real], kept[real], pos[real], target[real].eq(eos)))
    set_eval_capacity(model, None)
    nll, kept, pos, is_eos = (torch.cat(x) for x in zip(*records, strict=True))
    return nll, kept, pos, is_eos


def teacher_report(model, task, split, max_tokens, limit, capacity_factor):
    nll0, _, pos, is_eos = teacher_forced(model, task, split, max_tokens, limit, None)
    nll1, kept, _, _ = teacher_forced(model, task, split, max_tokens, limit, capacity_factor)
    dropped = ~kept
    by_pos = {}
    for lo, hi in ((0, 4), (4, 8), (8, 12), (12, 16), (16, 24), (24, 1000)):
        m = (pos >= lo) & (pos < hi)
        if m.any():
            by_pos[f"{lo}-{hi - 1}"] = {
                "tokens": int(m.sum()),
                "dropped": round(float(dropped[m].float().mean()), 4),
                "nll_no_capacity": round(float(nll0[m].mean()), 4),
                "nll_capacity": round(float(nll1[m].mean()), 4),
            }
    ln2 = math.log(2)
    return {
        "tokens": int(nll0.numel()),
        "nll_bits_no_capacity": round(float(nll0.mean()) / ln2, 4),
        "nll_bits_capacity": round(float(nll1.mean()) / ln2, 4),
        "eos_nll_bits_no_capacity": round(float(nll0[is_eos].mean()) / ln2, 4),
        "eos_nll_bits_capacity": round(float(nll1[is_eos].mean()) / ln2, 4),
        "dropped_share_decoder": round(float(dropped.float().mean()), 4),
        "dropped_tokens_nll_bits_with_ffn": round(float(nll0[dropped].mean()) / ln2, 4)
        if dropped.any()
        else None,
        "dropped_tokens_nll_bits_without_ffn": round(float(nll1[dropped].mean()) / ln2, 4)
        if dropped.any()
        else None,
        "by_position": by_pos,
    }


def decode(model, task, spm_tgt, split, references, variant, limit, tap):
    """Beam search one variant: scores, length ratio, incremental-vs-full gap, router stats."""
    import sacrebleu
    from fairseq.data import data_utils
    from fairseq.dataclass.configs import GenerationConfig

    beam, ngram, capacity = VARIANTS[variant]
    set_eval_capacity(model, capacity)
    generator = task.build_generator(
        [model],
        GenerationConfig(beam=beam, max_len_a=1.2, max_len_b=10, no_repeat_ngram_size=ngram),
    )
    dataset, items = batches(task, split, 6000, limit)
    tgt_dict = task.target_dictionary
    pad, eos = tgt_dict.pad(), tgt_dict.eos()
    hyps: dict[int, str] = {}
    max_gap, hit_max_len, step_stats, full_stats = 0.0, 0, [], []
    for sample in items:
        tap.active = True
        with torch.no_grad():
            results = task.inference_step(generator, [model], sample)
        step_stats.append(tap.take())
        best = [h[0] for h in results]
        max_len = int(1.2 * sample["net_input"]["src_tokens"].shape[1] + 10)
        for index, hypo in zip(sample["id"].tolist(), best, strict=True):
            hyps[index] = tgt_dict.string(hypo["tokens"].int(), "sentencepiece")
            hit_max_len += int(hypo["tokens"].numel() >= max_len)
        # Full forward pass of the same hypotheses (no capacity): scores and router stats.
        tokens = [h["tokens"] for h in best]
        prev = data_utils.collate_tokens(tokens, pad, eos, move_eos_to_beginning=True)
        target = data_utils.collate_tokens(tokens, pad, eos)
        set_eval_capacity(model, None)
        with torch.no_grad():
            logits, _ = model(
                sample["net_input"]["src_tokens"], sample["net_input"]["src_lengths"], prev
            )
        set_eval_capacity(model, capacity)
        full_stats.append(tap.take())
        lprobs = logits.float().log_softmax(-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
        for row, hypo in enumerate(best):
            n = hypo["tokens"].numel()
            gap = (lprobs[row, :n] - hypo["positional_scores"].float()).abs().max()
            max_gap = max(max_gap, float(gap))
    set_eval_capacity(model, None)
    ordered = [hyps[i] for i in sorted(hyps)]
    refs = [references[i] for i in sorted(hyps)]
    bleu = sacrebleu.metrics.BLEU().corpus_score(ordered, [refs])
    chrf = sacrebleu.metrics.CHRF().corpus_score(ordered, [refs])
    return (
        {
            "sentences": len(ordered),
            "BLEU": round(bleu.score, 2),
            "chrF2": round(chrf.score, 2),
            "length_ratio": round(bleu.sys_len / bleu.ref_len, 3),
            "max_abs_gap_incremental_vs_full_logprob": max_gap if capacity is None else None,
            "hit_max_len": hit_max_len,
            "examples": ordered[:5],
        },
        _merge(step_stats),
        _merge(full_stats),
    )


def _merge(parts):
    out = {}
    for part in parts:
        for name, stats in part.items():
            for k, v in stats.items():
                out.setdefault(name, {}).setdefault(k, []).append(v)
    return {n: {k: torch.cat(v) for k, v in s.items()} for n, s in out.items()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--checkpoint", default="checkpoint_last.pt")
    parser.add_argument("--split", default="test")
    parser.add_argument("--limit", type=int, default=None, help="first N sentences of the split")
    parser.add_argument("--max-tokens", type=int, default=1024, help="teacher-forcing batches")
    parser.add_argument("--capacity-factor", type=float, default=1.25)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)

    from moe_mt.workflows.common.manifest import parse_direction, read_manifest, text_files
    from moe_mt.workflows.common.rundir import RunDir
    from moe_mt.workflows.translate.translator import DecodeOptions, Translator

    run = RunDir(args.run_dir)
    translator = Translator.load(
        args.run_dir, args.run_dir / "checkpoints" / args.checkpoint, DecodeOptions()
    )
    model, task = translator.models[0], translator.task
    manifest = read_manifest(run.manifest)
    direction = parse_direction(manifest["languages"]["directions"][0], "manifest")
    _, ref_path = text_files(manifest, run.data, direction, args.split)
    references = ref_path.read_text(encoding="utf-8").splitlines()
    num_experts = model.moe_layers()[0][1].num_experts
    routers = {n: b.router for n, b in model.moe_layers()}
    temps = {
        n: round(float(r.log_inv_temperature.exp().clamp(max=r.max_inv_temperature)) ** -1, 4)
        for n, r in routers.items()
        if hasattr(r, "log_inv_temperature")
    }
    report: dict = {"run": str(args.run_dir), "temperature": temps}
    tap = RouterTap(model)
    tap.active = False
    report["teacher"] = teacher_report(
        model, task, args.split, args.max_tokens, args.limit, args.capacity_factor
    )
    # Router statistics over the reference prefixes (teacher forcing, no capacity).
    tap.active = True
    teacher_forced(model, task, args.split, args.max_tokens, args.limit, None)
    ref_stats = tap.take()
    report["router_reference"] = {n: summary(s, num_experts) for n, s in ref_stats.items()}
    report["decode"] = {}
    for variant in args.variants:
        scores, steps, full = decode(
            model, task, translator.spm_tgt, args.split, references, variant, args.limit, tap
        )
        scores["router_beam_steps"] = {n: summary(s, num_experts) for n, s in steps.items()}
        scores["router_hypotheses_full"] = {n: summary(s, num_experts) for n, s in full.items()}
        report["decode"][variant] = scores
        print(
            variant,
            json.dumps({k: scores[k] for k in ("BLEU", "chrF2", "length_ratio")}),
            flush=True,
        )
    tap.close()
    text = json.dumps(report, indent=1, ensure_ascii=False)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return report


if __name__ == "__main__":
    main()
