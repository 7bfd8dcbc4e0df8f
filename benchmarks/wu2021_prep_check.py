"""moemt's raw-text preparation against Wu et al. 2021's own segmented Multi30k files.

The raw, cased Multi30k text (../shared/data/multi30k_en_de) goes through what
``data.lowercase=true data.moses=true data.subword=bpe data.bpe.codes=<their codes>`` does
(lowercase, Moses punctuation normalisation and tokenisation, their BPE codes), and each line is
compared with the authors' line (../shared/data/multi30k_wu2021_en_de). Prints the share of
identical lines per split and side, and every differing line, classed:

- ``trailing space``: equal but for whitespace at the end of the authors' line (tokenizer.perl
  leaves one after some final tokens; fairseq's whitespace tokenisation ignores it);
- ``tokens``: the tokens differ (printed, to be explained by hand).

    .venv/bin/python benchmarks/wu2021_prep_check.py [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from moe_mt.data_prep.segmentation import Segmenter

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
SPLITS = {"train": "train", "valid": "valid", "test": "test2016"}  # raw name -> theirs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=SHARED)
    parser.add_argument("--json", type=Path, default=None, help="also write the counts here")
    args = parser.parse_args(argv)
    raw_dir, theirs_dir = args.shared / "multi30k_en_de", args.shared / "multi30k_wu2021_en_de"
    results, total, same_total = [], 0, 0
    for lang in ("en", "de"):
        segmenter = Segmenter(lang, True, theirs_dir / "bpe.codes")
        for raw_name, their_name in SPLITS.items():
            started = time.perf_counter()
            raw = (raw_dir / f"{raw_name}.{lang}").read_text(encoding="utf-8").splitlines()
            theirs = (theirs_dir / f"{their_name}.{lang}").read_text(encoding="utf-8")
            theirs = theirs.split("\n")[: len(raw)]
            mine = [" ".join(p) for p in segmenter.encode([line.lower() for line in raw])]
            classes: dict[str, int] = {}
            for number, (a, b) in enumerate(zip(mine, theirs, strict=True), start=1):
                if a == b:
                    continue
                kind = "trailing space" if a == b.rstrip() else "tokens"
                classes[kind] = classes.get(kind, 0) + 1
                print(f"{lang} {raw_name}:{number} [{kind}]\n  moemt:   {a!r}\n  authors: {b!r}")
            same = sum(a == b for a, b in zip(mine, theirs, strict=True))
            same_tokens = sum(a.split() == b.split() for a, b in zip(mine, theirs, strict=True))
            total, same_total = total + len(raw), same_total + same
            results.append(
                {
                    "lang": lang, "split": raw_name, "lines": len(raw), "identical": same,
                    "identical_tokens": same_tokens, "differences": classes,
                    "seconds": round(time.perf_counter() - started, 2),
                }
            )  # fmt: skip
    print(f"\n{'side':<4} {'split':<6} {'lines':>6} {'identical':>10} {'share':>9} {'tokens':>9}")
    for r in results:
        print(
            f"{r['lang']:<4} {r['split']:<6} {r['lines']:>6} {r['identical']:>10} "
            f"{r['identical'] / r['lines']:>9.4%} {r['identical_tokens'] / r['lines']:>9.4%}"
        )
    print(f"all: {same_total}/{total} lines identical ({same_total / total:.4%})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
