#!/usr/bin/env bash
# The distillation study at demo scale (docs/benchmarks.md, "Distillation study (demo scale)"):
# a Switch-8e teacher trained on past the dense baseline's 1,800 updates, its word-level (w=0.25)
# and sequence-level students (the dense demo model, 1,800 updates, initialised from the
# teacher's non-expert weights), the paired bootstrap of each against the baseline, and the int8
# export of a student against the teacher in fairseq, in alternating rounds as ct2_decode.sh.
#
# Needs, in $RUNS (default runs/), the trained and evaluated dense baseline (recipes/demo.yaml ->
# demo) and the trained Switch demo (recipes/demo_switch.yaml -> demo_switch); both are read
# only (the teacher continues in a copy). Every step resumes or reuses what is done. Run it
# under the shared CPU lock:
#
#   flock /tmp/moemt-cpu.lock bash benchmarks/distill_study.sh
#   RUNS=/elsewhere SWITCH=/elsewhere/demo_switch_fixed flock /tmp/moemt-cpu.lock \
#       bash benchmarks/distill_study.sh     # runs in another directory, another Switch run
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
moemt="${MOEMT:-$here/.venv/bin/moemt}"
python="${PYTHON:-$here/.venv/bin/python}"
runs="$(realpath "${RUNS:-runs}")"
switch="${SWITCH:-$runs/demo_switch}"   # the trained Switch demo the teacher continues
updates="${TEACHER_UPDATES:-3600}"
teacher="$runs/study_switch_t"

# 1. The teacher: the Switch demo continued to $updates updates (max_update is a budget key,
# so the resume guard lets it change), evaluated as the demo (beam 5, n-gram blocking 3).
[ -d "$teacher" ] || cp -a "$switch" "$teacher"
"$moemt" train "$teacher" train.max_update="$updates"
"$moemt" eval "$teacher"
"$moemt" eval "$teacher" eval.checkpoint=best eval.name=test-best   # the best valid loss
"$moemt" compare "$runs/demo" "$teacher" --out "$runs/study_compare/teacher"
"$moemt" compare "$runs/demo" "$teacher/eval/test-best" --out "$runs/study_compare/teacher-best"

# 2. The students, 1,800 updates each (recipes/demo_distill.yaml): word level, w = 0.25, and
# sequence level; each report gives teacher, student and baseline BLEU and the gain kept.
common=(distill.teacher="$teacher" distill.baseline="$runs/demo")
"$moemt" distill "$here/recipes/demo_distill.yaml" "${common[@]}" run_dir="$runs/study_kd_word"
"$moemt" distill "$here/recipes/demo_distill.yaml" "${common[@]}" distill.mode=sequence \
  run_dir="$runs/study_kd_seq"
"$moemt" compare "$runs/demo" "$teacher" "$runs/study_kd_word" "$runs/study_kd_seq" \
  --out "$runs/study_compare/students"

# Control: the students' initialisation (distill/init.pt) trained as the baseline (its recipe's
# criterion, 1,800 updates) without the teacher: what the initialisation alone brings.
control="$runs/study_init_only"
mkdir -p "$control"
[ -d "$control/data" ] || cp -a "$runs/study_kd_word/data" "$control/data"
[ -f "$control/config.yaml" ] || cp "$runs/study_kd_word/config.yaml" "$control/config.yaml"
"$moemt" train "$control" name=study_init_only train.criterion=label_smoothed_cross_entropy \
  'train.fairseq_args=[]' --finetune-from "$runs/study_kd_word/distill/init.pt"
"$moemt" eval "$control"
"$moemt" compare "$runs/demo" "$teacher" "$runs/study_kd_word" "$runs/study_kd_seq" "$control" \
  --out "$runs/study_compare/all"
"$moemt" compare "$control" "$runs/study_kd_word" "$runs/study_kd_seq" \
  --out "$runs/study_compare/vs-init-only"
"$moemt" compare "$teacher" "$runs/study_kd_word" "$runs/study_kd_seq" "$control" \
  --out "$runs/study_compare/vs-teacher"

# 3. The int8 export of the student with the higher BLEU in CTranslate2 against the teacher in
# fairseq: same split, beam and threads, two alternating rounds (others hold back while
# /tmp/moemt-timing exists).
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
