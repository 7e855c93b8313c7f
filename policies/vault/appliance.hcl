# appliance: what the appliance's services may do (AppRole "appliance", installed by ansible/roles/vault).
# Transit keys are "appliance-<purpose>" (appliance/keys); the vault role creates them, so this policy cannot
# create, delete, export or reconfigure keys. Secrets live in KV v2 under secret/appliance/.

# Envelope encryption: fresh data keys, unwrap, rewrap to the newest key version.
path "transit/datakey/plaintext/appliance-*" {
  capabilities = ["update"]
}
path "transit/decrypt/appliance-*" {
  capabilities = ["update"]
}
path "transit/rewrap/appliance-*" {
  capabilities = ["update"]
}

# Audit digests and checkpoint signatures.
path "transit/hmac/appliance-*" {
  capabilities = ["update"]
}
path "transit/sign/appliance-*" {
  capabilities = ["update"]
}
path "transit/verify/appliance-*" {
  capabilities = ["update"]
}

# Key metadata (versions, public keys of signing keys) and the list of keys.
path "transit/keys/appliance-*" {
  capabilities = ["read"]
}
path "transit/keys" {
  capabilities = ["list"]
}

# The appliance's own secrets (session secret, OIDC client secret).
path "secret/data/appliance/*" {
  capabilities = ["create", "read", "update"]
}
path "secret/metadata/appliance/*" {
  capabilities = ["read", "list"]
}
