# appliance-trainer: DP-LoRA training on a GPU node.
# May: make data keys for training checkpoints and unwrap them again (resume); make data keys that seal a
# run's canary secrets for the registry (never unwrap them).
# May not: touch the adapter artifacts' keys, compute audit digests, rotate or create keys, read any secret.
# Training writes audit events, so its AppRole also carries appliance-audit-writer (audit-writer.hcl).
# Assumes transit at transit/ and the key prefix "appliance" (settings.keys.vault_*).

path "transit/datakey/plaintext/appliance-checkpoints" {
  capabilities = ["update"]
}
path "transit/decrypt/appliance-checkpoints" {
  capabilities = ["update"]
}
path "transit/datakey/plaintext/appliance-canaries" {
  capabilities = ["update"]
}
