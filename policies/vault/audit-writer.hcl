# appliance-audit-writer: attached, next to its own policy, to every process that writes an audit chain (gateway,
# trainer, registry CLI). Templated: the identity's entity metadata "audit_writer" (set when its AppRole is
# provisioned: the writer id the service records under, audit.writer_id, e.g. "gateway") scopes it to one writer.
# May: sign and verify with its own writer's key appliance-audit-signing-<writer> (its lanes <writer>.2, ... share
# it), read every writer's audit public keys (to verify the store), add each signed checkpoint of its own chains
# to the KV v2 witness (secret/appliance/audit-witness/<writer>/...: create and read, list).
# May not: sign for another writer (no key but its own), sign with the shared appliance-audit-signing, update,
# delete or destroy a witnessed checkpoint (add-only), anything else (no digests, no data keys, no rotation, no
# other secrets).
# Assumes transit at transit/, KV v2 at secret/ and the key prefix "appliance" (settings.keys.vault_*).

path "transit/sign/appliance-audit-signing-{{identity.entity.metadata.audit_writer}}" {
  capabilities = ["update"]
}
path "transit/verify/appliance-audit-signing-{{identity.entity.metadata.audit_writer}}" {
  capabilities = ["update"]
}
path "transit/keys/appliance-audit-signing-*" {
  capabilities = ["read"]
}

# The witness: a key per checkpoint, created once (cas=0); no "update" (a witnessed checkpoint cannot be
# overwritten), no "delete", and nothing on secret/delete/, secret/destroy/ or metadata deletion.
path "secret/data/appliance/audit-witness/{{identity.entity.metadata.audit_writer}}/*" {
  capabilities = ["create", "read"]
}
path "secret/metadata/appliance/audit-witness/{{identity.entity.metadata.audit_writer}}/*" {
  capabilities = ["list"]
}
path "secret/metadata/appliance/audit-witness/{{identity.entity.metadata.audit_writer}}" {
  capabilities = ["list"]
}
