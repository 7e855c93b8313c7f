"""Signed checkpoints and anchors: what a signature covers, and checking one offline.

A checkpoint is itself a record in the chain (``type = "audit.checkpoint"``) whose details carry an Ed25519
signature, made through the key service, over the previous record's position and hash::

    appliance-audit-checkpoint:v1:<writer_id>:<signed_seq>:<signed_hash>

Because every record's hash covers its predecessor's, a valid signature on record N vouches for records 1..N.
A purge anchor signs the last purged record the same way with the ``anchor`` label.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.audit._canonical import canonical_json
from appliance.errors import ApplianceError, KeyUnavailable
from appliance.keys import AUDIT_HMAC, AUDIT_SIGNING
from appliance.protocols import KeyService

__all__ = [
    "AUDIT_HMAC_KEY",
    "AUDIT_SIGNING_KEY",
    "CHECKPOINT_TYPE",
    "checkpoint_body",
    "signed_message",
    "verify_signature",
]

AUDIT_HMAC_KEY = AUDIT_HMAC  # the key service's name for prompt/output digests
AUDIT_SIGNING_KEY = AUDIT_SIGNING  # the key service's name for checkpoint signatures
CHECKPOINT_TYPE = "audit.checkpoint"
_SIGNATURE = re.compile(r"^ed25519:v([1-9][0-9]{0,9}):([A-Za-z0-9+/]{86}==)$")


def signed_message(label: str, writer_id: str, seq: int, record_hash: str) -> bytes:
    """The bytes a checkpoint (``label="checkpoint"``) or purge anchor (``label="anchor"``) signature covers."""
    return f"appliance-audit-{label}:v1:{writer_id}:{seq}:{record_hash}".encode()


def sign(keys: KeyService, message: bytes) -> str:
    """The key service's signature of message as text; ``KeyUnavailable`` when it cannot sign."""
    try:
        signature = keys.sign(AUDIT_SIGNING_KEY, message)
    except ApplianceError:
        raise
    except Exception as exc:  # a key service must not leak foreign errors, but the audit trail fails closed anyway
        raise KeyUnavailable(f"audit signing failed ({type(exc).__name__})") from exc
    return signature.decode("ascii")


def checkpoint_body(writer_id: str, signed_seq: int, signed_hash: str, signature: str) -> bytes:
    """The event body of a checkpoint record (built by the writer, not by callers)."""
    return canonical_json(
        {
            "action": "checkpoint",
            "actor": {"auth_method": "system", "client_id": None, "roles": [], "session_id": None, "subject": "audit"},
            "adapter": None,
            "details": {
                "key": AUDIT_SIGNING_KEY,
                "signature": signature,
                "signed_hash": signed_hash,
                "signed_seq": signed_seq,
            },
            "digests": None,
            "latency_ms": None,
            "outcome": {"error_class": None, "http_status": None, "status": "success"},
            "request_id": None,
            "route": None,
            "source": None,
            "tokens": None,
            "type": CHECKPOINT_TYPE,
        }
    )


def verify_signature(public_keys: Mapping[int, bytes], message: bytes, signature: str) -> bool:
    """Whether signature (``ed25519:v<N>:<base64>``) is valid for message under public key version N."""
    match = _SIGNATURE.match(signature) if isinstance(signature, str) else None
    if match is None:
        return False
    public = public_keys.get(int(match.group(1)))
    if public is None or len(public) != 32:
        return False
    try:
        raw = base64.b64decode(match.group(2), validate=True)
        Ed25519PublicKey.from_public_bytes(public).verify(raw, message)
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def encode_public_keys(public_keys: Mapping[int, bytes]) -> dict[str, str]:
    """Public keys by version as JSON-friendly base64 (manifests, anchors)."""
    return {str(version): base64.b64encode(key).decode() for version, key in sorted(public_keys.items())}


def decode_public_keys(encoded: Mapping[str, Any]) -> dict[int, bytes]:
    """The inverse of :func:`encode_public_keys`; malformed entries are skipped (they then verify nothing)."""
    keys: dict[int, bytes] = {}
    for version, value in encoded.items():
        try:
            keys[int(version)] = base64.b64decode(str(value), validate=True)
        except (ValueError, binascii.Error):
            continue
    return keys


def key_fingerprint(public_keys: Mapping[int, bytes]) -> str:
    """A short SHA-256 fingerprint of the public keys, for an investigator to compare out of band."""
    import hashlib

    digest = hashlib.sha256()
    for version, key in sorted(public_keys.items()):
        digest.update(f"{version}:".encode() + key)
    return digest.hexdigest()[:32]
