# appliance-audit-writer: attached, next to its own policy, to every process that writes an audit chain (gateway,
# trainer, registry CLI): each chain's checkpoints are signed with the audit signing key.
# May: sign and verify with appliance-audit-signing, read its public keys (every version).
# May not: anything else (no digests, no data keys, no rotation, no secrets).
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
