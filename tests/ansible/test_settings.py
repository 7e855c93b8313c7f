"""The appliance role's appliance.toml and secrets file, rendered by Ansible for every appliance host of each
inventory (and with the role's optional branches on), load as the appliance loads them: every key they write is a
setting the appliance knows (unknown keys are refused, so a template that wrote one would stop the service)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.ansible._render import ROLES, Template, render

pytestmark = [pytest.mark.ansible, pytest.mark.slow]


# The appliance role's settings and secrets file for every host that runs it, and the gateway's unit.
SETTINGS_FILES = [
    Template("appliance/templates/appliance.toml.j2", "toml"),
    Template("appliance/templates/appliance.env.j2", "env", no_log=True),
    Template(
        "appliance/templates/unit.service.j2",
        "gateway.service",
        vars={
            "appliance_unit": "appliance-gateway",
            "appliance_unit_description": "the gateway",
            "appliance_unit_exec": "/bin/true",
            "appliance_unit_audit_writer": "{{ appliance_gateway_audit_writer }}",
        },
    ),
]
# The role's optional branches: the gateway's TLS files, the shared state store with mutual TLS, secrets.
BRANCHES = {
    "appliance_gateway_tls_cert_src": "/control/gateway.pem",
    "appliance_gateway_tls_key_src": "/control/gateway.key",
    "appliance_state_store": "redis",
    "appliance_gateway_workers": 2,
    "redis_gateway_password": "test-only-password",
    "appliance_redis_ca_src": "/control/redis-ca.pem",
    "appliance_redis_client_cert_src": "/control/redis-client.pem",
    "appliance_redis_client_key_src": "/control/redis-client.key",
    "appliance_secrets": {"APPLIANCE_KEYS__VAULT_ROLE_ID": "role", "APPLIANCE_KEYS__VAULT_SECRET_ID": "secret"},
    "appliance_publication_public_keys_src": "/control/publication-keys.json",
}


def _unit_environment(unit: Path) -> dict[str, str]:
    """The variables a rendered unit's Environment= lines set (space-separated assignments, as systemd reads them)."""
    env: dict[str, str] = {}
    for line in unit.read_text().splitlines():
        if line.startswith("Environment="):
            env.update(item.partition("=")[::2] for item in line.removeprefix("Environment=").split())
    return env


def _render(inventory: str, extra: dict[str, object], out: Path) -> list[str]:
    """ansible-playbook --tags render; the hosts it rendered for."""
    render(inventory, "vault:gateway:gpu_nodes", out, ["appliance"], SETTINGS_FILES, extra)
    return sorted(p.stem for p in out.glob("*.toml"))


@pytest.mark.parametrize(
    ("inventory", "hosts", "extra", "writer"),
    [
        # the hospital's Redis password comes from Vault KV there; given here instead
        (
            "inventories/hospital/hosts.yml",
            ["gpu1", "gpu2", "gpu3", "gw1", "vault1"],
            {"redis_gateway_password": "pw"},
            "gateway",
        ),
        ("inventories/single-node/hosts.yml", ["node1"], {}, "gateway"),
        ("inventories/single-node/hosts.yml", ["node1"], BRANCHES, "gateway"),
        # the Molecule scenario's inventory (its chroot connection replaced: only templates are rendered); it uses
        # the local keystore, whose one key signs every chain: the settings' writer id stays
        ("molecule/inventory/single-node.yml", ["node1"], {"ansible_connection": "local"}, None),
    ],
    ids=["hospital", "single-node", "single-node-all-branches", "molecule"],
)
def test_rendered_settings_load(
    inventory: str,
    hosts: list[str],
    extra: dict[str, object],
    writer: str | None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each appliance host's rendered appliance.toml, its secrets file and the gateway unit's environment load
    without an unknown key; on Vault the gateway writes as the writer its AppRole was provisioned with, witnessed
    in Vault."""
    from appliance.config import AuditSettings, load_settings

    assert _render(inventory, extra, tmp_path) == hosts
    for host in hosts:
        env_lines = (tmp_path / f"{host}.env").read_text().splitlines()
        secrets = dict(line.split("=", 1) for line in env_lines if line and not line.startswith("#"))
        unit_env = _unit_environment(tmp_path / f"{host}.gateway.service")
        assert unit_env.get("APPLIANCE_AUDIT__WRITER_ID") == writer
        with monkeypatch.context() as scoped:
            for key, value in {**secrets, **unit_env}.items():
                if key.startswith("APPLIANCE_") and key != "APPLIANCE_CONFIG":
                    scoped.setenv(key, value)
            settings = load_settings(config_file=tmp_path / f"{host}.toml")
        assert settings.environment == "production"
        assert settings.audit.writer_id == (writer or AuditSettings().writer_id)
        assert settings.audit.witness_vault is (settings.keys.backend == "vault")
        assert (settings.keys.backend == "vault") is (writer is not None)
        if extra is BRANCHES:
            assert settings.gateway.tls_cert_file and settings.gateway.redis_client_key
            assert settings.gateway.redis_url is not None and settings.keys.vault_role_id == "role"
        # pinned where the inventory gives the exported key file (hospital, single-node), not in Molecule
        pinned = "/etc/appliance/publication-keys.json" if writer is not None else None
        assert settings.serving.publication_public_keys == pinned


def test_each_audit_writer_is_the_one_its_approle_was_provisioned_with() -> None:
    """The appliance role's writer per service is the vault role's audit_writer of that service's AppRole (the
    templated audit-writer policy signs only for that name)."""
    import yaml

    appliance = yaml.safe_load((ROLES / "appliance/defaults/main.yml").read_text())["appliance_audit_writers"]
    vault = yaml.safe_load((ROLES / "vault/defaults/main.yml").read_text())["vault_audit_writers"]
    assert {f"appliance-{service}": writer for service, writer in appliance.items()} == vault


def test_a_misspelt_key_in_appliance_settings_stops_the_appliance(tmp_path: Path) -> None:
    """A misspelt key an operator puts into appliance_settings reaches appliance.toml and is refused there."""
    from appliance.config import load_settings
    from appliance.errors import ConfigError

    misspelt = {"appliance_settings": {"environment": "production", "gateway": {"secure_cookie": True}}}
    assert _render("inventories/single-node/hosts.yml", misspelt, tmp_path) == ["node1"]
    with pytest.raises(ConfigError, match=r'section \[gateway\] has no key "secure_cookie".*"secure_cookies"'):
        load_settings(config_file=tmp_path / "node1.toml")
