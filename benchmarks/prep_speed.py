"""Speed of ``moemt prep`` at scale: pairs per second, per stage and overall, and peak memory.

A corpus of ``--pairs`` distinct sentence pairs is made from the shared Multi30k En-De training
text (29k pairs; beyond them each pair is repeated with a number appended to both sides, so that
no pair is a duplicate and cleaning keeps them all), with Multi30k's own valid and test sets. It
is prepared exactly as ``moemt prep`` prepares a recipe (joint unigram sentencepiece of
``--vocab`` pieces, the default cleaning), and the stage times come from the manifest's
``stage_seconds``: validation + cleaning, sentencepiece training, encoding, dictionary,
binarisation. Reported per stage: seconds, share of the whole prep, and training pairs per
second; then the whole prep's pairs/s and the process's peak resident memory (sentencepiece
trains in this process, on a sample of at most ``data.spm.input_sentence_size`` sentences).
``--baseline-workers 1`` first prepares the same corpus on one worker, in the same process, and
prints each stage's speed-up over it.

    flock /tmp/moemt-cpu.lock .venv/bin/python benchmarks/prep_speed.py --pairs 100000
    flock /tmp/moemt-cpu.lock .venv/bin/python benchmarks/prep_speed.py --pairs 1000000
    flock /tmp/moemt-cpu.lock .venv/bin/python benchmarks/prep_speed.py --baseline-workers 1
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

from rich.console import Console

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data" / "multi30k_en_de"


def make_corpus(out: Path, pairs: int, shared: Path = SHARED) -> Path:
    """``out/{train,valid,test}.{en,de}``: ``pairs`` distinct training pairs; the prefix."""
    out.mkdir(parents=True, exist_ok=True)
    base = {lang: (shared / f"train.{lang}").read_text(encoding="utf-8").splitlines()
            for lang in ("en", "de")}  # fmt: skip
    n = len(base["en"])
    for lang in ("en", "de"):
        with open(out / f"train.{lang}", "w", encoding="utf-8") as handle:
            for k in range(pairs):
                copy = k // n  # the first copy as it is, later ones numbered
                handle.write(base[lang][k % n] + (f" {copy}" if copy else "") + "\n")
        for split in ("valid", "test"):
            (out / f"{split}.{lang}").write_bytes((shared / f"{split}.{lang}").read_bytes())
    return out


def run(pairs: int, vocab: int, work: Path, workers: int | None = None) -> dict:
    """Prepare ``pairs`` pairs on ``workers`` (None: data.workers' default, the cores)."""
    from moe_mt.config import load_config
    from moe_mt.workflows.prep import prep

    corpus = work / "corpus"
    if not (corpus / "train.en").is_file():
        make_corpus(corpus, pairs)
    recipe = work / "prep_speed.yaml"
    recipe.write_text(
        "name: prep_speed\n"
        f"data: {{src: en, tgt: de, train: {corpus}/train, valid: {corpus}/valid, "
        f"test: {corpus}/test, spm: {{vocab_size: {vocab}}}}}\n",
        encoding="utf-8",
    )
    run_dir = work / f"run_{workers}"
    cfg = load_config(recipe, [f"run_dir={run_dir}", f"data.workers={workers or 'null'}"])
    started = time.perf_counter()
    manifest = prep(cfg, console=Console(stderr=True, quiet=True)).manifest
    seconds = time.perf_counter() - started
    (corpus_info,) = manifest["corpora"].values()
    return {
        "workers": workers or os.cpu_count(),
        "pairs": pairs,
        "kept": corpus_info["splits"]["train"]["lines"]["kept"],
        "seconds": seconds,
        "stages": manifest["stage_seconds"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def report(result: dict, baseline: dict | None = None) -> None:
    """One line per stage; with ``baseline``, each stage's speed-up over it."""
    total, pairs = result["seconds"], result["pairs"]
    print(
        f"moemt prep of {pairs:,} distinct pairs ({result['kept']:,} kept after cleaning), "
        f"{result['workers']} workers"
    )
    header = f"{'stage':<16}{'seconds':>10}{'share':>9}{'pairs/s':>12}"
    print(header + ("  speed-up" if baseline else ""))
    rows = [*result["stages"].items(), ("whole prep", total)]
    for name, seconds in rows:
        rate = pairs / seconds if seconds else float("inf")
        line = f"{name:<16}{seconds:>10.1f}{seconds / total:>9.1%}{rate:>12,.0f}"
        if baseline:
            before = baseline["seconds"] if name == "whole prep" else baseline["stages"][name]
            line += f"{before / seconds if seconds else float('inf'):>9.2f}x"
        print(line)
    print(f"peak resident memory (process so far): {result['peak_rss_mb']:,.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--vocab", type=int, default=16_000, help="joint sentencepiece pieces")
    parser.add_argument("--workers", type=int, default=None, help="data.workers (the cores)")
    parser.add_argument(
        "--baseline-workers", type=int, default=None, help="first prepare on this many workers"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="prep_speed_") as work:
        baseline = None
        if args.baseline_workers is not None:
            baseline = run(args.pairs, args.vocab, Path(work), args.baseline_workers)
            report(baseline)
            print()
        report(run(args.pairs, args.vocab, Path(work), args.workers), baseline)


if __name__ == "__main__":
    main()
