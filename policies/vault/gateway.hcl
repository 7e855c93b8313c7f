# appliance-gateway: the Litestar gateway and its audit writer.
# May: HMAC prompts/outputs for audit digests, sign and verify audit checkpoints, read the signing key's public
# keys, read its own secrets (session secret, OIDC client secret).
# May not: unwrap or create any data key (adapters, checkpoints), rotate or create keys, read other secrets.
# Assumes transit at transit/, KV v2 at secret/ and the key prefix "appliance" (settings.keys.vault_*).

path "transit/hmac/appliance-audit-hmac" {
  capabilities = ["update"]
}

path "transit/sign/appliance-audit-signing" {
  capabilities = ["update"]
}
path "transit/verify/appliance-audit-signing" {
  capabilities = ["update"]
}
path "transit/keys/appliance-audit-signing" {
  capabilities = ["read"]
}

path "secret/data/appliance/gateway/*" {
  capabilities = ["read"]
}
