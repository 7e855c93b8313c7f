# appliance-auditor: a compliance officer or external auditor verifying an exported audit trail.
# May: read the audit signing key's public keys (every version) and verify checkpoint signatures; read the
# checkpoints the KV v2 witness holds (secret/appliance/audit-witness/), to compare the store with them.
# May not: sign, HMAC, unwrap or make data keys, rotate or create keys, read or write secrets.
# Assumes transit at transit/ and the key prefix "appliance" (settings.keys.vault_*).

path "transit/keys/appliance-audit-signing" {
  capabilities = ["read"]
}
path "transit/verify/appliance-audit-signing" {
  capabilities = ["update"]
}

path "secret/data/appliance/audit-witness/*" {
  capabilities = ["read"]
}
path "secret/metadata/appliance/audit-witness/*" {
  capabilities = ["list"]
}
path "secret/metadata/appliance/audit-witness" {
  capabilities = ["list"]
}
