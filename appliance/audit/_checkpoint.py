"""Signed checkpoints and anchors: what a signature covers, and checking one offline.

A checkpoint is itself a record in the chain (``type = "audit.checkpoint"``) whose details carry an Ed25519
signature, made through the key service, over the previous record's position and hash::

    appliance-audit-checkpoint:v1:<writer_id>:<signed_seq>:<signed_hash>

Because every record's hash covers its predecessor's, a valid signature on record N vouches for records 1..N.
A purge anchor signs the last purged record the same way with the ``anchor`` label.

Signing keys: on Vault/OpenBao every writer signs with a key of its own, ``audit-signing-<writer>``
(:func:`signing_key_for`; the lanes ``<writer>.2``, ``.3``... of one writer are the same principal and share it),
and ``policies/vault/audit-writer.hcl`` lets a writer's identity sign only with its own key, so a compromised
trainer cannot sign a checkpoint for the gateway's chain. The local keystore is one file every writer on the node
reads (one trust domain), so it keeps the one ``audit-signing`` key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from appliance.audit._canonical import canonical_json
from appliance.audit._event import WRITER_SUBJECT, CheckpointDetails, audit_event, system_actor
from appliance.errors import ApplianceError, KeyUnavailable
from appliance.keys import AUDIT_HMAC, AUDIT_SIGNING
from appliance.protocols import KeyService

__all__ = [
    "AUDIT_HMAC_KEY",
    "AUDIT_SIGNING_KEY",
    "CHECKPOINT_TYPE",
    "ChainKeys",
    "chain_public_keys",
    "checkpoint_body",
    "own_signing_key",
    "signed_message",
    "signing_key_for",
    "verify_signature",
    "writer_of_lane",
    "writer_slug",
]

AUDIT_HMAC_KEY = AUDIT_HMAC  # the key service's name for prompt/output digests
AUDIT_SIGNING_KEY = AUDIT_SIGNING  # the key service's name for checkpoint signatures
CHECKPOINT_TYPE = "audit.checkpoint"
_SIGNATURE = re.compile(r"^ed25519:v([1-9][0-9]{0,9}):([A-Za-z0-9+/]{86}==)$")


_LANE = re.compile(r"\.(?:[2-9]|[1-9][0-9]+)$")  # the lane suffix a second process on a node takes


def writer_slug(writer_id: str) -> str:
    """A key-name-safe, injective name for a writer id (lower-case; anything else escaped, with a digest)."""
    slug = re.sub(r"[^a-z0-9-]", "_", writer_id.lower())
    if slug == writer_id and len(slug) <= 48:
        return slug
    return f"{slug[:40]}_{hashlib.sha256(writer_id.encode()).hexdigest()[:8]}"


def writer_of_lane(writer_id: str) -> str:
    """The writer a chain belongs to, as its identity is provisioned: the lane suffix ``.N`` removed, slugged."""
    return writer_slug(_LANE.sub("", writer_id))


def own_signing_key(writer_id: str) -> str:
    """The per-writer key name of writer_id's chain (``audit-signing-<writer>``; lanes share their writer's)."""
    return f"{AUDIT_SIGNING_KEY}-{writer_of_lane(writer_id)}"


def per_writer_keys(keys: KeyService) -> bool:
    """Whether each writer signs with its own key (Vault/OpenBao) rather than the node's one key (local)."""
    return getattr(keys, "backend", None) == "vault"


def signing_key_for(keys: KeyService, writer_id: str) -> str:
    """The key service key that signs writer_id's chain: ``audit-signing-<writer>`` on Vault/OpenBao (its lanes
    share it), else ``audit-signing``."""
    return own_signing_key(writer_id) if per_writer_keys(keys) else AUDIT_SIGNING_KEY


class ChainKeys:
    """The public keys each chain verifies under, fetched from the key service once per key name."""

    def __init__(self, keys: KeyService) -> None:
        self._keys = keys
        self.resolved: dict[str, dict[int, bytes]] = {}

    def __call__(self, writer_id: str) -> dict[int, bytes]:
        name = signing_key_for(self._keys, writer_id)
        if name not in self.resolved:
            self.resolved[name] = dict(self._keys.public_keys(name))
        return self.resolved[name]


def chain_public_keys(keys: KeyService) -> Mapping[int, bytes] | ChainKeys:
    """What ``verify_store`` takes: the one key's public keys (local), or a per-chain resolver (Vault)."""
    return ChainKeys(keys) if per_writer_keys(keys) else keys.public_keys(AUDIT_SIGNING_KEY)


PublicKeys = Mapping[int, bytes] | Callable[[str], Mapping[int, bytes]]


def signed_message(label: str, writer_id: str, seq: int, record_hash: str) -> bytes:
    """The bytes a checkpoint (``label="checkpoint"``) or purge anchor (``label="anchor"``) signature covers."""
    return f"appliance-audit-{label}:v1:{writer_id}:{seq}:{record_hash}".encode()


def sign(keys: KeyService, message: bytes, writer_id: str | None = None) -> str:
    """The key service's signature of message as text, with writer_id's key (None: the node's ``audit-signing``);
    ``KeyUnavailable`` when it cannot sign."""
    try:
        signature = keys.sign(AUDIT_SIGNING_KEY if writer_id is None else signing_key_for(keys, writer_id), message)
    except ApplianceError:
        raise
    except Exception as exc:  # a key service must not leak foreign errors, but the audit trail fails closed anyway
        raise KeyUnavailable(f"audit signing failed ({type(exc).__name__})") from exc
    return signature.decode("ascii")


def checkpoint_body(
    writer_id: str, signed_seq: int, signed_hash: str, signature: str, key: str = AUDIT_SIGNING_KEY
) -> bytes:
    """The event body of a checkpoint record (built by the writer, not by callers); ``key`` names the signing key."""
    details: CheckpointDetails = {
        "key": key,
        "signature": signature,
        "signed_hash": signed_hash,
        "signed_seq": signed_seq,
    }
    return canonical_json(
        audit_event(CHECKPOINT_TYPE, actor=system_actor(WRITER_SUBJECT), action="checkpoint", details=details)
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


def named_fingerprint(named: Mapping[str, Mapping[int, bytes]]) -> str:
    """The fingerprint of several named keys' public keys (that of :func:`key_fingerprint` for ``audit-signing``
    alone, so a single-key trail keeps its fingerprint)."""
    if set(named) == {AUDIT_SIGNING_KEY}:
        return key_fingerprint(named[AUDIT_SIGNING_KEY])
    digest = hashlib.sha256()
    for name, public_keys in sorted(named.items()):
        for version, key in sorted(public_keys.items()):
            digest.update(f"{name}:{version}:".encode() + key)
    return digest.hexdigest()[:32]


def key_fingerprint(public_keys: Mapping[int, bytes]) -> str:
    """A short SHA-256 fingerprint of the public keys, for an investigator to compare out of band."""
    digest = hashlib.sha256()
    for version, key in sorted(public_keys.items()):
        digest.update(f"{version}:".encode() + key)
    return digest.hexdigest()[:32]
