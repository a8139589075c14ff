#!/usr/bin/env bash
# Installs r1kit and its test tools into the current Python environment.
# On a machine without a GPU it first installs PyTorch's CPU build (torch==2.13.0, a local wheel here) so that
# pip never pulls the multi-GB CUDA packages; where a torch is already installed (e.g. your CUDA build), it is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    "$PY" -m pip install -q torch
  else
    "$PY" -m pip install -q torch==2.13.0 || "$PY" -m pip install -q torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
"$PY" -m pip install -q -e ".[dev]"
