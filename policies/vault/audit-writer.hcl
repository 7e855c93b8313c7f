# appliance-audit-writer: attached, next to its own policy, to every process that writes an audit chain (gateway,
# trainer, registry CLI): each chain's checkpoints are signed with the audit signing key.
# May: sign and verify with appliance-audit-signing, read its public keys (every version); add each signed
# checkpoint to the KV v2 witness (secret/appliance/audit-witness/<writer>/<seq>: create and read, list).
# May not: update, delete or destroy a witnessed checkpoint (add-only), anything else (no digests, no data keys,
# no rotation, no other secrets).
# Assumes transit at transit/ and the key prefix "appliance" (settings.keys.vault_*).

path "transit/sign/appliance-audit-signing" {
  capabilities = ["update"]
}
path "transit/verify/appliance-audit-signing" {
  capabilities = ["update"]
}
path "transit/keys/appliance-audit-signing" {
  capabilities = ["read"]
}

# The witness: a key per checkpoint, created once (cas=0); no "update" (a witnessed checkpoint cannot be
# overwritten), no "delete", and nothing on secret/delete/, secret/destroy/ or metadata deletion.
path "secret/data/appliance/audit-witness/*" {
  capabilities = ["create", "read"]
}
path "secret/metadata/appliance/audit-witness/*" {
  capabilities = ["list"]
}
path "secret/metadata/appliance/audit-witness" {
  capabilities = ["list"]
}
