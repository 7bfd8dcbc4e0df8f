#!/usr/bin/env bash
# Build .device/wheels: every Python package moemt needs that the GPU machine lacks, as wheels for
# its interpreter (CPython 3.12, x86-64 Linux), so that scripts/device_setup.sh installs them
# there without a network. Runs here (it needs PyPI and python3.12); see docs/gpu.md.
#
# The GPU machine already has torch, numpy, sacrebleu, sentencepiece, typer, rich, matplotlib,
# cython, pyyaml, regex, tqdm, click and joblib. It lacks:
#   fairseq 0.12.2             no wheel on PyPI: built here from its sdist (below)
#   omegaconf 2.0.6, hydra-core 1.0.7, antlr4-python3-runtime 4.8   fairseq's config stack
#   bitarray                   imported by fairseq's data package (huffman coder)
#   sacremoses                 moemt's legacy tokenised BLEU and data.moses
#   subword-nmt                data.subword=bpe (pure Python; imported only by BPE prep and eval)
# ctranslate2 (38 MB) stays out: moemt imports it only for `moemt export` and eval.engine=
# ctranslate2, and the device check runs neither.
#
# fairseq is built as a cp312 wheel here, with numpy 2 headers, in a build environment without
# torch: its setup.py then builds only the extensions that need no torch (the Cython modules
# data_utils_fast and token_block_utils_fast, and the small C++ libbleu) and skips libbase,
# libnat and the CUDA kernels, which moemt never loads. So the GPU machine compiles nothing.
#
#   PYTHON312              the interpreter to build with (default python3.12); its minor version
#                          must be the GPU machine's (3.12): the extensions are built for it
#   MOEMT_DEVICE_BUILD     scratch folder for the build environment (default /tmp/moemt-device-build)
#
# CPU-heavy for a minute or two (fairseq's extensions): run it under the machine's CPU lock.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON312="${PYTHON312:-python3.12}"
BUILD="${MOEMT_DEVICE_BUILD:-/tmp/moemt-device-build}"
WHEELS=.device/wheels
# The GPU machine's numpy (KINDS.md): the Cython extensions are compiled against its headers.
NUMPY_VERSION=2.5.2

# Versions: those of moemt's tested Python 3.11 environment (setup.cfg's ranges, fairseq's pins).
BINARY_WHEELS=(omegaconf==2.0.6 hydra-core==1.0.7 bitarray==3.12.3 sacremoses==0.2.0
    subword-nmt==0.3.8)
SDIST_ONLY=(antlr4-python3-runtime==4.8) # pure Python, published as an sdist only
FAIRSEQ=fairseq==0.12.2

"$PYTHON312" -c 'import sys; assert sys.version_info[:2] == (3, 12), sys.version' || {
    echo "device_bundle: $PYTHON312 is not Python 3.12 (set PYTHON312)" >&2
    exit 1
}
rm -rf "$WHEELS"
mkdir -p "$WHEELS" "$BUILD"

# The build environment: pip < 24.1, which still downloads omegaconf 2.0.6 (newer pips refuse
# its metadata, below); numpy and Cython for fairseq's extensions; and no torch, so that
# fairseq's setup.py skips its torch extensions.
venv="$BUILD/venv"
if ! "$venv/bin/python" - "$NUMPY_VERSION" 2> /dev/null <<'PY'
import sys
from importlib.metadata import version

pip = tuple(int(part) for part in version("pip").split(".")[:2])
assert version("numpy") == sys.argv[1] and int(version("cython").split(".")[0]) >= 3
assert pip < (24, 1), pip
PY
then
    rm -rf "$venv"
    "$PYTHON312" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "pip<24.1"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "numpy==$NUMPY_VERSION" "cython>=3" "setuptools<82" wheel
fi
if "$venv/bin/python" -c "import torch" 2> /dev/null; then
    echo "device_bundle: $venv must not hold torch (fairseq would build its torch extensions)" >&2
    exit 1
