#!/usr/bin/env bash
# `make demo`: the main job end to end on embedded defaults (no GPU, no Vault, no IdP):
# base model -> prepared dataset -> DP-LoRA training -> registry (two approvers) -> publish -> embedded engine
# -> gateway with a local demo identity provider. Re-running reuses what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

export APPLIANCE_DATA_DIR="${APPLIANCE_DATA_DIR:-$PWD/var/demo}"
export APPLIANCE_SERVING__URL="${APPLIANCE_SERVING__URL:-http://127.0.0.1:8081}"
A="$PWD/.venv/bin/appliance"
D="$APPLIANCE_DATA_DIR"
STEPS="${DEMO_STEPS:-16}"
mkdir -p "$D/demo-secrets" && chmod 700 "$D/demo-secrets"
say() { printf '\n\033[1;36m== %s\033[0m\n' "$*"; }

say "1/7 base model: SmolLM2-135M-Instruct from its GGUF (no hub)"
base="$D/models/smollm2-135m"
[ -f "$base/config.json" ] || "$A" models bootstrap smollm2-135m --out "$base"

say "2/7 intake: validate, scrub PHI, deduplicate, split (synthetic data, no real patients)"
dataset="$D/datasets/clinical"
[ -f "$dataset/manifest.json" ] || "$A" data prepare examples/synthetic_clinical.jsonl --out "$dataset"

published=$("$A" registry list --json --name triage --status production 2>/dev/null | .venv/bin/python -c \
  'import json,sys; v=[a["version"] for a in json.load(sys.stdin)]; print(max(v) if v else "")' || true)
if [ -n "$published" ] && { [ ! -f "$D/serving/embedded/adapters.json.sig" ] || ! .venv/bin/python -c \
    'import json,sys; sys.exit(any("config_sha256" not in a for a in json.load(open(sys.argv[1]))["adapters"]))' \
    "$D/serving/embedded/adapters.json" 2>/dev/null; }; then
  echo "$D was made by an older version of the appliance (its publication has no config digest or no registry"
  echo "signature, which the engine now requires). Move it aside or delete it (it holds only synthetic demo data),"
  echo "then run make demo again."
  exit 1
fi
if [ -n "$published" ] && [ -z "${DEMO_RETRAIN:-}" ]; then
  # A re-run reuses the published adapter: a second epsilon-8 run would exceed the dataset's budget (10).
  say "3-5/7 triage v$published is already trained, approved and published (DEMO_RETRAIN=1 to train again)"
  version="$published"
else
  say "3/7 training: DP-LoRA with Opacus (epsilon 8), canaries, privacy-budget ledger, evaluation against the base"
  # The DP planner picks the logical batch, noise multiplier and learning rate from the dataset's privacy units and
  # epsilon; the demo caps the steps (DEMO_STEPS) so that training fits ~10 minutes on 2 cores.
  run="$D/runs/triage-$(date +%Y%m%d-%H%M%S)"
  train_args=(--dataset "$dataset" --base "$base" --out "$run" --epsilon 8 --steps "$STEPS" --physical-batch-size 8
    --max-length 192 --target-modules q_proj,v_proj --canaries 2 --canary-repetitions 1,8 --canary-candidates 64
    --trained-by demo-trainer)
  "$A" train "${train_args[@]}" --plan-only
  "$A" train "${train_args[@]}"
  "$A" ledger show

  say "base model vs adapter on the eval split (what the approvers' quality gate reads)"
  .venv/bin/python - "$run/metadata.json" <<'PY'
import json, sys
e = json.load(open(sys.argv[1]))["evaluation"]
def line(name, f):
    em = "-" if f["exact_match"] is None else f"{f['exact_match']:.3f} [{f['exact_match_ci'][0]:.3f}, {f['exact_match_ci'][1]:.3f}]"
    print(f"  {name:<8} loss {f['loss']:.4f} [{f['loss_ci'][0]:.4f}, {f['loss_ci'][1]:.4f}]   exact match {em}")
print(f"  {e['n']} eval records, {e['exact_match_n']} with short answers (bootstrap 95% intervals)")
line("base", e["base"]); line("adapter", e["adapter"])
d = e["delta"]
print(f"  delta    loss {d['loss']:+.4f}   exact match {'-' if d['exact_match'] is None else format(d['exact_match'], '+.3f')}")
PY

  say "4/7 registry: register with provenance, encrypt at rest, two-person approval"
  if [ ! -f "$D/demo-secrets/admin.token" ]; then
    "$A" registry grant demo-admin --role admin --token-out "$D/demo-secrets/admin.token"
    for who in demo-approver-1 demo-approver-2; do
      "$A" registry grant "$who" --role approver --actor demo-admin --token-file "$D/demo-secrets/admin.token" \
        --token-out "$D/demo-secrets/$who.token"
    done
  fi
  "$A" registry add "$run" --name triage --actor demo-trainer
  version=$("$A" registry list --json 2>/dev/null | .venv/bin/python -c \
    'import json,sys; print(max(a["version"] for a in json.load(sys.stdin) if a["name"]=="triage"))')
  for who in demo-approver-1 demo-approver-2; do
    "$A" registry approve triage "$version" --actor "$who" --token-file "$D/demo-secrets/$who.token" \
      --comment "demo approval"
  done

  say "5/7 publish to the embedded engine"
  "$A" registry publish triage "$version" --target embedded --actor demo-admin --no-reload  # the engine starts below
  "$A" registry list
fi

say "6/7 the embedded TGI-protocol engine"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; }
trap cleanup EXIT INT TERM
"$A" serve --base "$base" --adapters "$D/serving/embedded/adapters.json" --host 127.0.0.1 --port 8081 \
  > "$D/engine.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 120); do curl -fs http://127.0.0.1:8081/health >/dev/null && break; sleep 1; done
curl -fs http://127.0.0.1:8081/health >/dev/null || { echo "engine did not start: see $D/engine.log"; exit 1; }

say "7/7 the gateway with a LOCAL DEMO identity provider (not for production)"
"$A" gateway demo --adapter triage --version "$version"
