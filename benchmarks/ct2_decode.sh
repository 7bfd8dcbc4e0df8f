#!/usr/bin/env bash
# fairseq against its CTranslate2 export (float32 and int8) on one trained run: `moemt eval` of
# the run's eval split (its recipe's decoding keys: the demo's beam 5, n-gram blocking 3) with
# eval.engine=fairseq, then ctranslate2 float32, then int8, twice in alternation, each into
# eval/test-<engine>-r<round>. Extra arguments are key=value overrides for every eval, e.g. THOR:
#
#   flock /tmp/moemt-cpu.lock bash benchmarks/ct2_decode.sh runs/demo
#   flock /tmp/moemt-cpu.lock bash benchmarks/ct2_decode.sh runs/demo_thor \
#       eval.thor_inference=fixed eval.thor_expert=0 eval.thor_draws=1
#   .venv/bin/python benchmarks/ct2_decode_summary.py runs/demo      # the table
set -euo pipefail
run="$1"; shift
here="$(cd "$(dirname "$0")/.." && pwd)"
moemt="${MOEMT:-$here/.venv/bin/moemt}"
for round in 1 2; do
  "$moemt" eval "$run" "$@" eval.name="test-fairseq-r$round"
  for quantization in float32 int8; do
    "$moemt" eval "$run" "$@" eval.engine=ctranslate2 eval.quantization="$quantization" \
      eval.name="test-ct2-$quantization-r$round"
  done
done
