"""The one signature format every key service returns, and offline verification of it.

``b"ed25519:v<N>:<standard base64 of the 64-byte Ed25519 signature>"``: the version names the key version that
signed, so an exported audit log signed across several rotations verifies with the public keys alone.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.errors import ValidationFailed

__all__ = ["format_signature", "parse_signature", "verify_offline"]

_PREFIX = "ed25519"
_FORMAT = re.compile(rb"^ed25519:v([1-9][0-9]{0,9}):([A-Za-z0-9+/]{86}==)$")


def format_signature(version: int, raw: bytes) -> bytes:
    """The portable form of a raw 64-byte Ed25519 signature made by key version ``version``."""
    if len(raw) != 64 or version < 1:
        raise ValueError("an Ed25519 signature is 64 bytes and key versions start at 1")
    return f"{_PREFIX}:v{version}:".encode() + base64.b64encode(raw)


def parse_signature(signature: bytes) -> tuple[int, bytes]:
    """(version, raw 64-byte signature) of a signature in the portable form, else ValidationFailed."""
    match = _FORMAT.match(signature) if isinstance(signature, bytes) else None
    if match is None:
        raise ValidationFailed("not an appliance signature (expected b'ed25519:v<N>:<base64>')")
    try:
        raw = base64.b64decode(match.group(2), validate=True)
    except binascii.Error:
        raise ValidationFailed("signature is not valid base64") from None
    return int(match.group(1)), raw


def verify_offline(public_keys: Mapping[int, bytes], data: bytes, signature: bytes) -> bool:
    """Whether signature is valid for data under the version it names, using exported public keys only."""
    try:
        version, raw = parse_signature(signature)
    except ValidationFailed:
        return False
    public = public_keys.get(version)
    if public is None or len(public) != 32:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(raw, data)
    except InvalidSignature:
        return False
    return True
