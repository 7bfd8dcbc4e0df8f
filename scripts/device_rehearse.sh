#!/usr/bin/env bash
# The CPU rehearsal of the GPU check: scripts/device_check.sh --cpu, with the GPU machine's
# interpreter and packages rebuilt here in a scratch venv, and the bundle installed into it by
# scripts/device_setup.sh exactly as there. See docs/gpu.md.
#
# The venv mirrors the machine (KINDS.md): Python 3.12, torch 2.11.0 (PyPI's Linux wheel, a CUDA
# 13 build: about 4.7 GB with its nvidia libraries; PyPI has no CPU-only torch), numpy 2.5.2,
# sentencepiece 0.2.2, and sacrebleu, typer, rich, matplotlib, cython, pyyaml, regex, tqdm,
# click, joblib, pytest, setuptools, wheel. None of moemt's other dependencies: those come from
# the bundle, as there.
#
#   PYTHON312             interpreter for the venv (default python3.12)
#   MOEMT_REHEARSAL_VENV  the venv (default /tmp/moemt-py312; made once, reused)
#   OUT                   the report's folder (default /tmp/moemt-device-out)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON312="${PYTHON312:-python3.12}"
VENV="${MOEMT_REHEARSAL_VENV:-/tmp/moemt-py312}"
MACHINE_PACKAGES=(
    torch==2.11.0 torchaudio==2.11.0 numpy==2.5.2 sentencepiece==0.2.2
    sacrebleu typer rich matplotlib cython pyyaml regex tqdm click joblib pytest setuptools wheel
)

if ! "$VENV/bin/python" -c "import torch, numpy, sacrebleu, typer, pytest
assert torch.__version__.split('+')[0] == '2.11.0' and numpy.__version__ == '2.5.2'" 2> /dev/null; then
    echo "device_rehearse: making $VENV like the GPU machine (several GB, minutes)" >&2
    rm -rf "$VENV"
    "$PYTHON312" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${MACHINE_PACKAGES[@]}"
fi
if ! ls .device/wheels/fairseq-*.whl > /dev/null 2>&1; then
    flock /tmp/moemt-cpu.lock env PYTHON312="$PYTHON312" bash scripts/device_bundle.sh
fi
# Heavy: under the machine's CPU lock, and never while /tmp/moemt-timing says timings run.
exec flock /tmp/moemt-cpu.lock nice -n 5 env PYTHON="$VENV/bin/python" bash -c '
    if [ -e /tmp/moemt-timing ]; then
        echo "device_rehearse: /tmp/moemt-timing exists (timings in progress): try later" >&2
        exit 1
    fi
    exec bash scripts/device_check.sh --cpu'
