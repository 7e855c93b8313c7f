"""The local keystore: a 0600 file, versioned keys, envelope encryption, signatures, and concurrent writers."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from appliance.config import Settings
from appliance.errors import IntegrityViolation, KeystoreInsecure, KeyUnavailable, NotFound, ValidationFailed
from appliance.keys import LocalKeyService, ManagedKeyService, open_key_service
from appliance.protocols import KeyService
from tests.keys._contract import (
    check_hmac_is_stable_and_keyed,
    check_hmac_under_an_old_version,
    check_signatures_across_rotation,
)


@pytest.fixture
def keys(settings: Settings) -> LocalKeyService:
    """The local key service the factory opens for a fresh data directory."""
    service = open_key_service(settings)
    assert isinstance(service, LocalKeyService)
    return service


def test_factory_gives_a_key_service(keys: LocalKeyService, settings: Settings) -> None:
    """The default settings open the local keystore, which satisfies the KeyService protocol."""
    assert isinstance(keys, KeyService)
    assert isinstance(keys, ManagedKeyService)
    assert not settings.keystore_path.exists()  # created on first use only


def test_created_on_first_use_with_mode_0600(keys: LocalKeyService, settings: Settings) -> None:
    """The first operation creates the keystore as a regular file readable by its owner only."""
    os.umask(0o022)
    keys.data_key("artifacts")
    st = os.lstat(settings.keystore_path)
    assert stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == os.geteuid()


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_wider_permissions_are_refused(keys: LocalKeyService, settings: Settings, mode: int) -> None:
    """A keystore readable or writable by group or others is refused with an error naming the fix."""
    keys.hmac("audit-hmac", b"x")
    os.chmod(settings.keystore_path, mode)
    with pytest.raises(KeystoreInsecure, match="chmod 600"):
        keys.hmac("audit-hmac", b"x")
    with pytest.raises(KeystoreInsecure):
        LocalKeyService(settings.keystore_path).data_key("artifacts")


def test_symlink_is_refused(tmp_path: Path) -> None:
    """A keystore path that is a symlink is refused, even when the target is 0600."""
    target = tmp_path / "elsewhere"
    LocalKeyService(target).data_key("artifacts")
    link = tmp_path / "keystore"
    link.symlink_to(target)
    with pytest.raises(KeystoreInsecure):
        LocalKeyService(link).data_key("artifacts")


def test_foreign_owner_is_refused(tmp_path: Path) -> None:
    """A keystore owned by another user is refused (needs root to chown; skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    path = tmp_path / "keystore"
    LocalKeyService(path).data_key("artifacts")
    os.chown(path, 65534, 65534)
    with pytest.raises(KeystoreInsecure, match="owned by uid 65534"):
        LocalKeyService(path).data_key("artifacts")


def test_envelope_round_trip(keys: LocalKeyService) -> None:
    """A wrapped data key unwraps to the same plaintext and the wrapped form does not contain it."""
    plaintext, wrapped = keys.data_key("artifacts")
    assert len(plaintext) == 32
    assert plaintext not in wrapped
    assert wrapped.startswith(b"local:v1:")
    assert keys.unwrap("artifacts", wrapped) == plaintext


def test_wrapped_key_is_bound_to_its_purpose(keys: LocalKeyService) -> None:
    """A data key wrapped for one purpose does not unwrap under another."""
    _, wrapped = keys.data_key("artifacts")
    keys.data_key("checkpoints")
    with pytest.raises(IntegrityViolation):
        keys.unwrap("checkpoints", wrapped)


def test_tampered_wrapped_key_is_refused(keys: LocalKeyService) -> None:
    """A wrapped key with a changed byte, an unknown version or a foreign format is refused."""
    _, wrapped = keys.data_key("artifacts")
    head, body = wrapped[:9], bytearray(wrapped[9:])
    body[5] = ord("A") if body[5] != ord("A") else ord("B")
    with pytest.raises(IntegrityViolation):
        keys.unwrap("artifacts", head + bytes(body))
    with pytest.raises(IntegrityViolation, match="version 7"):
        keys.unwrap("artifacts", b"local:v7:" + wrapped[9:])
    with pytest.raises(KeyUnavailable, match="Vault"):
        keys.unwrap("artifacts", b"vault:v1:abcd")


def test_unwrap_of_unknown_purpose_is_not_found(keys: LocalKeyService) -> None:
    """Unwrapping for a purpose that has no key is NotFound and creates nothing."""
    keys.data_key("artifacts")
    with pytest.raises(NotFound):
        keys.unwrap("checkpoints", b"local:v1:AAAA")
    assert [k.name for k in keys.status().keys] == ["artifacts"]


def test_rotation_and_rewrap(keys: LocalKeyService) -> None:
    """After rotation old wrapped keys still unwrap, new ones and rewrapped ones use the new version."""
    plaintext, old = keys.data_key("checkpoints")
    keys.rotate("checkpoints")
    _, new = keys.data_key("checkpoints")
    assert new.startswith(b"local:v2:")
    assert keys.unwrap("checkpoints", old) == plaintext
    rewrapped = keys.rewrap("checkpoints", old)
    assert rewrapped.startswith(b"local:v2:")
    assert keys.unwrap("checkpoints", rewrapped) == plaintext
    info = {k.name: k for k in keys.status().keys}["checkpoints"]
    assert (info.latest_version, info.versions) == (2, 2)


def test_hmac_is_stable_and_keyed(keys: LocalKeyService, settings: Settings) -> None:
    """The HMAC is 32 bytes, the same for the same input and key (another instance over the same keystore
    included), different for another key or input."""
    check_hmac_is_stable_and_keyed(keys)
    again = LocalKeyService(settings.keystore_path)
    assert again.hmac("audit-hmac", b"prompt text") == keys.hmac("audit-hmac", b"prompt text")


def test_sign_and_verify_across_rotation(keys: LocalKeyService) -> None:
    """Signatures carry their version; those made before a rotation still verify, online and offline."""
    check_signatures_across_rotation(keys)


def test_key_types_are_not_mixed(keys: LocalKeyService) -> None:
    """A data-key KEK cannot sign and a signing key cannot wrap data keys."""
    keys.data_key("artifacts")
    with pytest.raises(KeyUnavailable, match="cannot be used"):
        keys.sign("artifacts", b"x")
    keys.sign("audit-signing", b"x")
    with pytest.raises(KeyUnavailable, match="cannot be used"):
        keys.data_key("audit-signing")


def test_rotating_an_unknown_key_is_not_found(keys: LocalKeyService) -> None:
    """Rotating a key that does not exist is NotFound and creates nothing."""
    with pytest.raises(NotFound):
        keys.rotate("nonexistent")
    assert keys.status().keys == []


def test_invalid_names_are_refused(keys: LocalKeyService) -> None:
    """A key name outside [a-z0-9_-] (path tricks, upper case, empty) is a validation error."""
    for bad in ["", "../x", "Audit", "a/b", "x" * 64]:
        with pytest.raises(ValidationFailed):
            keys.data_key(bad)


def test_secrets_round_trip(keys: LocalKeyService) -> None:
    """A secret put at a path reads back; a missing one is NotFound."""
    with pytest.raises(NotFound):
        keys.get_secret("gateway/session")
    keys.put_secret("gateway/session", {"secret": "s3cr3t-value"})
    assert keys.get_secret("gateway/session") == {"secret": "s3cr3t-value"}
    with pytest.raises(ValidationFailed):
        keys.put_secret("../etc", {"a": "b"})


def test_key_material_never_in_repr_status_or_logs(
    keys: LocalKeyService, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    """Neither repr, status nor the log lines contain key material or data keys."""
    plaintext, _ = keys.data_key("artifacts")
    keys.rotate("artifacts")
    doc = json.loads(settings.keystore_path.read_text())
    material = [v["aes"] for v in doc["keys"]["artifacts"]["versions"].values()]
    shown = repr(keys) + repr(keys.status()) + "".join(capsys.readouterr())
    for secret in [*material, plaintext.hex()]:
        assert secret not in shown


def test_damaged_keystore_is_a_clear_error(keys: LocalKeyService, settings: Settings) -> None:
    """A keystore that is not valid JSON is refused with a message naming the file, not a traceback."""
    keys.hmac("audit-hmac", b"x")
    settings.keystore_path.write_bytes(b"{not json")
    with pytest.raises(KeyUnavailable, match="not valid JSON"):
        LocalKeyService(settings.keystore_path).hmac("audit-hmac", b"x")


def _rotate_and_wrap(path: str, worker: int, rounds: int) -> list[tuple[str, bytes, bytes]]:
    service = LocalKeyService(Path(path))
    own = f"p{worker}"  # not the pid: the pool may run two tasks in one process
    out = []
    for _ in range(rounds):
        service.rotate("shared")
        out.append(("shared", *service.data_key("shared")))
        out.append((own, *service.data_key(own)))
    return out


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    """Four processes rotating and creating keys at once leave every version and every key usable."""
    path = tmp_path / "keystore"
    LocalKeyService(path).data_key("shared")
    workers, rounds = 4, 5
    with ProcessPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(_rotate_and_wrap, [str(path)] * workers, range(workers), [rounds] * workers))
    service = LocalKeyService(path)
    info = {k.name: k for k in service.status().keys}
    assert info["shared"].latest_version == 1 + workers * rounds
    assert len([n for n in info if n.startswith("p")]) == workers
    for name, plaintext, wrapped in (item for result in results for item in result):
        assert service.unwrap(name, wrapped) == plaintext
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_keys_never_printed_by_the_cli_status(settings: Settings, tmp_path: Path) -> None:
    """`python -c` using the keystore prints nothing of the key material on stdout or stderr."""
    LocalKeyService(settings.keystore_path).data_key("artifacts")
    material = json.loads(settings.keystore_path.read_text())["keys"]["artifacts"]["versions"]["1"]["aes"]
    code = (
        "from pathlib import Path; from appliance.keys import LocalKeyService as L;"
        f"s=L(Path({str(settings.keystore_path)!r})); s.rotate('artifacts'); print(s.status())"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "artifacts" in proc.stdout
    assert material not in proc.stdout + proc.stderr


def test_concurrent_threads_share_one_keystore(tmp_path: Path) -> None:
    """Eight threads (half on a shared instance, half on their own) rotating and wrapping lose no version or key."""
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "keystore"
    shared = LocalKeyService(path)
    shared.data_key("shared")

    def work(i: int) -> list[tuple[bytes, bytes]]:
        service = shared if i % 2 else LocalKeyService(path)
        out = []
        for _ in range(5):
            service.rotate("shared")
            out.append(service.data_key("shared"))
        return out

    with ThreadPoolExecutor(max_workers=8) as pool:
        pairs = [pair for result in pool.map(work, range(8)) for pair in result]
    assert {k.name: k.latest_version for k in shared.status().keys}["shared"] == 1 + 8 * 5
    fresh = LocalKeyService(path)
    assert all(fresh.unwrap("shared", wrapped) == plaintext for plaintext, wrapped in pairs)


def test_hmac_under_an_old_version_after_rotation(keys: LocalKeyService) -> None:
    """A rotation keeps the old HMAC version: asked for it, the keystore reproduces a digest made before the
    rotation and says which version it used; an unknown version (or key) is NotFound and creates nothing."""
    check_hmac_under_an_old_version(keys)
    assert "never-created" not in {k.name for k in keys.status().keys}
