#!/usr/bin/env bash
# One prepared device check (issue 21). Run from anywhere; it works in the repository root.
#
#   OUT=<dir> bash benchmarks/gpu_check.sh           on the GPU machine (one call of the device tool)
#   OUT=<dir> bash benchmarks/gpu_check.sh --smoke   the same steps on the CPU at toy sizes (CI runs this)
#
# Before a device run, on the development machine: `bash benchmarks/make_wheelhouse.sh` (the pinned diffusers and
# the dependencies the device image lacks, into wheelhouse/), and name `wheelhouse` in the device tool's `carry`.
#
# Writes exactly two files to $OUT: results.json (rewritten after every step) and gpu_check.log.
# Time: preflight < 30 s, internal deadline 480 s (smoke: 120 s), hard stop at 540 s, so a machine start plus two
# runs fit the 15 minutes of device time. Exit codes (also in results.json):
#    0 all steps ran and passed   1 a step failed or missed a parity check   2 bad usage
#   10 no CUDA   11 Triton missing / not compiled (smoke: not interpreted)   12 no CuPy   13 no diffusers
#   14 wheelhouse install failed   20 internal deadline or hard stop reached (results.json holds what ran)
# Status: no GPU run has happened yet; the smoke mode runs in CI.
set -euo pipefail

MODE=gpu
case "${1:-}" in
  "") ;;
  --smoke) MODE=smoke ;;
  -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
  *) echo "usage: OUT=<dir> bash benchmarks/gpu_check.sh [--smoke]" >&2; exit 2 ;;
esac

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-/tmp/diffcut_gpu_check}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
: > "$LOG"
PY="${PYTHON:-python3}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 DIFFCUT_NO_PROGRESS=1 PYTHONUNBUFFERED=1
if [ "$MODE" = smoke ]; then
  export TRITON_INTERPRET=1
  HARD_STOP="${GPU_CHECK_HARD_STOP:-300}"
else
  unset TRITON_INTERPRET
  HARD_STOP="${GPU_CHECK_HARD_STOP:-540}"
fi

echo "== gpu_check $MODE $(date -u +%FT%TZ) in $ROOT" >> "$LOG"
if [ "$MODE" = gpu ] && compgen -G "wheelhouse/*.whl" > /dev/null; then
  # no index, no network: only what was carried, plus what the image already has
  if ! timeout 90 "$PY" -m pip install -q --no-index --find-links wheelhouse \
        $(cat wheelhouse/requirements.txt 2>/dev/null || echo diffusers) >> "$LOG" 2>&1; then
    echo "exit 14: wheelhouse install failed (see $LOG)" | tee -a "$LOG"
    printf '{"mode": "%s", "status": "wheelhouse install failed", "exit_code": 14}\n' "$MODE" > "$OUT/results.json"
    exit 14
  fi
fi

set +e
timeout -k 10 "$HARD_STOP" "$PY" benchmarks/gpu_check.py --mode "$MODE" --out "$OUT" >> "$LOG" 2>&1
rc=$?
set -e
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  echo "hard stop after $HARD_STOP s (results.json holds the finished steps)" >> "$LOG"
  rc=20
fi
tail -n 30 "$LOG"
exit "$rc"
