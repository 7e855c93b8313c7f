# appliance-gateway: the Litestar gateway.
# May: HMAC prompts/outputs for audit digests, read its own secrets (session secret, OIDC client secret).
# May not: unwrap or create any data key (adapters, checkpoints), rotate or create keys, read other secrets.
# The gateway writes an audit chain, so its AppRole also carries appliance-audit-writer (audit-writer.hcl).
# Assumes transit at transit/, KV v2 at secret/ and the key prefix "appliance" (settings.keys.vault_*).

path "transit/hmac/appliance-audit-hmac" {
  capabilities = ["update"]
}

path "secret/data/appliance/gateway/*" {
  capabilities = ["read"]
}
