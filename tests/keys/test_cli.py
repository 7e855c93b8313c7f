"""`appliance keyservice ...` against the local keystore and a real OpenBao: status, create, rotate, export,
secrets, and the audit record of each change."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appliance.cli.keyservice import app
from appliance.config import Settings, load_settings
from appliance.errors import VaultUnreachable
from appliance.keys import LocalKeyService, verify_offline
from tests.conftest import REPO_ROOT
from tests.fixtures.openbao import OpenBaoServer

runner = CliRunner()


def invoke(settings: Settings, *args: str, stdin: str | None = None):  # type: ignore[no-untyped-def]
    """Run the sub-app with these settings already loaded (as the root callback would)."""
    return runner.invoke(app, list(args), obj={"settings": settings}, input=stdin)


def audit_text(settings: Settings) -> str:
    """Everything the audit trail wrote, as text."""
    return "".join(p.read_text(errors="replace") for p in settings.audit_dir.rglob("*") if p.is_file())


def test_status_lists_keys_without_material(settings: Settings) -> None:
    """status --json names each key with its type and versions and contains no key material."""
    keys = LocalKeyService(settings.keystore_path)
    keys.data_key("artifacts")
    keys.sign("audit-signing", b"x")
    result = invoke(settings, "status", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["backend"] == "local" and not data["sealed"]
    assert {k["name"]: k["type"] for k in data["keys"]} == {"artifacts": "aes256-gcm96", "audit-signing": "ed25519"}
    material = json.loads(settings.keystore_path.read_text())["keys"]["artifacts"]["versions"]["1"]["aes"]
    assert material not in result.output
    assert "artifacts" in invoke(settings, "status").output


def test_rotate_is_audited_and_bumps_the_version(settings: Settings) -> None:
    """rotate makes version 2 current and records keys.rotate in the audit trail."""
    LocalKeyService(settings.keystore_path).data_key("checkpoints")
    result = invoke(settings, "rotate", "checkpoints")
    assert result.exit_code == 0, result.output
    assert "version 2" in result.output
    info = {k.name: k for k in LocalKeyService(settings.keystore_path).status().keys}
    assert info["checkpoints"].latest_version == 2
    assert "keys.rotate" in audit_text(settings)


def test_rotate_unknown_key_fails_and_records_the_failure(settings: Settings) -> None:
    """Rotating a key that does not exist exits with NotFound, and the failure is in the audit trail."""
    result = invoke(settings, "rotate", "nonexistent")
    assert result.exit_code != 0
    assert type(result.exception).__name__ == "NotFound"
    text = audit_text(settings)
    assert "keys.rotate" in text and "NOT_FOUND" in text


def test_create_then_public_keys_export_verifies_offline(settings: Settings, tmp_path: Path) -> None:
    """create makes a signing key; public-keys exports every version, enough to verify a signature offline."""
    assert invoke(settings, "create", "audit-signing", "--type", "ed25519").exit_code == 0
    keys = LocalKeyService(settings.keystore_path)
    old = keys.sign("audit-signing", b"checkpoint")
    assert invoke(settings, "rotate", "audit-signing").exit_code == 0
    out = tmp_path / "public.json"
    result = invoke(settings, "public-keys", "audit-signing", "--out", str(out))
    assert result.exit_code == 0, result.output
    doc = json.loads(out.read_text())
    publics = {int(v): base64.b64decode(k) for v, k in doc["public_keys"].items()}
    assert set(publics) == {1, 2}
    assert verify_offline(publics, b"checkpoint", old)
    assert "keys.create" in audit_text(settings)


def test_secret_set_reads_stdin_not_argv(settings: Settings) -> None:
    """secret-set takes the value from stdin, stores it, and neither echoes it nor writes it to the audit trail."""
    result = invoke(settings, "secret-set", "gateway/oidc", "client_secret", stdin="very-secret-value\n")
    assert result.exit_code == 0, result.output
    assert "very-secret-value" not in result.output
    assert LocalKeyService(settings.keystore_path).get_secret("gateway/oidc") == {"client_secret": "very-secret-value"}
    text = audit_text(settings)
    assert "keys.secret_set" in text and "very-secret-value" not in text


@pytest.mark.openbao
def test_vault_status_and_rotate(openbao: OpenBaoServer, data_dir: Path, unique_prefix: Callable[[], str]) -> None:
    """Against OpenBao, status reports unsealed and lists the prefix's keys; rotate bumps the transit version."""
    keys = {
        "backend": "vault",
        "vault_addr": openbao.addr,
        "vault_token": openbao.root_token,
        "vault_key_prefix": unique_prefix(),
    }
    settings = load_settings(data_dir=data_dir, policies_dir=REPO_ROOT / "policies", keys=keys)
    assert invoke(settings, "create", "artifacts").exit_code == 0
    assert invoke(settings, "rotate", "artifacts").exit_code == 0
    data = json.loads(invoke(settings, "status", "--json").output)
    assert data["backend"] == "vault" and data["sealed"] is False
    versions = {k["name"]: k["latest_version"] for k in data["keys"]}
    assert versions["artifacts"] == 2  # audit-signing is there too: the audit trail signed its checkpoints
    assert openbao.root_token not in invoke(settings, "status").output


def test_unreachable_vault_fails_closed(data_dir: Path) -> None:
    """With Vault configured but unreachable, status fails with VaultUnreachable and no local keystore appears."""
    keys = {"backend": "vault", "vault_addr": "http://127.0.0.1:9", "vault_token": "t", "vault_timeout_s": 0.5}
    settings = load_settings(data_dir=data_dir, keys=keys)
    result = invoke(settings, "status")
    assert isinstance(result.exception, VaultUnreachable)
    assert not settings.keystore_path.exists()
