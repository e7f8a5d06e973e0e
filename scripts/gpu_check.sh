#!/usr/bin/env bash
# The GPU check of issue 20, in one command that fits 5 minutes on one GPU: the CUDA tests (no host
# synchronization in any adapter's forward + backward) and the benchmark on the device, written to
# benchmarks/results-<device>/ with the card's name in every part's machine record.
#
#   scripts/gpu_check.sh                 # on a machine with a CUDA GPU and this checkout's environment
#   DEVICE=cpu SMOKE=1 scripts/gpu_check.sh   # the same steps on a CPU, tiny (about 40 s): to try the script
#
# PYTHON (default .venv/bin/python, else python3) must have torch with CUDA and the package installed.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE="${DEVICE:-cuda}"
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
OUT="${OUT:-benchmarks/results-${DEVICE}}"
if [ "$DEVICE" = cuda ]; then
  "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA GPU visible to torch (torch.cuda.is_available() is False): run on a GPU machine, or DEVICE=cpu SMOKE=1 to try the steps")'
  "$PYTHON" -c 'import torch; print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)'
fi
start=$(date +%s)
# the CUDA tests skip, with their reason, where there is no GPU
"$PYTHON" -m pytest -q -p no:cacheprovider tests/test_cuda.py
# every part but the CPU-only scaling sweep's figure; --smoke: tiny shapes, one repeat
"$PYTHON" -m omoe_lab.cli bench --device "$DEVICE" --part layer peers end_to_end scoring --out "$OUT" ${SMOKE:+--smoke}
echo "gpu_check: ${DEVICE}, $(( $(date +%s) - start )) s, results in ${OUT}/"
