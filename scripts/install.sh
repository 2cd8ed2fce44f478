#!/usr/bin/env bash
# Install fedprune and its development tools into a virtual environment (default: .venv).
#
# PyTorch is installed first and pinned, so nothing later replaces it:
# - a torch that is already importable in the environment (e.g. a GPU build you installed) is left alone;
# - on a machine with an NVIDIA driver, the registry's default torch build is installed;
# - otherwise the CPU build of torch 2.13.0 is installed, never the multi-GB CUDA packages. Set
#   FEDPRUNE_TORCH_INDEX_URL to PyTorch's CPU wheel index where your package index serves CUDA builds.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
venv="${FEDPRUNE_VENV:-.venv}"
python="${PYTHON:-python3}"

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
"${pip[@]}" install -q --upgrade pip

if ! "$venv/bin/python" -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "install: NVIDIA GPU found, installing torch with CUDA support" >&2
    "${pip[@]}" install -q torch numpy
  elif [ -n "${FEDPRUNE_TORCH_INDEX_URL:-}" ]; then
    "${pip[@]}" install -q torch==2.13.0 --index-url "$FEDPRUNE_TORCH_INDEX_URL"
    "${pip[@]}" install -q numpy
  else
    echo "install: no GPU, installing the CPU build of torch 2.13.0" >&2
    # numpy comes with torch: importing torch without it prints a warning.
    "${pip[@]}" install -q -c constraints/cpu.txt torch==2.13.0 numpy
  fi
fi

# Pin whatever torch is now installed, so resolving fedprune's dependencies cannot swap it.
pins="$(mktemp)"
trap 'rm -f "$pins"' EXIT
"$venv/bin/python" -c "import torch; print('torch==' + torch.__version__)" > "$pins"
# The editable install's notice ("folders ... with the same name as your package") is informational: the
# top-level folders here are the packages themselves.
PYTHONWARNINGS="ignore:Editable installation:UserWarning" "${pip[@]}" install -q -c "$pins" -e ".[dev]"
"$venv/bin/python" -c "import torch, transformers, fedprune; print(f'install: fedprune {fedprune.__version__}, torch {torch.__version__}, transformers {transformers.__version__}')"
