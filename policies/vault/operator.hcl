# appliance-operator: the hospital's appliance operator (appliance keyservice status|create|rotate).
# May: create, read, list, configure and rotate the appliance's transit keys; rewrap (ciphertext in, ciphertext
# out, no plaintext); write (not read) the appliance's secrets; issue AppRole secret ids for the services.
# May not: unwrap or make data keys, sign, HMAC, export, back up, trim or delete any key, read secrets, change
# AppRole roles or policies.
# Assumes transit at transit/, KV v2 at secret/, AppRole at auth/approle/ and the key prefix "appliance".

path "transit/keys" {
  capabilities = ["list"]
}
# Covers transit/keys/appliance-<name> (create, read) and .../rotate and .../config (update).
path "transit/keys/appliance-*" {
  capabilities = ["create", "read", "update"]
}
path "transit/rewrap/appliance-*" {
  capabilities = ["update"]
}

path "secret/data/appliance/*" {
  capabilities = ["create", "update"]
}
path "secret/metadata/appliance/*" {
  capabilities = ["list", "read"]
}

path "auth/approle/role/appliance-gateway/secret-id" {
  capabilities = ["update"]
}
path "auth/approle/role/appliance-trainer/secret-id" {
  capabilities = ["update"]
}
path "auth/approle/role/appliance-registry/secret-id" {
  capabilities = ["update"]
}
path "auth/approle/role/appliance-auditor/secret-id" {
  capabilities = ["update"]
}

# Separation of duties: whatever else this token holds, never plaintext, key material or key destruction.
path "transit/decrypt/*" {
  capabilities = ["deny"]
}
path "transit/datakey/*" {
  capabilities = ["deny"]
}
path "transit/sign/*" {
  capabilities = ["deny"]
}
path "transit/hmac/*" {
  capabilities = ["deny"]
}
path "transit/export/*" {
  capabilities = ["deny"]
}
path "transit/backup/*" {
  capabilities = ["deny"]
}
path "transit/keys/+/trim" {
  capabilities = ["deny"]
}
path "transit/keys/+/import" {
  capabilities = ["deny"]
}
path "transit/keys/+/import_version" {
  capabilities = ["deny"]
}
