#!/usr/bin/env bash
# Install the bundle of scripts/device_bundle.sh (.device/wheels) and moemt itself into a scratch
# target on the GPU machine, beside that machine's own torch and numpy; then prove that fairseq
# imports and that `moemt --help` runs. No network and no compiler needed. See docs/gpu.md.
#
#   bash scripts/device_setup.sh && source /tmp/site/activate
#
#   PYTHON               the machine's interpreter, the one with torch (default python3)
#   MOEMT_DEVICE_SITE    the scratch target (default /tmp/site)
#   MOEMT_DEVICE_WHEELS  the bundle (default .device/wheels)
#
# Writes $MOEMT_DEVICE_SITE/activate, which puts the target on PYTHONPATH (ahead of the machine's
# site-packages, so the bundle's pins win) and its bin/ (the `moemt` console script) on PATH.
# Commands that should see the installed moe_mt run with `python3 -P` (Python >= 3.11): without
# it, `python3 -m`/`-c` put the working directory first, and the repository's moe_mt/ (which has
# no cli/ or data_prep/ inside: setup.cfg maps them) would shadow the installed package.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
SITE="${MOEMT_DEVICE_SITE:-/tmp/site}"
WHEELS="${MOEMT_DEVICE_WHEELS:-.device/wheels}"

shopt -s nullglob
wheels=("$WHEELS"/*.whl)
if [ ${#wheels[@]} -eq 0 ]; then
    echo "device_setup: no wheels in $WHEELS: run scripts/device_bundle.sh on a machine with" \
        "PyPI and carry .device/wheels" >&2
    exit 1
fi

pip_there() {
    # Byte-compiled at install: Python 3.12 warns of fairseq's invalid string escapes when it
    # compiles a module, and that belongs in the install's output, not in every command's.
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-index --no-deps \
        --no-cache-dir --upgrade --target "$SITE" "$@"
}
echo "device_setup: installing ${#wheels[@]} wheels into $SITE" >&2
pip_there "${wheels[@]}"
# moemt itself, from this checkout, built by the machine's setuptools (no isolated build
# environment: there is no index to fill it from).
echo "device_setup: installing moemt from $(pwd)" >&2
pip_there --no-build-isolation .

cat > "$SITE/activate" <<EOF
# source this file: the device bundle and moemt, ahead of the machine's own packages
export PYTHONPATH="$SITE\${PYTHONPATH:+:\$PYTHONPATH}"
export PATH="$SITE/bin:\$PATH"
EOF
# shellcheck disable=SC1091
source "$SITE/activate"

# The proofs. fairseq is imported after moe_mt, whose compat patches let it import on Python
# >= 3.11 at all (a bare `import fairseq` fails there: moe_mt/compat.py, patch 1).
"$PYTHON" -P - "$SITE" <<'EOF'
import importlib.metadata as md
import os
import sys

import moe_mt
import fairseq
import fairseq.data.data_utils_fast  # noqa: F401  (the Cython extension the data pipeline needs)
import fairseq.data.token_block_utils_fast  # noqa: F401
import numpy
import torch

moe_mt.register()
assert fairseq.__version__ == "0.12.2", fairseq.__version__
site = os.path.realpath(sys.argv[1])
for module in (moe_mt, fairseq):
    assert os.path.realpath(module.__file__).startswith(site + os.sep), module.__file__
print(
    f"device_setup: python {sys.version.split()[0]}, torch {torch.__version__} "
    f"(cuda available: {torch.cuda.is_available()}), numpy {numpy.__version__}, "
    f"fairseq {fairseq.__version__}, omegaconf {md.version('omegaconf')}, "
    f"hydra-core {md.version('hydra-core')}, sacrebleu {md.version('sacrebleu')}, "
    f"moemt {md.version('moemt')} from {moe_mt.__file__}"
)
EOF
moemt --help > /dev/null
echo "device_setup: ok (moemt --help runs); now: source $SITE/activate" >&2
