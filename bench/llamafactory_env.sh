#!/usr/bin/env bash
# A separate virtualenv with LLaMA-Factory 0.9.5 for the side-by-side benchmarks (bench/*.py).
#
#   bash bench/llamafactory_env.sh          # creates bench/.work/lf-venv (idempotent; prints its python)
#
# torch is pinned to the version kubetune uses (2.13.0, CPU wheel here), so both tools run the same
# kernels. LLaMA-Factory imports torchaudio unconditionally but never uses it for text training:
# torchvision/torchaudio are removed (their wheels pin other torch builds) and a stub module stands in.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${LF_VENV:-$HERE/.work/lf-venv}"
STAMP="$VENV/.kubetune-lf-0.9.5-torch-2.13.0"
PY="$VENV/bin/python"

if [[ -f "$STAMP" ]]; then
  echo "$PY"
  exit 0
fi
mkdir -p "$(dirname "$VENV")"
test -x "$PY" || python3 -m venv "$VENV"
"$PY" -m pip install -q -U pip
"$PY" -m pip install -q "torch==2.13.0" "llamafactory==0.9.5" >&2
"$PY" -m pip uninstall -q -y torchvision torchaudio >&2 || true
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
mkdir -p "$SITE/torchaudio"
cat > "$SITE/torchaudio/__init__.py" <<'PYEOF'
"""Stub: LLaMA-Factory imports torchaudio at module level; text-only benchmarks never call it."""
__version__ = "0.0.0+kubetune-stub"


def __getattr__(name):
    raise ImportError(f"torchaudio is a stub in this benchmark venv (asked for {name!r})")
PYEOF
"$PY" -c "import llamafactory, torch; print('llamafactory', llamafactory.__version__, 'torch', torch.__version__)" >&2
touch "$STAMP"
echo "$PY"
