#!/usr/bin/env bash
# The distillation study at demo scale (docs/benchmarks.md, "Distillation study (demo scale)"):
# for each teacher (the Switch-8e demo, then the THOR demo), the teacher trained on past the dense
# baseline's 1,800 updates, its word-level (w=0.25) and sequence-level students (the dense demo
# model, 1,800 updates, initialised from the teacher's non-expert weights), a control trained
# from the same initialisation without the teacher, and the paired bootstrap of each against the
# baseline, the control and the teacher; then the word-level student and the control again with
# a second seed. Last, the int8 export of the Switch teacher's better student against that
# teacher in fairseq, in alternating rounds as ct2_decode.sh.
#
# Needs, in $RUNS (default runs/), the trained and evaluated dense baseline (recipes/demo.yaml ->
# demo) and the trained Switch and THOR demos (recipes/demo_switch.yaml -> demo_switch,
# recipes/demo_thor.yaml -> demo_thor); all are read only (each teacher continues in a copy).
# Every step resumes or reuses what is done. Run it under the shared CPU lock:
#
#   flock /tmp/moemt-cpu.lock bash benchmarks/distill_study.sh
#   RUNS=/elsewhere SWITCH=/elsewhere/demo_switch_fixed flock /tmp/moemt-cpu.lock \
#       bash benchmarks/distill_study.sh     # runs in another directory, another Switch run
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
moemt="${MOEMT:-$here/.venv/bin/moemt}"
python="${PYTHON:-$here/.venv/bin/python}"
runs="$(realpath "${RUNS:-runs}")"
updates="${TEACHER_UPDATES:-3600}"

# train_control STUDENT CONTROL [OVERRIDES]: the student's initialisation (STUDENT/distill/init.pt)
# trained and evaluated in CONTROL as the baseline (its recipe's criterion, 1,800 updates)
# without the teacher: what the initialisation alone brings.
train_control() {
  local word="$1" control="$2"
  shift 2
  mkdir -p "$control"
  [ -d "$control/data" ] || cp -a "$word/data" "$control/data"
  [ -f "$control/config.yaml" ] || cp "$word/config.yaml" "$control/config.yaml"
  "$moemt" train "$control" name="$(basename "$control")" "$@" \
    train.criterion=label_smoothed_cross_entropy 'train.fairseq_args=[]' \
    --finetune-from "$word/distill/init.pt"
  "$moemt" eval "$control"
}

# study SOURCE TEACHER STUDENTS CONTROL: the teacher, its students and the control for one MoE
# run, in $runs/TEACHER, $runs/STUDENTS{word,seq} and $runs/CONTROL; comparisons in
# $runs/study_compare/TEACHER/.
study() {
  local source="$1" teacher="$runs/$2" word="$runs/${3}word" seq="$runs/${3}seq"
  local control="$runs/$4" out="$runs/study_compare/$2"

  # 1. The teacher: the MoE demo continued to $updates updates (max_update is a budget key, so
  # the resume guard lets it change), evaluated as the demo (beam 5, n-gram blocking 3; THOR
  # with eval.thor_inference's default, a random expert per sentence).
  [ -d "$teacher" ] || cp -a "$source" "$teacher"
  "$moemt" train "$teacher" train.max_update="$updates"
  "$moemt" eval "$teacher"
  "$moemt" eval "$teacher" eval.checkpoint=best eval.name=test-best   # the best valid loss
  "$moemt" compare "$runs/demo" "$teacher" --out "$out/teacher"
  "$moemt" compare "$runs/demo" "$teacher/eval/test-best" --out "$out/teacher-best"

  # 2. The students, 1,800 updates each (recipes/demo_distill.yaml): word level, w = 0.25, and
  # sequence level; each report gives teacher, student and baseline BLEU and the gain kept.
  local common=(distill.teacher="$teacher" distill.baseline="$runs/demo")
  "$moemt" distill "$here/recipes/demo_distill.yaml" "${common[@]}" run_dir="$word"
  "$moemt" distill "$here/recipes/demo_distill.yaml" "${common[@]}" distill.mode=sequence \
    run_dir="$seq"

  # 3. The control, and the comparisons.
  train_control "$word" "$control"
  "$moemt" compare "$runs/demo" "$teacher" "$word" "$seq" "$control" --out "$out/all"
  "$moemt" compare "$control" "$word" "$seq" --out "$out/vs-init-only"
  "$moemt" compare "$teacher" "$word" "$seq" "$control" --out "$out/vs-teacher"
}

# reseed TEACHER STUDENTS CONTROL: the word-level student and the control again with
# train.seed=2 (same teacher, same initialisation): the training noise of the student-against-
# control difference.
reseed() {
  local teacher="$runs/$1" word="$runs/${2}word" control="$runs/$3" out="$runs/study_compare/$1"
  local word2="${word}_s2" control2="${control}_s2"
  "$moemt" distill "$here/recipes/demo_distill.yaml" distill.teacher="$teacher" \
    distill.baseline="$runs/demo" train.seed=2 run_dir="$word2"
  train_control "$word2" "$control2" train.seed=2
  "$moemt" compare "$control2" "$word2" --out "$out/seed2-vs-init-only"
  "$moemt" compare "$control" "$control2" --out "$out/control-seed1-vs-seed2"
  "$moemt" compare "$word" "$word2" --out "$out/word-seed1-vs-seed2"
}

study "${SWITCH:-$runs/demo_switch}" study_switch_t study_kd_ study_init_only
study "${THOR:-$runs/demo_thor}" study_thor_t study_thor_kd_ study_thor_init_only
# THOR's teacher also decoded with the mean of its experts' outputs (E x the FFN cost).
"$moemt" eval "$runs/study_thor_t" eval.thor_inference=mean eval.name=test-mean
"$moemt" compare "$runs/demo" "$runs/study_thor_t/eval/test-mean" \
  --out "$runs/study_compare/study_thor_t/teacher-mean"
reseed study_switch_t study_kd_ study_init_only
reseed study_thor_t study_thor_kd_ study_thor_init_only

# 4. The int8 export of the Switch teacher's student with the higher BLEU in CTranslate2 against
# the teacher in fairseq: same split, beam and threads, two alternating rounds (others hold back
# while /tmp/moemt-timing exists).
teacher="$runs/study_switch_t"
student=$("$python" -c "
import json, sys
bleu = {n: json.load(open(f'{sys.argv[1]}/{n}/distill/report.json'))['student']['bleu']
        for n in ('study_kd_word', 'study_kd_seq')}
print(max(bleu, key=bleu.get))" "$runs")
"$moemt" export "$runs/$student" --quantization int8
touch /tmp/moemt-timing
trap 'rm -f /tmp/moemt-timing' EXIT
for round in 1 2; do
  "$moemt" eval "$teacher" eval.name="test-fairseq-r$round"
  "$moemt" eval "$runs/$student" eval.engine=ctranslate2 eval.quantization=int8 \
    eval.name="test-ct2-int8-r$round"
done
"$moemt" compare "$runs/demo" "$runs/$student/eval/test-ct2-int8-r1" \
  --out "$runs/study_compare/student-int8"
