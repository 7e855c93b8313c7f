"""The Vault/OpenBao key service against a real OpenBao dev server: envelope, rotation, MACs, signatures, secrets,
the audit device, and failing closed when OpenBao is stopped, sealed, slow or refuses the token."""

from __future__ import annotations

import base64
import json
import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.config import Settings, load_settings
from appliance.errors import (
    ConfigError,
    IntegrityViolation,
    KeyUnavailable,
    NotFound,
    VaultForbidden,
    VaultSealed,
    VaultUnreachable,
)
from appliance.keys import ManagedKeyService, decrypt, encrypt, open_key_service
from appliance.keys._vault import VaultKeyService
from appliance.protocols import KeyService
from tests.conftest import REPO_ROOT
from tests.fixtures.openbao import OpenBaoServer
from tests.keys._contract import (
    check_hmac_is_stable_and_keyed,
    check_hmac_under_an_old_version,
    check_signatures_across_rotation,
)

pytestmark = pytest.mark.openbao


def vault_settings(data_dir: Path, addr: str, token: str | None = None, **keys: Any) -> Settings:
    """Settings for the vault backend at addr (token auth unless AppRole fields are given)."""
    section: dict[str, Any] = {"backend": "vault", "vault_addr": addr, **keys}
    if token is not None:
        section["vault_token"] = token
    return load_settings(data_dir=data_dir, policies_dir=REPO_ROOT / "policies", keys=section)


@pytest.fixture
def vault(openbao: OpenBaoServer, data_dir: Path, unique_prefix: Callable[[], str]) -> VaultKeyService:
    """A Vault key service on the shared server with a key prefix of this test's own (root token)."""
    service = open_key_service(
        vault_settings(data_dir, openbao.addr, openbao.root_token, vault_key_prefix=unique_prefix())
    )
    assert isinstance(service, VaultKeyService)
    return service


def test_factory_opens_vault(vault: VaultKeyService) -> None:
    """keys.backend = 'vault' gives a VaultKeyService that satisfies the KeyService protocol."""
    assert isinstance(vault, KeyService)
    assert isinstance(vault, ManagedKeyService)
    assert vault.backend == "vault"


def test_envelope_round_trip(vault: VaultKeyService) -> None:
    """A data key from transit unwraps to the same plaintext and seals data with the envelope helpers."""
    plaintext, wrapped = vault.data_key("artifacts")
    assert len(plaintext) == 32
    assert wrapped.startswith(b"vault:v1:")
    assert base64.b64encode(plaintext) not in wrapped
    blob = encrypt(b"adapter weights", plaintext, aad=b"triage:1")
    assert decrypt(blob, vault.unwrap("artifacts", wrapped), aad=b"triage:1") == b"adapter weights"


def test_wrapped_key_is_bound_to_its_purpose_and_integrity(vault: VaultKeyService) -> None:
    """A key wrapped for one purpose, a tampered one, or one from the local keystore does not unwrap."""
    _, wrapped = vault.data_key("artifacts")
    vault.data_key("checkpoints")
    with pytest.raises(IntegrityViolation):
        vault.unwrap("checkpoints", wrapped)
    body = bytearray(wrapped)
    body[15] = ord("A") if body[15] != ord("A") else ord("B")
    with pytest.raises(IntegrityViolation):
        vault.unwrap("artifacts", bytes(body))
    with pytest.raises(IntegrityViolation):
        vault.unwrap("artifacts", b"not a ciphertext")
    with pytest.raises(KeyUnavailable, match="local keystore"):
        vault.unwrap("artifacts", b"local:v1:AAAA")


def test_rotation_and_rewrap(vault: VaultKeyService) -> None:
    """After rotation old wrapped keys still unwrap; new and rewrapped ones use version 2."""
    plaintext, old = vault.data_key("checkpoints")
    vault.rotate("checkpoints")
    _, new = vault.data_key("checkpoints")
    assert new.startswith(b"vault:v2:")
    assert vault.unwrap("checkpoints", old) == plaintext
    rewrapped = vault.rewrap("checkpoints", old)
    assert rewrapped.startswith(b"vault:v2:")
    assert vault.unwrap("checkpoints", rewrapped) == plaintext
    info = {k.name: k for k in vault.status().keys}["checkpoints"]
    assert (info.type, info.latest_version, info.versions) == ("aes256-gcm96", 2, 2)


