#!/usr/bin/env bash
# `make demo`: the main job on embedded defaults (no GPU, no Vault, no IdP).
set -euo pipefail
cd "$(dirname "$0")/.."
export APPLIANCE_DATA_DIR="${APPLIANCE_DATA_DIR:-var/demo}"
A=".venv/bin/appliance"
mkdir -p "$APPLIANCE_DATA_DIR"
base="$APPLIANCE_DATA_DIR/models/smollm2-135m"
[ -f "$base/config.json" ] || $A models bootstrap smollm2-135m --out "$base"
