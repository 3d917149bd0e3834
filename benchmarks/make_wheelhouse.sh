#!/usr/bin/env bash
# Download the wheels the GPU machine lacks into wheelhouse/ (gitignored), to be carried to it with the device
# tool's `carry: ["wheelhouse"]`; benchmarks/gpu_check.sh installs them from there without network:
#     pip install --no-index --find-links wheelhouse -r wheelhouse/requirements.txt
#
# The device image has torch 2.11+cu130, triton 3.6, cupy-cuda13x 14.2 and onnxruntime (CPU), but no diffusers.
# Pinned: the diffusers this repository is tested with, and the huggingface-hub / safetensors it resolves to, so
# that what runs on the GPU is what ran in CI. Wheels for each Python in PY_VERSIONS (the image's is not known
# in advance: gpu_check's preflight records it); packages the image has through torch or CuPy are dropped.
# The device tool carries 64 MiB in all: the script fails above MAX_MIB.
#
#   bash benchmarks/make_wheelhouse.sh                        # Python 3.10-3.13, x86_64 manylinux
#   PY_VERSIONS="3.12" bash benchmarks/make_wheelhouse.sh     # one Python: a smaller folder
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
PY_VERSIONS="${PY_VERSIONS:-3.10 3.11 3.12 3.13}"
MAX_MIB="${MAX_MIB:-56}"
PINS=("diffusers==0.42.1" "huggingface-hub==2.4.0" "safetensors==0.8.0")
# On the image already (torch's and CuPy's own dependencies): not carried.
ON_IMAGE=(numpy filelock typing_extensions fsspec jinja2 markupsafe sympy mpmath networkx setuptools)

rm -rf wheelhouse
mkdir -p wheelhouse
printf '%s\n' "${PINS[@]}" > wheelhouse/requirements.txt
for v in $PY_VERSIONS; do
  echo "== wheels for Python $v"
  timeout 300 "$PY" -m pip download -q -d wheelhouse --only-binary=:all: --implementation cp \
    --python-version "$v" --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any "${PINS[@]}"
done
for name in "${ON_IMAGE[@]}"; do
  rm -f wheelhouse/"$name"-*.whl wheelhouse/"${name^}"-*.whl
done
size_kib=$(du -sk wheelhouse | cut -f1)
echo "wheelhouse: $(ls wheelhouse/*.whl | wc -l) wheels, $((size_kib / 1024)) MiB"
if [ "$size_kib" -gt $((MAX_MIB * 1024)) ]; then
  echo "wheelhouse is above $MAX_MIB MiB: set PY_VERSIONS to the device's Python only" >&2
  exit 1
fi
