# luks-provisioner: what the provisioning run may read to unlock the data volumes (ansible/roles/luks reads the
# passphrases from KV v2 on the control node). Issue it as a short-lived token to the operator running Ansible.
path "secret/data/luks/*" {
  capabilities = ["read"]
}
path "secret/metadata/luks/*" {
  capabilities = ["list"]
}
