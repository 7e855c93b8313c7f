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
#   bash bench/gpu.sh --memory                   # the training stage's memory estimate against
#                                                # torch.cuda.max_memory_allocated (bench/memory_estimate.py), float32
#                                                # base, and nf4 when bitsandbytes is there (GPU_NF4=1 at --prepare)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=bench/wheels
# versions as pinned in pyproject.toml / installed with it (pip freeze of the project's venv)
MEMORY_DEPS="pydantic==2.14.3 pydantic-settings==2.16.3 annotated-types==0.8.0 typing-inspection==0.4.5
  structlog==26.1.0 python-dotenv==1.2.4 rich==15.0.0 pygments==2.21.0 markdown-it-py==4.3.0 mdurl==0.1.2
  attrs==26.1.0"
MEMORY_BINARY_DEPS="pydantic-core==2.50.4 greenlet==3.5.6"

if [[ "${1:-}" == "--prepare" ]]; then
  PIP=${PIP:-.venv/bin/pip}
  rm -rf "$WHEELS" && mkdir -p "$WHEELS"
  "$PIP" download opacus==1.6.0 --no-deps -d "$WHEELS"
  "$PIP" download opt-einsum==3.4.0 --no-deps -d "$WHEELS"
  "$PIP" wheel . --no-deps --no-build-isolation -w "$WHEELS"
  # the training stage itself (bench/memory_estimate.py runs TrainingRun): its small pure-Python dependencies
  for dist in $MEMORY_DEPS; do "$PIP" download "$dist" --no-deps -d "$WHEELS"; done
  if [[ -n "${GPU_PYTHON:-}" ]]; then
    platform=(--no-deps --only-binary=:all: --python-version "$GPU_PYTHON" --platform manylinux2014_x86_64 -d "$WHEELS")
    "$PIP" download scipy==1.17.1 "${platform[@]}"
    for dist in $MEMORY_BINARY_DEPS; do "$PIP" download "$dist" "${platform[@]}"; done
    if [[ -n "${GPU_NF4:-}" ]]; then "$PIP" download bitsandbytes==0.50.2 "${platform[@]}"; fi
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
if [[ " $* " == *" --memory "* ]]; then
  for dist in $MEMORY_DEPS $MEMORY_BINARY_DEPS; do
    offline_install "${dist%%==*}" || { echo "gpu.sh: --memory needs $dist (bash bench/gpu.sh --prepare)" >&2; exit 1; }
  done
  sizes=(--device cuda --batches 4,16 --max-length 512)
  if [[ " $* " == *" --smoke "* ]]; then sizes=(--device cpu --batches 2 --max-length 128); fi
  timeout 300 "$PY" bench/memory_estimate.py "${sizes[@]}" --json "${OUT:-/tmp}/memory_fp32.json"
  if "$PY" -c "import bitsandbytes" 2>/dev/null; then
    timeout 200 "$PY" bench/memory_estimate.py "${sizes[@]}" --quantize nf4 --json "${OUT:-/tmp}/memory_nf4.json"
  else
    echo "gpu.sh: bitsandbytes is not installed: the nf4 estimate is not measured (GPU_NF4=1 ... --prepare)" >&2
  fi
  exit 0
fi
"$PY" -c "import torch, transformers, peft, opacus; print('torch', torch.__version__, 'transformers',
transformers.__version__, 'peft', peft.__version__, 'opacus', opacus.__version__)"
exec timeout 450 "$PY" bench/gpu_overhead.py "$@"
