# appliance-auditor: a compliance officer or external auditor verifying an exported audit trail.
# May: read every writer's audit signing key's public keys (every version) and verify checkpoint signatures with
# them; read the checkpoints the KV v2 witness holds (secret/appliance/audit-witness/), to compare the store with.
# May not: sign, HMAC, unwrap or make data keys, rotate or create keys, read or write other secrets, change the
# witness.
# Assumes transit at transit/ and the key prefix "appliance" (settings.keys.vault_*).

path "transit/keys/appliance-audit-signing" {
  capabilities = ["read"]
}
path "transit/keys/appliance-audit-signing-*" {
  capabilities = ["read"]
}
path "transit/verify/appliance-audit-signing" {
  capabilities = ["update"]
}
path "transit/verify/appliance-audit-signing-*" {
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
