# appliance-trainer: DP-LoRA training on a GPU node.
# May: make data keys for training checkpoints and unwrap them again (resume).
# May not: touch the adapter artifacts' keys, compute audit digests, sign audit checkpoints, rotate or create
# keys, read any secret.
# Assumes transit at transit/ and the key prefix "appliance" (settings.keys.vault_*).

path "transit/datakey/plaintext/appliance-checkpoints" {
  capabilities = ["update"]
}
path "transit/decrypt/appliance-checkpoints" {
  capabilities = ["update"]
}
