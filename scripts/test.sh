#!/usr/bin/env bash
# Set up .venv if needed, then run the default test suite (extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m slow` for the slow end-to-end runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
status=0
.venv/bin/python -m pytest "$@" || status=$?
# pytest exits 5 when it collected no test: that is a failure here, not a pass.
[ "$status" -eq 5 ] && echo "test.sh: no test was collected" >&2
exit "$status"
