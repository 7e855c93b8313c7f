"""Digests of texts the log must never hold: HMAC-SHA256 under the audit key (like Vault's audit hashing).

The gateway records ``digest(keys, prompt)`` and ``digest(keys, output)``; an investigator holding a text runs
``appliance audit hash TEXT`` and compares. Without the key (it never leaves the key service) a digest reveals
nothing about the text, not even for short or guessable texts.
"""

from __future__ import annotations

from appliance.audit._checkpoint import AUDIT_HMAC_KEY
from appliance.errors import ApplianceError, KeyUnavailable
from appliance.protocols import KeyService

__all__ = ["digest"]


def digest(keys: KeyService, text: str) -> str:
    """The lowercase hex HMAC-SHA256 of text (UTF-8) under the audit HMAC key; ``KeyUnavailable`` when it cannot."""
    if not isinstance(text, str):
        raise TypeError("digest() takes a str")
    try:
        mac = keys.hmac(AUDIT_HMAC_KEY, text.encode("utf-8"))
    except ApplianceError:
        raise
    except Exception as exc:  # foreign errors from a key service fail closed without echoing anything
        raise KeyUnavailable(f"audit digest failed ({type(exc).__name__})") from exc
    if not isinstance(mac, bytes | bytearray) or len(mac) != 32:
        raise KeyUnavailable("audit digest failed (the key service returned no HMAC-SHA256)")
    return bytes(mac).hex()
