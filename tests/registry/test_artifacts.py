"""Encryption at rest: AES-256-GCM per file under a wrapped per-adapter data key; tampering and key refusals."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from appliance.config import Settings, load_settings
from appliance.errors import IntegrityViolation, KeyUnavailable, VaultForbidden, VaultUnreachable
from appliance.registry import Registry, open_registry
from tests.conftest import REPO_ROOT
from tests.fixtures.openbao import OpenBaoServer
from tests.registry.conftest import APPROVERS, OPERATOR, RecordingAudit, RunFactory, enrol, snapshot


def _approved(registry: Registry, make_run: RunFactory, name: str = "triage") -> int:
    info = registry.add(make_run(), name, OPERATOR)
    for approver in APPROVERS:
        registry.approve(name, info.version, approver)
    return info.version


def _artifact_dir(registry: Registry, name: str = "triage", version: int = 1) -> Path:
    with registry.db.engine.connect() as conn:
        rel = conn.execute(
            text("SELECT artifact_dir FROM adapters WHERE name = :n AND version = :v"), {"n": name, "v": version}
        ).scalar_one()
    return registry.artifacts.root / rel


def _assert_nothing_served(registry: Registry) -> None:
    adapters = registry.publisher.serving_dir / "adapters"
    assert not adapters.exists() or not any(adapters.iterdir())


def test_files_encrypted_at_rest(registry: Registry, make_run: RunFactory) -> None:
    """Every run file is stored only as ciphertext, with a wrapped (never plaintext) data key beside it."""
    run = make_run()
    registry.add(run, "triage", OPERATOR)
    directory = _artifact_dir(registry)
    names = sorted(p.name for p in directory.iterdir())
    assert names == ["adapter_config.json.enc", "adapter_model.safetensors.enc", "envelope.json", "metadata.json.enc"]
    weights = (run / "adapter_model.safetensors").read_bytes()
    sealed = (directory / "adapter_model.safetensors.enc").read_bytes()
    assert weights[200:264] not in sealed and b"trainer-tom" not in (directory / "metadata.json.enc").read_bytes()
    envelope = json.loads((directory / "envelope.json").read_text())
    assert envelope["purpose"] == "artifacts" and envelope["wrapped_key"]
    assert all(r.ok and r.files == 3 for r in registry.verify())


@pytest.mark.parametrize("damage", ["flip", "truncate", "swap", "delete"])
def test_tampered_artifact_refused(registry: Registry, make_run: RunFactory, damage: str) -> None:
    """A flipped byte, a truncated, swapped or missing file fails verify and publish; nothing is served."""
    _approved(registry, make_run)
    directory = _artifact_dir(registry)
    weights = directory / "adapter_model.safetensors.enc"
    blob = weights.read_bytes()
    if damage == "flip":
        weights.write_bytes(blob[:100] + bytes([blob[100] ^ 0x01]) + blob[101:])
    elif damage == "truncate":
        weights.write_bytes(blob[: len(blob) // 2])
    elif damage == "swap":  # a valid blob of another file of the same adapter
        weights.write_bytes((directory / "adapter_config.json.enc").read_bytes())
    else:
        weights.unlink()
    [result] = registry.verify()
    assert not result.ok and "adapter_model.safetensors" in (result.error or "")
    before = snapshot(registry)
    with pytest.raises(IntegrityViolation, match=r"adapter_model\.safetensors"):
        registry.publish("triage", 1, "tgi", OPERATOR)
    assert snapshot(registry) == before
    _assert_nothing_served(registry)
    assert not (registry.publisher.serving_dir / "tgi" / "lora_adapters.env").exists()


def test_blob_moved_between_adapters_refused(registry: Registry, make_run: RunFactory) -> None:
    """A blob copied from another adapter version fails authentication (its data key and AAD differ)."""
    _approved(registry, make_run)
    registry.add(make_run(), "triage", OPERATOR)
    one, two = _artifact_dir(registry, version=1), _artifact_dir(registry, version=2)
    (one / "metadata.json.enc").write_bytes((two / "metadata.json.enc").read_bytes())
    with pytest.raises(IntegrityViolation, match="failed authentication"):
        registry.publish("triage", 1, "embedded", OPERATOR)


def test_digest_mismatch_refused(registry: Registry, make_run: RunFactory) -> None:
    """If the recorded fingerprint does not match the decrypted weights, the artifact is refused."""
    _approved(registry, make_run)
    with registry.db.engine.begin() as conn:
        conn.execute(text("UPDATE adapters SET weights_fingerprint = :f"), {"f": "ab" * 32})
    [result] = registry.verify()
    assert not result.ok and "fingerprint" in (result.error or "")


def test_wrong_wrapped_key_refused(registry: Registry, make_run: RunFactory) -> None:
    """A wrapped data key that the key service cannot unwrap stops publish before anything is decrypted."""
    _approved(registry, make_run)
    _approved(registry, make_run, name="other")
    with registry.db.engine.begin() as conn:
        other = conn.execute(text("SELECT wrapped_key FROM adapters WHERE name = 'other'")).scalar_one()
        conn.execute(text("UPDATE adapters SET wrapped_key = :k WHERE name = 'triage'"), {"k": other})
    with pytest.raises(IntegrityViolation):
        registry.publish("triage", 1, "embedded", OPERATOR)
    _assert_nothing_served(registry)


# --- a real OpenBao (transit) as the key service ---------------------------------------------------------------
def _vault_settings(data_dir: Path, server: OpenBaoServer, token: str) -> Settings:
    keys = {"backend": "vault", "vault_addr": server.addr, "vault_token": token, "vault_key_prefix": "appliance"}
    return load_settings(data_dir=data_dir, policies_dir=REPO_ROOT / "policies", keys=keys)


def _policy_token(server: OpenBaoServer, policy: str) -> str:
    client = server.client()
    client.sys.create_or_update_policy(
        name=policy, policy=(REPO_ROOT / "policies" / "vault" / f"{policy}.hcl").read_text()
    )
    return str(client.auth.token.create(policies=[policy], ttl="1h")["auth"]["client_token"])


@pytest.fixture
def vault_registry(openbao_private: OpenBaoServer, data_dir: Path) -> Iterator[tuple[Registry, OpenBaoServer, Any]]:
    """A registry whose key service is OpenBao under the least-privilege registry policy (policies/vault)."""
    from appliance.keys import open_key_service

    root = open_key_service(_vault_settings(data_dir, openbao_private, openbao_private.root_token))
    root.create("artifacts")  # type: ignore[attr-defined]  # the operator creates keys; the registry may not
    root.create("registry-signing", "ed25519")  # type: ignore[attr-defined]  # signs published lists
    settings = _vault_settings(data_dir, openbao_private, _policy_token(openbao_private, "registry"))
    reg = enrol(open_registry(settings, keys=open_key_service(settings), audit=RecordingAudit()))
    yield reg, openbao_private, root
    reg.close()


@pytest.mark.openbao
def test_vault_envelope_rotation_and_fail_closed(
    vault_registry: tuple[Registry, OpenBaoServer, Any], make_run: RunFactory, data_dir: Path
) -> None:
    """Under OpenBao: publish works; a gateway token is refused; rotate+rewrap keeps artifacts; stopped fails closed."""
    from appliance.keys import open_key_service

    reg, server, root = vault_registry
    _approved(reg, make_run)
    reg.publish("triage", 1, "embedded", OPERATOR)
    assert reg.resolve("triage", 1).status == "production"
    _approved(reg, make_run, name="second")

    gateway_keys = open_key_service(_vault_settings(data_dir, server, _policy_token(server, "gateway")))
    as_gateway = Registry(
        reg.db,
        gateway_keys,
        RecordingAudit(),
        artifacts_dir=reg.artifacts.root,
        serving_dir=reg.publisher.serving_dir,
        policies_dir=reg.policies_dir,
        ledger_path=reg.ledger_path,
    )
    before = snapshot(reg)
    with pytest.raises(VaultForbidden):
        as_gateway.publish("second", 1, "embedded", OPERATOR)
    assert snapshot(reg) == before

    root.rotate("artifacts")
    assert reg.rewrap(OPERATOR) == 2
    with reg.db.engine.connect() as conn:
        wrapped = conn.execute(text("SELECT wrapped_key FROM adapters")).scalars().all()
    assert all(bytes(w).startswith(b"vault:v2:") for w in wrapped)
    assert all(r.ok for r in reg.verify())

    server.stop()
    before = snapshot(reg)
    artifacts_before = sorted(reg.artifacts.root.rglob("*"))
    with pytest.raises(VaultUnreachable):
        reg.publish("second", 1, "tgi", OPERATOR)
    with pytest.raises(KeyUnavailable):
        reg.add(make_run(), "third", OPERATOR)
    assert snapshot(reg) == before
    assert sorted(reg.artifacts.root.rglob("*")) == artifacts_before
    assert not (reg.publisher.serving_dir / "adapters" / "second-v1").exists()
