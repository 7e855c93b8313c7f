"""AES-256-GCM envelope helpers shared by every stage that encrypts at rest (registry, training).

A sealed blob is ``MAGIC (4 bytes) || nonce (12 bytes) || ciphertext || tag (16 bytes)``. The nonce is random per
call (96 bits; a data key seals far fewer than 2**32 blobs). ``aad`` binds the blob to its context (for example
the adapter name, version and file name) so that a blob moved to another context fails to open.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from appliance.errors import IntegrityViolation, ValidationFailed

__all__ = ["KEY_BYTES", "decrypt", "encrypt"]

KEY_BYTES = 32
MAGIC = b"AEG1"
_NONCE = 12
_TAG = 16


def _cipher(key: bytes) -> AESGCM:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
        raise ValidationFailed("a data key must be 32 bytes (AES-256)")
    return AESGCM(bytes(key))


def encrypt(plaintext: bytes, key: bytes, aad: bytes = b"") -> bytes:
    """Seal plaintext under a 32-byte data key, authenticating aad as well."""
    nonce = os.urandom(_NONCE)
    return MAGIC + nonce + _cipher(key).encrypt(nonce, plaintext, aad)


def decrypt(blob: bytes, key: bytes, aad: bytes = b"") -> bytes:
    """Open a blob sealed by :func:`encrypt`; a tampered, truncated or misplaced blob is an IntegrityViolation."""
    cipher = _cipher(key)
    if len(blob) < len(MAGIC) + _NONCE + _TAG or not blob.startswith(MAGIC):
        raise IntegrityViolation("encrypted data is truncated or not in the appliance's AES-256-GCM format")
    nonce = blob[len(MAGIC) : len(MAGIC) + _NONCE]
    try:
        return cipher.decrypt(nonce, blob[len(MAGIC) + _NONCE :], aad)
    except InvalidTag:
        raise IntegrityViolation(
            "encrypted data failed authentication (tampered, truncated, wrong key or wrong context)"
        ) from None
