"""What every key service must do, checked once and run against each implementation (the local keystore and
Vault/OpenBao transit): HMACs, signatures across a rotation, HMACs under an old version."""

from __future__ import annotations

from typing import Any

import pytest

from appliance.errors import NotFound
from appliance.keys import verify_offline


def check_hmac_is_stable_and_keyed(keys: Any) -> None:
    """32 bytes, the same for the same input and key, different for another input or key."""
    a = keys.hmac("audit-hmac", b"prompt text")
    assert len(a) == 32
    assert keys.hmac("audit-hmac", b"prompt text") == a
    assert keys.hmac("audit-hmac", b"other text") != a
    assert keys.hmac("audit-hmac-2", b"prompt text") != a


def check_signatures_across_rotation(keys: Any) -> None:
    """Ed25519 signatures carry their version; those made before a rotation still verify, online and offline; a
    signature under another version, or garbage, does not."""
    before = keys.sign("audit-signing", b"checkpoint 1")
    assert before.startswith(b"ed25519:v1:")
    v1 = keys.public_key("audit-signing")
    assert len(v1) == 32
    keys.rotate("audit-signing")
    after = keys.sign("audit-signing", b"checkpoint 2")
    assert after.startswith(b"ed25519:v2:")
    publics = keys.public_keys("audit-signing")
    assert set(publics) == {1, 2} and publics[1] == v1 and keys.public_key("audit-signing") == publics[2] != v1
    for data, sig in [(b"checkpoint 1", before), (b"checkpoint 2", after)]:
        assert keys.verify("audit-signing", data, sig)
        assert verify_offline(publics, data, sig)
    assert not keys.verify("audit-signing", b"checkpoint 1", after)
    assert not keys.verify("audit-signing", b"checkpoint 1", b"ed25519:v9:" + before[11:])
    assert not keys.verify("audit-signing", b"checkpoint 1", b"garbage")


def check_hmac_under_an_old_version(keys: Any) -> None:
    """After a rotation the old HMAC version is still made when asked (a digest recorded before it is
    reproducible), with the version used; an unknown version, or key, is NotFound."""
    before = keys.versioned_hmac("audit-hmac", b"prompt text")
    assert before == (1, keys.hmac("audit-hmac", b"prompt text"))
    keys.rotate("audit-hmac")
    current = keys.versioned_hmac("audit-hmac", b"prompt text")
    assert current[0] == 2 and current[1] != before[1] and current[1] == keys.hmac("audit-hmac", b"prompt text")
    assert keys.versioned_hmac("audit-hmac", b"prompt text", 1) == before
    assert keys.versioned_hmac("audit-hmac", b"prompt text", 2) == current
    for unknown in (3, 0):
        with pytest.raises(NotFound):
            keys.versioned_hmac("audit-hmac", b"prompt text", unknown)
    with pytest.raises(NotFound):
        keys.versioned_hmac("never-created", b"prompt text", 1)
