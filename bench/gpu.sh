#!/usr/bin/env bash
# Single-GPU fine-tuning benchmark, prepared for a machine with no network.
#
#   bash bench/gpu.sh OUTDIR            # writes OUTDIR/gpu.json and OUTDIR/gpu.md within 8 minutes
#   bash bench/gpu.sh OUTDIR --smoke    # tiny model on CPU: checks the script, not the GPU
#
# Needs only what a CUDA trainer image has (torch, transformers, peft; PyYAML and tokenizers for the
# optional LLaMA-Factory case). Nothing is downloaded: the models are random-weight Llama shapes built
# from a config. Python: $PYTHON, else the repository's .venv, else python3.
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
# 8 minutes in all: the script stops starting new cases at 450 s; the hard limit catches a hung kernel.
exec timeout --kill-after=10 480 "$PY" "$HERE/gpu_bench.py" --out "$OUT" "$@"
