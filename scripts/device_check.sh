#!/usr/bin/env bash
# The GPU check of moemt in one device call (at most ~9 minutes): install the bundle, run the
# CUDA tests, benchmark the MoE layer (fp32 and bf16, E = 8/16/32, k = 1/2), train the dense,
# Switch-8e and THOR demo models for 300 updates each in bf16 (fp16 if fairseq's bf16 fails),
# evaluate them, and write $OUT/report.md: target words/s, Switch/dense words/s, THOR/dense
# seconds per update, with every step's status and time. See docs/gpu.md.
#
#   run(command="bash scripts/device_check.sh", carry=[".device/wheels"], timeout_s=600)
#   bash scripts/device_check.sh --cpu      # the CPU rehearsal: tiny sizes, a few updates
#
# A failed or timed-out step is recorded and the next one runs; every step's output goes to
# $OUT/logs.tar.gz (with the runs' train logs and eval reports) and its tail to report.md.
#
#   PYTHON                   the interpreter with torch (default python3)
#   OUT                      where the report goes (set by the device tool; rehearsal default
#                            /tmp/moemt-device-out)
#   MOEMT_DEVICE_WORK        scratch folder for runs and logs (default /tmp/moemt-device-check)
#   MOEMT_DEVICE_DEADLINE_S  the whole check's wall-clock budget (default 530 on the GPU,
#                            1800 in rehearsal); steps are cut short to end inside it
#   MOEMT_DEVICE_REHEARSAL=1 same as --cpu
#   MOEMT_DEVICE_UPDATES     training updates per model (default 300; rehearsal 4)
set -uo pipefail # no -e: a failed step is recorded, and the next one runs
cd "$(dirname "$0")/.."
START=$SECONDS

REHEARSAL="${MOEMT_DEVICE_REHEARSAL:-0}"
[ "${1:-}" = "--cpu" ] && REHEARSAL=1
export PYTHON="${PYTHON:-python3}"
WORK="${MOEMT_DEVICE_WORK:-/tmp/moemt-device-check}"
if [ "$REHEARSAL" = 1 ]; then
    OUT="${OUT:-/tmp/moemt-device-out}"
    DEADLINE_S="${MOEMT_DEVICE_DEADLINE_S:-1800}"
    UPDATES="${MOEMT_DEVICE_UPDATES:-4}"
    # Tiny layer sizes, few repeats; short greedy decoding of the barely trained models.
    BENCH=(--device cpu --d 64 --f 128 --tokens 512 --repeats 2)
    TRAIN_EXTRA=(train.log_interval=1)
    EVAL_EXTRA=(eval.beam=1 eval.max_len_a=0 eval.max_len_b=8 eval.thor_draws=1)
else
    : "${OUT:?OUT is not set: run this through the device tool, or with --cpu to rehearse}"
    DEADLINE_S="${MOEMT_DEVICE_DEADLINE_S:-530}"
    UPDATES="${MOEMT_DEVICE_UPDATES:-300}"
    # docs/benchmarks.md's sizes; 10 interleaved repeats keep each dtype's table under a minute.
    BENCH=(--device cuda --d 512 --f 2048 --tokens 8192 --repeats 10)
    TRAIN_EXTRA=(train.log_interval=25)
    EVAL_EXTRA=()
fi
export OUT WORK REHEARSAL UPDATES DEADLINE_S
LOGS="$WORK/logs"
rm -rf "$WORK"
mkdir -p "$OUT" "$LOGS" "$WORK/runs"
: > "$WORK/steps.tsv"
{
    if [ "$REHEARSAL" = 1 ]; then echo "mode: CPU rehearsal (--cpu)"; else echo "mode: GPU (cuda)"; fi
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    # The device machine gets a copy of the working tree, maybe without .git.
    if commit="$(git rev-parse --short HEAD 2> /dev/null)"; then
        git diff --quiet HEAD 2> /dev/null || commit="$commit (with uncommitted changes)"
    fi
    echo "commit: ${commit:-n/a (no git checkout)}"
    echo "gpu: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2> /dev/null | head -1 || echo none)"
    echo "updates per model: $UPDATES; deadline: ${DEADLINE_S}s"
} > "$WORK/env.txt"
# Time left for steps: the report and the log archive need a few seconds at the end.
RESERVE_S=15

# step NAME BUDGET_S COMMAND...: run COMMAND with its output in $LOGS/NAME.log, stopped after
# min(BUDGET_S, what is left of the deadline); one row of $WORK/steps.tsv records the outcome.
step() {
    local name="$1" budget="$2"
    shift 2
    local left=$((DEADLINE_S - RESERVE_S - (SECONDS - START)))
    local limit=$((budget < left ? budget : left))
    if [ "$limit" -lt 5 ]; then
        printf '%s\tskipped (no time left)\t0\t%s\n' "$name" "$budget" >> "$WORK/steps.tsv"
        echo "== $name: skipped, no time left" >&2
        return 1
    fi
    echo "== $name (budget ${limit}s): $*" >&2
    local t0=$SECONDS rc
    timeout --kill-after=10 "$limit" "$@" > "$LOGS/$name.log" 2>&1
    rc=$?
    local status=ok
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        status="timed out after ${limit}s"
    elif [ "$rc" != 0 ]; then
        status="failed (exit $rc)"
    fi
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" "$budget" >> "$WORK/steps.tsv"
    echo "   $status in $((SECONDS - t0))s" >&2
    return "$rc"
}