def test_unknown_keys_are_not_found(vault: VaultKeyService) -> None:
    """Rotating or unwrapping under a key that does not exist is NotFound and creates nothing."""
    with pytest.raises(NotFound):
        vault.rotate("nonexistent")
    with pytest.raises(NotFound):
        vault.unwrap("nonexistent", b"vault:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
    assert vault.status().keys == []


def test_hmac_is_stable_and_keyed(vault: VaultKeyService) -> None:
    """Transit HMAC-SHA256 gives 32 bytes, the same for the same input, different for another input or key."""
    check_hmac_is_stable_and_keyed(vault)


def test_sign_and_verify_across_rotation(vault: VaultKeyService) -> None:
    """Ed25519 signatures carry their version and still verify after rotation, online and offline."""
    check_signatures_across_rotation(vault)


def test_key_types_are_not_mixed(vault: VaultKeyService) -> None:
    """A data-key KEK cannot sign, and public keys of a non-signing key are refused."""
    vault.data_key("artifacts")
    with pytest.raises(KeyUnavailable, match="does not support signing"):
        vault.sign("artifacts", b"x")
    with pytest.raises(KeyUnavailable, match="not an Ed25519 key"):
        vault.public_keys("artifacts")


def test_secrets_round_trip(vault: VaultKeyService) -> None:
    """A secret written to KV v2 reads back; a missing one is NotFound."""
    with pytest.raises(NotFound):
        vault.get_secret("gateway/session")
    vault.put_secret("gateway/session", {"secret": "kv-secret-value"})
    vault.put_secret("gateway/session", {"secret": "kv-secret-value-2"})
    assert vault.get_secret("gateway/session") == {"secret": "kv-secret-value-2"}


def test_audit_device_records_without_plaintext(openbao: OpenBaoServer, vault: VaultKeyService) -> None:
    """OpenBao's file audit device has entries for our calls and no data key, secret, input or token in clear."""
    plaintext, wrapped = vault.data_key("artifacts")
    vault.unwrap("artifacts", wrapped)
    vault.put_secret("gateway/oidc", {"client_secret": "audit-canary-secret"})
    vault.hmac("audit-hmac", b"audit-canary-prompt")
    text = openbao.audit_log.read_text()
    entries = [json.loads(line) for line in text.splitlines() if line.strip()]
    paths = {e.get("request", {}).get("path") for e in entries}
    assert any(p and p.startswith("transit/datakey/plaintext/") for p in paths)
    assert any(p and p.startswith("transit/decrypt/") for p in paths)
    assert os.stat(openbao.audit_log).st_mode & 0o077 == 0
    for secret in [
        base64.b64encode(plaintext).decode(),
        "audit-canary-secret",
        base64.b64encode(b"audit-canary-prompt").decode(),
        "audit-canary-prompt",
        openbao.root_token,
    ]:
        assert secret not in text


def test_operator_status_shows_versions_not_material(vault: VaultKeyService) -> None:
    """status() lists this prefix's keys with type and versions, unsealed, and nothing secret."""
    plaintext, _ = vault.data_key("artifacts")
    vault.sign("audit-signing", b"x")
    status = vault.status()
    assert not status.sealed
    assert {(k.name, k.type) for k in status.keys} == {("artifacts", "aes256-gcm96"), ("audit-signing", "ed25519")}
    assert base64.b64encode(plaintext).decode() not in repr(status)


# --- configuration and login -------------------------------------------------------------------------------------


def test_missing_vault_settings_are_config_errors(data_dir: Path) -> None:
    """The vault backend without an address, credentials or a CA file it names refuses to start, naming the field."""
    with pytest.raises(ConfigError, match="vault_addr"):
        open_key_service(load_settings(data_dir=data_dir, keys={"backend": "vault"}))
    with pytest.raises(ConfigError, match="vault_token"):
        open_key_service(vault_settings(data_dir, "http://127.0.0.1:1"))
    with pytest.raises(ConfigError, match="vault_ca_cert"):
        open_key_service(
            vault_settings(data_dir, "https://127.0.0.1:1", "t", vault_ca_cert=str(data_dir / "no-ca.pem"))
        )
    with pytest.raises(ConfigError, match="http"):
        open_key_service(vault_settings(data_dir, "ftp://vault", "t"))


def test_bad_token_is_forbidden_at_open(openbao: OpenBaoServer, data_dir: Path) -> None:
    """A token OpenBao does not know is refused when the service opens, and the message does not echo it."""
    with pytest.raises(VaultForbidden) as info:
        open_key_service(vault_settings(data_dir, openbao.addr, "not-a-real-token-123"))
    assert "not-a-real-token-123" not in str(info.value)


# --- failing closed ----------------------------------------------------------------------------------------------


def _every_operation(service: VaultKeyService, wrapped: bytes, signature: bytes) -> list[Callable[[], object]]:
    return [
        lambda: service.data_key("artifacts"),
        lambda: service.unwrap("artifacts", wrapped),
        lambda: service.rewrap("artifacts", wrapped),
        lambda: service.rotate("artifacts"),
        lambda: service.hmac("audit-hmac", b"x"),
        lambda: service.sign("audit-signing", b"x"),
        lambda: service.verify("audit-signing", b"x", signature),
        lambda: service.public_keys("audit-signing"),
        lambda: service.get_secret("gateway/session"),
        lambda: service.put_secret("gateway/session", {"a": "b"}),
    ]


@pytest.fixture
def private_vault(openbao_private: OpenBaoServer, data_dir: Path) -> Iterator[tuple[VaultKeyService, bytes, bytes]]:
    """A key service on a server of this test's own, with a wrapped key and a signature made while it was up."""
    service = open_key_service(vault_settings(data_dir, openbao_private.addr, openbao_private.root_token))
    assert isinstance(service, VaultKeyService)
    _, wrapped = service.data_key("artifacts")
    signature = service.sign("audit-signing", b"x")
    service.hmac("audit-hmac", b"x")
    yield service, wrapped, signature


def test_stopped_mid_test_is_unreachable_and_nothing_falls_back(
    openbao_private: OpenBaoServer, private_vault: tuple[VaultKeyService, bytes, bytes], data_dir: Path
) -> None:
    """With OpenBao stopped, every operation raises VaultUnreachable; no local keystore appears."""
    service, wrapped, signature = private_vault
    openbao_private.stop()
    for operation in _every_operation(service, wrapped, signature):
        with pytest.raises(VaultUnreachable) as info:
            operation()
        assert openbao_private.root_token not in str(info.value)
        assert openbao_private.addr in str(info.value)
    with pytest.raises(VaultUnreachable):
        service.status()
    with pytest.raises(VaultUnreachable):
        open_key_service(vault_settings(data_dir, openbao_private.addr, openbao_private.root_token))
    assert not any(data_dir.iterdir())  # no keystore, no lock file: nothing fell back to local


def test_sealed_is_refused(
    openbao_private: OpenBaoServer, private_vault: tuple[VaultKeyService, bytes, bytes], data_dir: Path
) -> None:
    """After sys/seal every operation raises VaultSealed, status says sealed, and opening is refused too."""
    service, wrapped, signature = private_vault
    openbao_private.seal()
    for operation in _every_operation(service, wrapped, signature):
        with pytest.raises(VaultSealed, match="sealed"):
            operation()
    assert service.status().sealed
    with pytest.raises(VaultSealed):
        open_key_service(vault_settings(data_dir, openbao_private.addr, openbao_private.root_token))
    assert not any(data_dir.iterdir())


def test_a_server_that_never_answers_times_out(data_dir: Path) -> None:
    """A listener that accepts but never answers gives VaultUnreachable within the configured timeout."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        addr = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(VaultUnreachable, match="timed out"):
            open_key_service(vault_settings(data_dir, addr, "some-token", vault_timeout_s=0.3))


def test_hmac_under_an_old_version_after_rotation(vault: VaultKeyService) -> None:
    """After a rotation transit still makes the HMAC under the old version when asked (a digest recorded before it
    is reproducible), says which version it used, and an unknown version is NotFound."""
    check_hmac_under_an_old_version(vault)
