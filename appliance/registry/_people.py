"""Personal tokens for CLI identities: generated, shown once, stored only as a scrypt hash, checked in constant time.

The CLI runs as the operator on the appliance, so ``--actor alice`` alone proves nothing. An approval through the
CLI needs alice's personal token as well; two approvals need two people's tokens. See README.md, "Trust model".
"""

from __future__ import annotations

import base64
import os
import secrets

from cryptography.exceptions import InvalidKey
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from appliance.errors import ValidationFailed

__all__ = ["MIN_TOKEN_LENGTH", "hash_token", "new_token", "verify_token"]

MIN_TOKEN_LENGTH = 20
_N, _R, _P = 2**14, 8, 1  # ~16 MiB, tens of milliseconds per check
_DUMMY = "scrypt$16384$8$1$" + base64.b64encode(b"\0" * 16).decode() + "$" + base64.b64encode(b"\0" * 32).decode()


def new_token() -> str:
    """A fresh personal token (192 bits, URL-safe)."""
    return secrets.token_urlsafe(24)


def hash_token(token: str) -> str:
    """The scrypt hash of a token, in a self-describing string."""
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValidationFailed(f"a personal token must be at least {MIN_TOKEN_LENGTH} characters")
    salt = os.urandom(16)
    derived = Scrypt(salt=salt, length=32, n=_N, r=_R, p=_P).derive(token.encode())
    return f"scrypt${_N}${_R}${_P}${base64.b64encode(salt).decode()}${base64.b64encode(derived).decode()}"


def verify_token(stored: str | None, token: str) -> bool:
    """Whether token matches the stored hash; takes the same time whether or not the person exists."""
    try:
        scheme, n, r, p, salt_b64, hash_b64 = (stored or _DUMMY).split("$")
        salt, expected = base64.b64decode(salt_b64), base64.b64decode(hash_b64)
        kdf = Scrypt(salt=salt, length=len(expected), n=int(n), r=int(r), p=int(p))
    except (ValueError, TypeError):
        return False
    try:
        kdf.verify(token.encode(), expected)
    except InvalidKey:
        return False
    return stored is not None and scheme == "scrypt"
