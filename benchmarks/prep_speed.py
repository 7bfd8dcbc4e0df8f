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

    flock /tmp/moemt-cpu.lock .venv/bin/python benchmarks/prep_speed.py --pairs 100000
    flock /tmp/moemt-cpu.lock .venv/bin/python benchmarks/prep_speed.py --pairs 1000000
"""

from __future__ import annotations

import argparse
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


def run(pairs: int, vocab: int, work: Path) -> dict:
    from moe_mt.config import load_config
    from moe_mt.workflows.prep import prep

    corpus = make_corpus(work / "corpus", pairs)
    recipe = work / "prep_speed.yaml"
    recipe.write_text(
        "name: prep_speed\n"
        f"data: {{src: en, tgt: de, train: {corpus}/train, valid: {corpus}/valid, "
        f"test: {corpus}/test, spm: {{vocab_size: {vocab}}}}}\n",
        encoding="utf-8",
    )
    cfg = load_config(recipe, [f"run_dir={work / 'run'}"])
    started = time.perf_counter()
    manifest = prep(cfg, console=Console(stderr=True, quiet=True)).manifest
    seconds = time.perf_counter() - started
    (corpus_info,) = manifest["corpora"].values()
    return {
        "pairs": pairs,
        "kept": corpus_info["splits"]["train"]["lines"]["kept"],
        "seconds": seconds,
        "stages": manifest["stage_seconds"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def report(result: dict) -> None:
    total, pairs = result["seconds"], result["pairs"]
    print(f"moemt prep of {pairs:,} distinct pairs ({result['kept']:,} kept after cleaning)")
    print(f"{'stage':<16}{'seconds':>10}{'share':>9}{'pairs/s':>12}")
    for name, seconds in result["stages"].items():
        rate = pairs / seconds if seconds else float("inf")
        print(f"{name:<16}{seconds:>10.1f}{seconds / total:>9.1%}{rate:>12,.0f}")
    print(f"{'whole prep':<16}{total:>10.1f}{1:>9.0%}{pairs / total:>12,.0f}")
    print(f"peak resident memory: {result['peak_rss_mb']:,.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument("--vocab", type=int, default=16_000, help="joint sentencepiece pieces")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="prep_speed_") as work:
        report(run(args.pairs, args.vocab, Path(work)))


if __name__ == "__main__":
    main()
