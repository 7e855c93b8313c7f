"""Digests of texts the log must never hold: HMAC-SHA256 under the audit key (like Vault's audit hashing).

The gateway records ``digests(keys, prompt, output)``: both digests under one version of the audit key, and that
``key_version``. An investigator holding a text runs ``appliance audit hash [--key-version N]`` and compares: a
rotation keeps the old versions, so a digest recorded before it stays reproducible. Without the key (it never
leaves the key service) a digest reveals nothing about the text, not even for short or guessable texts.
"""

from __future__ import annotations

from appliance.audit._checkpoint import AUDIT_HMAC_KEY
from appliance.errors import ApplianceError, KeyUnavailable
from appliance.protocols import KeyService

__all__ = ["digest", "digests", "versioned_digest"]


def digest(keys: KeyService, text: str, *, version: int | None = None) -> str:
    """The lowercase hex HMAC-SHA256 of text (UTF-8) under the audit HMAC key (that version; the current one when
    None); ``KeyUnavailable`` when it cannot, ``NotFound`` for a version the key service does not have."""
    return versioned_digest(keys, text, version)[1]


def versioned_digest(keys: KeyService, text: str, version: int | None = None) -> tuple[int, str]:
    """(key version, hex digest) of text: :func:`digest` and the version of the audit HMAC key it used."""
    if not isinstance(text, str):
        raise TypeError("digest() takes a str")
    try:
        used, mac = keys.versioned_hmac(AUDIT_HMAC_KEY, text.encode("utf-8"), version)
    except ApplianceError:
        raise
    except Exception as exc:  # foreign errors from a key service fail closed without echoing anything
        raise KeyUnavailable(f"audit digest failed ({type(exc).__name__})") from exc
    if not isinstance(mac, bytes | bytearray) or len(mac) != 32 or not isinstance(used, int) or used < 1:
        raise KeyUnavailable("audit digest failed (the key service returned no versioned HMAC-SHA256)")
    if version is not None and used != version:
        raise KeyUnavailable(f"audit digest failed (the key service used version {used}, not {version})")
    return used, bytes(mac).hex()


def digests(keys: KeyService, prompt: str, output: str) -> dict[str, int | str]:
    """A record's ``digests``: prompt and output under the same audit key version, and that ``key_version`` (the
    output's is pinned to the prompt's, so a rotation between the two cannot split them)."""
    version, prompt_digest = versioned_digest(keys, prompt)
    return {"key_version": version, "output": digest(keys, output, version=version), "prompt": prompt_digest}
