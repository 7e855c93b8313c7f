# appliance-registry: the adapter registry and publisher (registry add/verify/publish).
# May: make data keys for adapter artifacts, unwrap them to verify or publish, rewrap them after a rotation;
# unwrap (never make) the data keys that seal a run's canary secrets, to re-seal them with the adapter;
# sign the adapter lists it publishes with appliance-registry-signing and read that key's public keys.
# May not: touch training checkpoints' keys, compute audit digests, rotate or create keys, read secrets.
# The registry CLI writes audit events, so its AppRole also carries appliance-audit-writer (audit-writer.hcl).
# Assumes transit at transit/ and the key prefix "appliance" (settings.keys.vault_*).

path "transit/datakey/plaintext/appliance-artifacts" {
  capabilities = ["update"]
}
path "transit/decrypt/appliance-artifacts" {
  capabilities = ["update"]
}
path "transit/rewrap/appliance-artifacts" {
  capabilities = ["update"]
}
path "transit/decrypt/appliance-canaries" {
  capabilities = ["update"]
}

path "transit/sign/appliance-registry-signing" {
  capabilities = ["update"]
}
path "transit/keys/appliance-registry-signing" {
  capabilities = ["read"]
}
