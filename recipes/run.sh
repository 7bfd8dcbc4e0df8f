#!/usr/bin/env bash
# prep -> train -> eval for one recipe in its run directory. Extra arguments are key=value
# overrides given to all three commands, e.g. a CI-sized budget:
#   bash recipes/run.sh recipes/demo.yaml run_dir=runs/demo-ci train.max_update=200
# Rerunning resumes where it stopped (prep is a no-op when up to date, train resumes).
set -euo pipefail
recipe="$1"; shift
here="$(cd "$(dirname "$0")/.." && pwd)"
moemt="${MOEMT:-$here/.venv/bin/moemt}"
"$moemt" prep "$recipe" "$@"
"$moemt" train "$recipe" "$@"
"$moemt" eval "$recipe" "$@"
