"""AES-256-GCM envelope helpers and the portable signature format."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from appliance.errors import IntegrityViolation, ValidationFailed
from appliance.keys import decrypt, encrypt, parse_signature, verify_offline
from appliance.keys._signature import format_signature


def test_round_trip_with_aad() -> None:
    """What encrypt seals, decrypt opens under the same key and associated data."""
    key = os.urandom(32)
    blob = encrypt(b"adapter weights", key, aad=b"triage:1:adapter_model.safetensors")
    assert b"adapter weights" not in blob
    assert decrypt(blob, key, aad=b"triage:1:adapter_model.safetensors") == b"adapter weights"


def test_nonce_is_fresh_per_call() -> None:
    """Sealing the same plaintext twice gives two different blobs."""
    key = os.urandom(32)
    assert encrypt(b"x", key) != encrypt(b"x", key)


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:-1],  # truncated tag
        lambda b: b[:10],  # truncated header
        lambda b: b[:20] + bytes([b[20] ^ 1]) + b[21:],  # flipped ciphertext bit
        lambda b: b"XXXX" + b[4:],  # wrong magic
        lambda b: b"",  # empty
    ],
)
def test_tampered_or_truncated_blob_is_refused(damage) -> None:  # type: ignore[no-untyped-def]
    """A damaged blob is an IntegrityViolation, never garbage plaintext."""
    key = os.urandom(32)
    blob = encrypt(b"some plaintext of a decent length", key, aad=b"ctx")
    with pytest.raises(IntegrityViolation):
        decrypt(damage(blob), key, aad=b"ctx")


def test_wrong_context_or_key_is_refused() -> None:
    """A blob moved to another context (aad) or opened with another key fails authentication."""
    key = os.urandom(32)
    blob = encrypt(b"secret", key, aad=b"a")
    with pytest.raises(IntegrityViolation):
        decrypt(blob, key, aad=b"b")
    with pytest.raises(IntegrityViolation):
        decrypt(blob, os.urandom(32), aad=b"a")


def test_key_must_be_256_bits() -> None:
    """A key that is not 32 bytes is refused before any encryption."""
    with pytest.raises(ValidationFailed):
        encrypt(b"x", os.urandom(16))


def test_offline_verification_by_version() -> None:
    """A portable signature verifies with the public key of the version it names, and only that one."""
    v1, v2 = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    pub = {1: v1.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)}
    pub[2] = v2.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    sig = format_signature(1, v1.sign(b"checkpoint"))
    assert parse_signature(sig)[0] == 1
    assert verify_offline(pub, b"checkpoint", sig)
    assert not verify_offline(pub, b"checkpoint!", sig)
    assert not verify_offline({2: pub[2]}, b"checkpoint", sig)  # version 1 unknown
    forged = format_signature(2, v1.sign(b"checkpoint"))  # claims v2, signed by v1
    assert not verify_offline(pub, b"checkpoint", forged)
    assert not verify_offline(pub, b"checkpoint", b"vault:v1:abc")
