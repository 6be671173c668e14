#!/usr/bin/env bash
# GPU inference throughput (bench/gpu.py): windows/s vs batch size, precision (fp32/bf16/fp16)
# and eager / torch.compile / CUDA graphs, for LSTMVAE W=64, d=8, hidden 64, latent 16.
#
#   bench/gpu.sh --out bench/results/gpu.json [any other bench/gpu.py option]
#
# Uses the active Python environment (or $PYTHON). Exits 3 when torch sees no CUDA device,
# 124 when the run passes its 5-minute cap (bench/gpu.py stops itself after --budget-s 240 s;
# the JSON given to --out is rewritten after every row, so a cut run keeps what it measured).
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PYTHON:-python}"
if ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "bench/gpu.sh: torch sees no CUDA device; nothing measured" >&2
    exit 3
fi
"$py" -c 'import torch; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}")' >&2
exec timeout --kill-after=10 300 "$py" bench/gpu.py --device cuda "$@"
