#!/usr/bin/env bash
# The shipped demo, end to end on a fresh machine: set up .venv, then prepare the English-German
# Tatoeba corpus shipped in corpora/, train the dense baseline (about 10 minutes on 2 CPU cores)
# and evaluate it on the test split into runs/demo. Extra arguments are key=value overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash recipes/run.sh recipes/demo.yaml "$@"
