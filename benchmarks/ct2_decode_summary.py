"""The table of ``benchmarks/ct2_decode.sh``: BLEU, chrF2, sentences/s of each engine in each
round, speed relative to fairseq in the same round, and hypotheses identical to fairseq's.

    python benchmarks/ct2_decode_summary.py RUN_DIR [NAME ...]   # fairseq ct2-float32 ct2-int8
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROUNDS = (1, 2)


def read(run: Path, name: str, round_: int) -> dict:
    out = run / "eval" / f"test-{name}-r{round_}"
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    (direction,) = report["directions"].values()  # one direction (the demo's)
    hypotheses = (out / direction["files"]["hypotheses"]).read_text(encoding="utf-8")
    return {
        "bleu": direction["scores"]["BLEU"]["score"],
        "chrf": direction["scores"]["chrF2"]["score"],
        "speed": direction["timing"]["sentences_per_second"],
        "hypotheses": hypotheses.splitlines(),
        "engine": report.get("engine"),
    }


def main(run: Path, names: list[str]) -> None:
    rows = {(n, r): read(run, n, r) for n in names for r in ROUNDS}
    base = names[0]
    print("| engine | BLEU | chrF2 | sentences/s (rounds) | vs fairseq (rounds) | identical |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name in names:
        first = rows[(name, 1)]
        if any(rows[(name, r)]["bleu"] != first["bleu"] for r in ROUNDS):
            print(f"note: {name}: BLEU differs between rounds")
        speeds = ", ".join(f"{rows[(name, r)]['speed']:.1f}" for r in ROUNDS)
        ratios = ", ".join(
            f"{rows[(name, r)]['speed'] / rows[(base, r)]['speed']:.2f}x" for r in ROUNDS
        )
        reference = rows[(base, 1)]["hypotheses"]
        same = sum(a == b for a, b in zip(first["hypotheses"], reference, strict=True))
        print(
            f"| {name} | {first['bleu']:.2f} | {first['chrf']:.2f} | {speeds} | {ratios} | "
            f"{same}/{len(reference)} |"
        )
    print("engine of the last:", json.dumps(rows[(names[-1], 1)]["engine"]))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:] or ["fairseq", "ct2-float32", "ct2-int8"])
