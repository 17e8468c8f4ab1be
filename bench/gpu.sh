#!/usr/bin/env bash
# Single-GPU fine-tuning benchmark of kubetune's own trainer, prepared for a machine with no network.
#
#   bash bench/gpu.sh OUTDIR            # writes OUTDIR/gpu.json and OUTDIR/gpu.md within 8 minutes
#   bash bench/gpu.sh OUTDIR --smoke    # the same product path on a tiny model on CPU (make test runs it)
#
# Needs what the trainer image has (kubetune with its trainer extra; flash-attn and liger-kernel when
# installed). Nothing is downloaded: the models are random-weight Llama shapes built from a config, the
# data is synthetic. Python: $PYTHON, else the repository's .venv, else python3.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${1:?usage: bench/gpu.sh OUTDIR [--smoke] [gpu_bench.py options]}"
shift
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif [[ -x "$HERE/../.venv/bin/python" ]]; then PY="$HERE/../.venv/bin/python"
else PY="python3"; fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONWARNINGS=ignore
export PYTORCH_CUDA_ALLOC_CONF="${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}"
mkdir -p "$OUT"
# 8 minutes in all on a GPU: the script stops starting new cases at 450 s; the hard limit catches a hung
# kernel. The CPU smoke run has no such budget (a loaded CI machine may need longer; it still ends).
LIMIT=480
for arg in "$@"; do [[ "$arg" == "--smoke" ]] && LIMIT=1800; done
exec timeout --kill-after=10 "$LIMIT" "$PY" "$HERE/gpu_bench.py" --out "$OUT" "$@"
