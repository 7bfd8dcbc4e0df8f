#!/usr/bin/env bash
# CI-sized runs: a tiny version of every model family, prep -> train -> eval on real data from
# the shared corpora (../shared/data): the IWSLT'14 De-En recipe (recipes/iwslt/iwslt14_de_en.yaml:
# its data cleaning) with each family's piece (recipes/families/<family>.yaml) at the demo size
# (3+3 layers, d=256), with the CI schedule (recipes/pieces/schedule/ci_tiny.yaml) and
# local data instead of the download:
#   CI_DATA=iwslt14   the 8.7k-pair IWSLT'14 sample (de -> en; lowercased, Moses-tokenised)
#   CI_DATA=multi30k  Multi30k (29k pairs, en -> de; raw, cased)
#   CI_DATA=multilingual  en<->de, en<->nl, en<->ro (six directions, the languages of the shared
#                     TED set): Tatoeba training pairs, IWSLT'17 TED dev2010 / tst2010 (the
#                     full-size multilingual recipes' test set) as valid / test; sacreBLEU is
#                     the mean over the directions
# valid and test are their first CI_VALID_LINES lines (per pair; short validation and eval).
#
#   bash recipes/ci_family_runs.sh                    # every family, 300 updates each
#   CI_UPDATES=20 bash recipes/ci_family_runs.sh thor # one family, 20 updates
#
# Environment: MOEMT_SHARED_DATA (default ../shared/data), CI_DATA (iwslt14), CI_UPDATES (300),
# CI_VALID_LINES (500), CI_RUNS (runs/ci), MOEMT (the moemt command). Each run lands in
# $CI_RUNS/ci_<data>_<family>; $CI_RUNS/summary.tsv gets one line per run (family, updates,
# seconds of prep / train / eval, sacreBLEU, tokenised BLEU).
# Measured on 2 CPU cores (iwslt14, 300 updates): see the table in docs/recipes.md.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
moemt="${MOEMT:-$here/.venv/bin/moemt}"
python="$(dirname "$moemt")/python"
shared="${MOEMT_SHARED_DATA:-$here/../shared/data}"
data="${CI_DATA:-iwslt14}"
updates="${CI_UPDATES:-300}"
valid_lines="${CI_VALID_LINES:-500}"
runs="${CI_RUNS:-$here/runs/ci}"
families=("$@")
# By default every family: one piece each in recipes/families/ (tests/test_family_registry.py).
if [ ${#families[@]} -eq 0 ]; then
  for piece in "$here"/recipes/families/*.yaml; do families+=("$(basename "$piece" .yaml)"); done
fi

case "$data" in
  iwslt14) corpus="$shared/iwslt14_de_en"; src=de; tgt=en ;;
  multi30k) corpus="$shared/multi30k_en_de"; src=en; tgt=de ;;
  multilingual) corpus="$shared/tatoeba_en_xx/en-de"; src=en; tgt=de ;;
  *) echo "CI_DATA=$data: iwslt14, multi30k or multilingual" >&2; exit 2 ;;
esac
[ -f "$corpus/train.$src" ] || { echo "$corpus/train.$src: no such file (MOEMT_SHARED_DATA)" >&2; exit 1; }

mkdir -p "$runs/data_$data"
if [ "$data" = multilingual ]; then
  for x in de nl ro; do
    mkdir -p "$runs/data_$data/en-$x"
    for split in valid test; do
      for lang in en "$x"; do
        head -n "$valid_lines" "$shared/iwslt17_ted_devtest/en-$x/$split.$lang" \
          > "$runs/data_$data/en-$x/$split.$lang"
      done
    done
  done
  data_yaml="  pairs: [en-de, de-en, en-nl, nl-en, en-ro, ro-en]
  source: null
  lowercase: false
  train: $shared/tatoeba_en_xx/{pair}/train
  valid: $runs/data_$data/{pair}/valid
  test: $runs/data_$data/{pair}/test
eval:
  legacy_bleu: false"
else
  for split in valid test; do
    for lang in "$src" "$tgt"; do
      head -n "$valid_lines" "$corpus/$split.$lang" > "$runs/data_$data/$split.$lang"
    done
  done
  data_yaml="  src: $src
  tgt: $tgt
  source: null
  lowercase: false
  train: $corpus/train
  valid: $runs/data_$data/valid
  test: $runs/data_$data/test"
fi
[ -f "$runs/summary.tsv" ] || printf 'run\tupdates\tprep_s\ttrain_s\teval_s\tsacrebleu\tlegacy_bleu\n' > "$runs/summary.tsv"

for family in "${families[@]}"; do
  piece="$here/recipes/families/$family.yaml"
  [ -f "$piece" ] || { echo "unknown family '$family' (recipes/families/*.yaml)" >&2; exit 2; }
  name="ci_${data}_${family}"
  recipe="$runs/$name.yaml"
  cat > "$recipe" <<YAML
# Written by recipes/ci_family_runs.sh
include:
  - $here/recipes/iwslt/iwslt14_de_en.yaml
  - $piece
  - $here/recipes/pieces/schedule/ci_tiny.yaml
name: $name
run_dir: $runs/$name
model:
  size: demo
train:
  max_update: $updates
data:
$data_yaml
YAML
  echo "== $name: $updates updates" >&2
  t0=$(date +%s); "$moemt" prep "$recipe" >/dev/null
  t1=$(date +%s); "$moemt" train "$recipe" >/dev/null
  t2=$(date +%s); "$moemt" eval "$recipe" >/dev/null
  t3=$(date +%s)
  scores=$("$python" - "$runs/$name/eval/test/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
directions = list(r["directions"].values())  # report format 2: one entry per direction
legacy = (directions[0].get("legacy_bleu") or {}) if len(directions) == 1 else {}
bleu = r["average"]["BLEU"]  # a single pair's: its one score
print(f"{bleu['score']:.2f}\t{legacy.get('score', '')}")
PY
)
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$updates" $((t1 - t0)) $((t2 - t1)) $((t3 - t2)) \
    "$scores" | tee -a "$runs/summary.tsv"
done
