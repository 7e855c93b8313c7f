#!/usr/bin/env bash
# DP vs non-DP LoRA on one GPU: a random-initialised 1.1B Llama (TinyLlama's shape), sequence 512, logical batch
# 256 in physical batches of 16, bf16, Opacus hooks vs ghost clipping; step time and peak memory, printed as
# ratios (bench/gpu_overhead.py). About 5 minutes on one H100 (within 8 with the install).
#
# The GPU machine has torch, transformers and peft but no network: opacus and this project travel as wheels in
# bench/wheels (gitignored). On a machine with network, from the repository root:
#   bash bench/gpu.sh --prepare                  # opacus 1.6.0 (--no-deps) + the project wheel into bench/wheels
#   GPU_PYTHON=3.12 bash bench/gpu.sh --prepare  # also scipy for that Python (opacus imports it; bring it if the
#                                                # GPU machine lacks it: the script says so)
# then bring bench/wheels along (the device tool: carry ["bench/wheels"]) and run there:
#   bash bench/gpu.sh                            # extra options go to bench/gpu_overhead.py (--json FILE, ...)
#   bash bench/gpu.sh --smoke                    # CPU, tiny config: checks the script on any machine
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=bench/wheels

if [[ "${1:-}" == "--prepare" ]]; then
  PIP=${PIP:-.venv/bin/pip}
  rm -rf "$WHEELS" && mkdir -p "$WHEELS"
  "$PIP" download opacus==1.6.0 --no-deps -d "$WHEELS"
  "$PIP" download opt-einsum==3.4.0 --no-deps -d "$WHEELS"
  "$PIP" wheel . --no-deps --no-build-isolation -w "$WHEELS"
  if [[ -n "${GPU_PYTHON:-}" ]]; then
    "$PIP" download scipy==1.17.1 --no-deps --only-binary=:all: --python-version "$GPU_PYTHON" \
      --platform manylinux2014_x86_64 -d "$WHEELS"
  fi
  ls -la "$WHEELS"
  exit 0
fi

installed() { "$PY" -m pip show "$1" >/dev/null 2>&1; }
offline_install() {  # $1: distribution name; installs it from bench/wheels without its dependencies
  if installed "$1"; then return 0; fi
  if ! ls "$WHEELS"/"${1//-/_}"-*.whl >/dev/null 2>&1; then
    echo "gpu.sh: $1 is not installed and no $1 wheel is in $WHEELS (run: bash bench/gpu.sh --prepare)" >&2
    return 1
  fi
  "$PY" -m pip install --no-index --no-deps --find-links "$WHEELS" "$1"
}

if [[ " $* " != *" --smoke "* ]]; then
  "$PY" -c "import torch, transformers, peft; assert torch.cuda.is_available(), 'no CUDA device'" \
    || { echo "gpu.sh: needs torch with CUDA, transformers and peft" >&2; exit 1; }
fi
offline_install opacus
offline_install opt-einsum
offline_install scipy || { echo "gpu.sh: opacus imports scipy: GPU_PYTHON=<x.y> bash bench/gpu.sh --prepare" >&2; exit 1; }
offline_install appliance
"$PY" -c "import torch, transformers, peft, opacus; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'peft', peft.__version__, 'opacus', opacus.__version__)"
exec timeout 450 "$PY" bench/gpu_overhead.py "$@"