fi
pip_build() { "$venv/bin/python" -m pip --disable-pip-version-check "$@"; }

echo "device_bundle: downloading ${BINARY_WHEELS[*]}" >&2
# The platform tags of the README's note: pip matches each manylinux tag exactly.
pip_build download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 -d "$WHEELS" "${BINARY_WHEELS[@]}"

echo "device_bundle: building ${SDIST_ONLY[*]} (pure Python)" >&2
pip_build wheel --quiet --no-deps -w "$WHEELS" "${SDIST_ONLY[@]}"

# omegaconf 2.0.6 declares `PyYAML (>=5.1.*)`, which pip >= 24.1 refuses to install ("invalid
# metadata"), --no-deps or not; the GPU machine's pip may be that new. The bundle's copy says
# `PyYAML (>=5.1)`, which admits the same versions, with its RECORD entry updated to match.
"$venv/bin/python" - "$WHEELS"/omegaconf-2.0.6-*.whl <<'PY'
import base64
import hashlib
import re
import sys
import zipfile

path = sys.argv[1]
with zipfile.ZipFile(path) as wheel:
    files = {info: wheel.read(info) for info in wheel.infolist()}
meta = next(i for i in files if i.filename.endswith(".dist-info/METADATA"))
record = next(i for i in files if i.filename.endswith(".dist-info/RECORD"))
fixed = re.sub(rb"\(>=([0-9.]+?)\.\*\)", rb"(>=\1)", files[meta])
if fixed != files[meta]:
    files[meta] = fixed
    digest = base64.urlsafe_b64encode(hashlib.sha256(fixed).digest()).rstrip(b"=")
    entry = b"%s,sha256=%s,%d" % (meta.filename.encode(), digest, len(fixed))
    name = re.escape(meta.filename.encode())
    files[record] = re.sub(rb"(?m)^" + name + rb",[^\r\n]*", lambda _: entry, files[record])
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for info, data in files.items():
            wheel.writestr(info, data)
requires = [r.decode() for r in re.findall(rb"Requires-Dist: ([^\r\n]*)", fixed)]
print(f"device_bundle: omegaconf 2.0.6 requires {requires}", file=sys.stderr)
PY

echo "device_bundle: downloading the $FAIRSEQ sdist and building its wheel (a minute or two)" >&2
rm -rf "$BUILD/sdist" "$BUILD/wheel"
pip_build download --quiet --no-deps --no-binary fairseq -d "$BUILD/sdist" "$FAIRSEQ"
pip_build wheel --quiet --no-deps --no-build-isolation -w "$BUILD/wheel" \
    "$BUILD"/sdist/fairseq-*.tar.gz
cp "$BUILD"/wheel/fairseq-*.whl "$WHEELS/"

# The wheel must hold the two Cython extensions moemt's data pipeline loads, and nothing that
# links torch.
"$venv/bin/python" - "$WHEELS" <<'PY'
import pathlib
import sys
import zipfile

wheel = next(pathlib.Path(sys.argv[1]).glob("fairseq-*.whl"))
so = sorted(n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".so"))
for needed in ("fairseq/data/data_utils_fast", "fairseq/data/token_block_utils_fast"):
    if not any(n.startswith(needed + ".cpython-312") for n in so):
        sys.exit(f"device_bundle: {wheel.name} lacks {needed}: {so}")
if any("libnat" in n or "libbase" in n for n in so):
    sys.exit(f"device_bundle: {wheel.name} holds torch extensions: {so}")
print("device_bundle: fairseq extensions:", ", ".join(so), file=sys.stderr)
PY

du -b "$WHEELS"/*.whl | awk '{printf "%8.1f KiB  %s\n", $1/1024, $2}'
echo "device_bundle: $(du -sh "$WHEELS" | cut -f1) in $WHEELS (carry it: run(carry=['.device/wheels']))"
