"""Signed publications: the registry signs each adapter list it publishes; every reader checks that first.

The list a backend reads (``adapters.json``, ``lora_adapters.env``, ``lora_modules.json``) sits on the serving
host, which can edit it. Beside it the registry writes ``<list>.sig``, a JSON document::

    {"format": "appliance-publication/v1", "target": "embedded", "list_sha256": "<hex of the list's bytes>",
     "adapters": {"<id>": {"fingerprint": "<hex>", "config_sha256": "<hex>|null", "path": "..."}},
     "key": "registry-signing", "signature": "ed25519:v<N>:<base64>"}

``signature`` is Ed25519 (through the key service, key ``registry-signing``) over
``appliance-publication:v1:`` + the canonical JSON of every other field. A reader verifies it with public keys
it gets from a place the serving host's edit cannot replace (:func:`load_publication_keys`), then checks that the
list's bytes are the signed ones, and only then trusts any fingerprint in it: editing weights and list together
is refused. One place builds this contract: the registry signs with :func:`sign_publication`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import ConfigError, IntegrityViolation
from appliance.keys import verify_offline

__all__ = [
    "PUBLICATION_FORMAT",
    "PUBLICATION_KEY",
    "SignedList",
    "load_publication_keys",
    "read_signed_list",
    "sign_publication",
    "signature_path",
]

PUBLICATION_KEY = "registry-signing"  # the key service's Ed25519 key for published lists (registry)
PUBLICATION_FORMAT = "appliance-publication/v1"
_PREFIX = b"appliance-publication:v1:"
_MAX_BYTES = 16 << 20  # a list or signature larger than this is not one the registry wrote


@dataclass(frozen=True)
class SignedList:
    """A list whose signature verified: its bytes and the digests the registry signed for each adapter id."""

    data: bytes
    adapters: dict[str, dict[str, Any]]


def signature_path(list_path: Path) -> Path:
    """Where the signature of a published list lives (beside it)."""
    return list_path.with_name(list_path.name + ".sig")


def _message(document: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in document.items() if k != "signature"}
    return _PREFIX + json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign_publication(
    sign: Callable[[bytes], bytes], target: str, data: bytes, adapters: Mapping[str, Mapping[str, Any]]
) -> bytes:
    """The signature document (bytes of ``<list>.sig``) for a target's list ``data`` and its adapters' digests."""
    document: dict[str, Any] = {
        "format": PUBLICATION_FORMAT,
        "target": target,
        "list_sha256": hashlib.sha256(data).hexdigest(),
        "adapters": {k: dict(v) for k, v in sorted(adapters.items())},
        "key": PUBLICATION_KEY,
    }
    document["signature"] = sign(_message(document)).decode("ascii")
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


class _NotTheSignedBytes(Exception):
    """Internal: the list's bytes are not the signed ones (maybe a publish in between); never leaves this module."""


def _read_regular(path: Path) -> bytes | None:
    """The file's bytes, None when absent; a FIFO, a device or an oversized file is refused unread."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise IntegrityViolation(f"{path}: cannot be read ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode) or info.st_size > _MAX_BYTES:
        raise IntegrityViolation(f"{path}: not a regular file of at most {_MAX_BYTES} bytes")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise IntegrityViolation(f"{path}: cannot be read ({exc.strerror})") from None


def _names_no_adapter(data: bytes) -> bool:
    """True for an empty list as provisioning writes it before the first publish ("", "[]", {"adapters": []})."""
    try:
        value = json.loads(data) if data.strip() else []
    except (ValueError, RecursionError):
        return False
    return value == [] or value == {"adapters": []}


def _verify_once(list_path: Path, target: str, public_keys: Mapping[int, bytes]) -> SignedList | None:
    data = _read_regular(list_path)
    sig_path = signature_path(list_path)
    raw = _read_regular(sig_path)
    if data is None or (raw is None and _names_no_adapter(data)):
        return None  # nothing published to this backend (an unsigned empty list serves no adapter either)
    if raw is None:
        raise IntegrityViolation(
            f"{list_path}: the published list has no signature ({sig_path.name}); only a list the registry signed "
            "is served (publish again with this version of the appliance)"
        )
    try:
        document = json.loads(raw)
        if not isinstance(document, dict):
            raise TypeError("not an object")
        signature = document["signature"]
        adapters = document["adapters"]
        if not isinstance(signature, str) or not isinstance(adapters, dict):
            raise TypeError("signature or adapters has the wrong type")
    except (ValueError, KeyError, TypeError, RecursionError):
        raise IntegrityViolation(f"{sig_path}: not a publication signature") from None
    if not verify_offline(public_keys, _message(document), signature.encode("ascii", "replace")):
        raise IntegrityViolation(
            f"{list_path}: the publication signature does not verify under the registry's public key (edited on the "
            "serving host, or signed by another key)"
        )
    if document.get("format") != PUBLICATION_FORMAT or document.get("target") != target:
        raise IntegrityViolation(f"{sig_path}: signed for {document.get('target')!r}, not for the {target} list")
    if not hmac.compare_digest(str(document.get("list_sha256")), hashlib.sha256(data).hexdigest()):
        raise _NotTheSignedBytes  # maybe a publish in between: the caller reads once more
    return SignedList(data, {str(k): dict(v) for k, v in adapters.items() if isinstance(v, dict)})


def read_signed_list(list_path: Path, target: str, public_keys: Mapping[int, bytes]) -> SignedList | None:
    """The list's bytes once its signature verifies and they are the signed bytes; None when nothing is published.

    ``IntegrityViolation`` for a missing, invalid or foreign signature, or a list that is not the one signed.
    """
    if not public_keys:
        raise ConfigError("no public key of the registry's publication key: cannot check a published list")
    for attempt in range(3):
        try:
            return _verify_once(list_path, target, public_keys)
        except _NotTheSignedBytes:
            time.sleep(0.05 * (attempt + 1))  # the registry replaces list and signature one after the other
    raise IntegrityViolation(f"{list_path}: the list is not the one the registry signed (edited on the serving host)")


def load_publication_keys(settings: Any) -> dict[int, bytes]:
    """The registry's publication public keys, from a place the serving host's edit cannot replace.

    ``serving.publication_public_keys`` (a root-owned file written at provisioning by
    ``appliance keyservice public-keys registry-signing --out FILE``) when set; else the key service itself
    (``public_keys("registry-signing")``). Never a file the registry writes beside the list.
    """
    pinned = settings.serving.publication_public_keys
    if pinned is not None:
        return read_public_keys_file(Path(pinned))
    from appliance.keys import open_key_service

    return dict(open_key_service(settings).public_keys(PUBLICATION_KEY))


def read_public_keys_file(path: Path) -> dict[int, bytes]:
    """Public keys from the JSON ``appliance keyservice public-keys`` writes; ``ConfigError`` when unusable."""
    import base64
    import binascii

    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if document.get("key") != PUBLICATION_KEY or document.get("algorithm") != "ed25519":
            raise ValueError(f"holds {document.get('key')!r}, not the {PUBLICATION_KEY!r} Ed25519 key")
        keys = {int(v): base64.b64decode(k, validate=True) for v, k in document["public_keys"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise ConfigError(f"serving.publication_public_keys {path}: not a usable public key file ({exc})") from None
    if not keys or any(len(k) != 32 for k in keys.values()):
        raise ConfigError(f"serving.publication_public_keys {path}: no 32-byte Ed25519 public key")
    return keys
