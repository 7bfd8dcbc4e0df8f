#!/usr/bin/env bash
# The shipped demo, end to end on a fresh machine: set up .venv, then prepare the English-German
# Tatoeba corpus shipped in corpora/ into runs/demo. Extra arguments are key=value overrides.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/moemt prep recipes/demo.yaml "$@"
