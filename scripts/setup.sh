#!/usr/bin/env bash
# Create .venv (if needed) and install moemt into it, torch first and pinned.
#
# torch is installed alone and pinned before anything else: a bare `torch` requirement (ours or
# fairseq's) would otherwise let the resolver pull a multi-GB CUDA build. pip is never upgraded:
# pip >= 24.1 refuses omegaconf 2.0.6, which fairseq 0.12.2 requires.
#   MOEMT_TORCH_VERSION  torch version to pin (default 2.13.0)
#   PYTHON               interpreter for the venv (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."

TORCH_VERSION="${MOEMT_TORCH_VERSION:-2.13.0}"
PYTHON="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.moemt-installed"

# Skip the install when nothing it depends on changed since the last one.
want="$(cat setup.cfg pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1) torch==$TORCH_VERSION"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$VENV/bin/python" -c "import moe_mt" 2>/dev/null; then
    exit 0
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip_install() { "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$@"; }
echo "setup: installing torch==$TORCH_VERSION, fairseq 0.12.2 and moemt into $VENV (a few minutes the first time)" >&2
pip_install "torch==$TORCH_VERSION"
# torch is named again, pinned, so that no resolver step may replace it.
pip_install -e ".[dev]" "torch==$TORCH_VERSION"
"$VENV/bin/python" -c "import torch, moe_mt, fairseq; assert torch.__version__.split('+')[0] == '$TORCH_VERSION', torch.__version__"
echo "$want" > "$STAMP"