# -- setup -----------------------------------------------------------------------------------
SITE="$WORK/site"
if step setup 90 env MOEMT_DEVICE_SITE="$SITE" bash scripts/device_setup.sh; then
    # shellcheck disable=SC1091
    source "$SITE/activate"
fi

# -- CUDA tests (they skip without a GPU) ------------------------------------------------------
shopt -s nullglob
cuda_tests=(tests/test_*cuda*.py)
if [ ${#cuda_tests[@]} -gt 0 ]; then
    step cuda_tests 90 "$PYTHON" -P -m pytest -q -p no:cacheprovider -rs "${cuda_tests[@]}"
else
    printf 'cuda_tests\tskipped (no tests/test_*cuda*.py)\t0\t90\n' >> "$WORK/steps.tsv"
fi

# -- the MoE layer against a dense FFN ---------------------------------------------------------
for dtype in fp32 bf16; do
    step "bench_$dtype" 75 "$PYTHON" -P benchmarks/moe_layer.py "${BENCH[@]}" --dtype "$dtype" \
        --experts 8 16 32 --k 1 2
done

# -- dense, Switch-8e and THOR demo models: prep, train (bf16, else fp16), eval ---------------
MODELS=(dense:recipes/demo.yaml switch:recipes/demo_switch.yaml thor:recipes/demo_thor.yaml)
for entry in "${MODELS[@]}"; do
    name="${entry%%:*}" recipe="${entry#*:}"
    step "prep_$name" 40 moemt prep "$recipe" run_dir="$WORK/runs/$name"
done

train_model() { # NAME RECIPE: bf16, and fp16 when bf16 fails (not when it ran out of time)
    local name="$1" recipe="$2" run="$WORK/runs/$1" precision
    for precision in bf16 fp16; do
        echo "$precision" > "$run.precision"
        # A retry starts afresh: no checkpoint to resume, no log lines of the failed try.
        rm -rf "$run/checkpoints" "$run/logs/train.log" "$run/logs/train_summary.json"
        step "train_${name}_$precision" "$3" moemt train "$recipe" run_dir="$run" \
            train.max_update="$UPDATES" "train.$precision=true" "${TRAIN_EXTRA[@]}"
        local rc=$?
        if [ "$rc" = 0 ] || [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
            return "$rc"
        fi
    done
    return 1
}
train_model dense recipes/demo.yaml 100
train_model switch recipes/demo_switch.yaml 100
train_model thor recipes/demo_thor.yaml 130

for entry in "${MODELS[@]}"; do
    name="${entry%%:*}"
    step "eval_$name" 60 moemt eval "$WORK/runs/$name" "${EVAL_EXTRA[@]}"
done

# -- if time is left: the layer's dynamic plan (the path before the static one) and CUDA graphs --
if [ "$REHEARSAL" = 1 ]; then
    # No CUDA graphs on the CPU: the compiled static plan with the grouped GEMM, as on CUDA
    # (the CPU's fused bank reads the group sizes back, which fullgraph refuses).
    GRAPHS=(--compile default --dispatch-plan static --impl grouped_mm --experts 8 --k 1)
else
    GRAPHS=(--compile reduce-overhead --experts 8 32 --k 1)
fi
step bench_bf16_dynamic 60 "$PYTHON" -P benchmarks/moe_layer.py "${BENCH[@]}" --dtype bf16 \
    --dispatch-plan dynamic --experts 8 32 --k 1
step bench_bf16_graphs 120 "$PYTHON" -P benchmarks/moe_layer.py "${BENCH[@]}" --dtype bf16 \
    "${GRAPHS[@]}"
# The static plan's other layout: [E, C, d] slots for bmm under a capacity (training only; eval
# has no capacity and runs on groups), in bf16 against the grouped GEMM and in fp32.
for dtype in bf16 fp32; do
    step "bench_${dtype}_slots" 45 "$PYTHON" -P benchmarks/moe_layer.py "${BENCH[@]}" \
        --dtype "$dtype" --capacity-factor 1.25 --dispatch-plan static --static-layout slots \
        --experts 8 32 --k 1 2
done

# -- the report --------------------------------------------------------------------------------
"$PYTHON" -P scripts/device_report.py "$WORK" "$OUT/report.md" || {
    echo "device_check: the report failed; the raw logs are in $OUT/logs.tar.gz" >&2
}
# Everything else in one archive: the device tool brings back at most 8 files.
(cd "$WORK" && tar czf "$OUT/logs.tar.gz" steps.tsv logs runs/*.precision \
    runs/*/logs runs/*/eval 2> /dev/null) || true
echo "device_check: done in $((SECONDS - START))s; $OUT/report.md" >&2
cat "$OUT/report.md" 2> /dev/null
