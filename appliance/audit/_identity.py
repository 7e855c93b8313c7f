"""How an identity (a subject, a client id) is written into the trail: faithfully, never refused.

An identity comes from a signed token, an IdP's ID token or an API key; the hospital's IdP decides what it looks
like (``josé.garcía``, ``Dr Alice``, an e-mail address). The trail records it as given, in NFC, with three changes
that keep a record one printable line of bounded size:

- a backslash is written ``\\\\``, and every character that is not printable (control, format such as bidi
  overrides, surrogate, private use, unassigned, line or paragraph separator, any space but U+0020) is written
  ``\\u{XXXX}`` (its code point in hex): the mapping is one-to-one, and what a reader sees is what was there;
- over :data:`IDENTITY_MAX_CHARS` characters, it keeps its first 216 and ends with ``~sha256:`` and 32 hex
  digits of the SHA-256 of the whole identity (UTF-8), so two long identities never share a record's value.

An empty identity is refused: it identifies no one.
"""

from __future__ import annotations

import hashlib
import unicodedata

__all__ = ["IDENTITY_MAX_CHARS", "recordable_identity"]

IDENTITY_MAX_CHARS = 256
_HASH_HEX = 32
_KEEP = IDENTITY_MAX_CHARS - len("~sha256:") - _HASH_HEX  # 216
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"})


def _escaped(ch: str) -> str:
    if ch == "\\":
        return "\\\\"
    if ch != " " and unicodedata.category(ch) in _UNPRINTABLE:
        return f"\\u{{{ord(ch):04x}}}"
    return ch


def recordable_identity(value: str) -> str:
    """The form of an identity the trail records (see the module docstring); ValueError if it is empty."""
    if not isinstance(value, str):
        raise TypeError("an identity is a str")
    if not value:
        raise ValueError("an identity is not empty")
    text = "".join(map(_escaped, unicodedata.normalize("NFC", value)))
    if len(text) <= IDENTITY_MAX_CHARS:
        return text
    whole = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:_HASH_HEX]
    return f"{text[:_KEEP]}~sha256:{whole}"
