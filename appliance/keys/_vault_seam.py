"""The one seam between hvac and the appliance: every hvac/requests error becomes one of ours.

:func:`seam` names the operation and the key (never the token): sealed -> ``VaultSealed``, unreachable/timeout ->
``VaultUnreachable``, 403/401 -> ``VaultForbidden``, a ciphertext or signature Vault rejects ->
``IntegrityViolation``, nothing at a path -> ``NotFound``, the rest -> ``KeyUnavailable``. A missing transit key is
the internal ``KeyMissing``, which ``_vault`` turns into ``NotFound`` or a first-use create.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import hvac.exceptions as hvac_errors
import requests

from appliance.errors import (
    IntegrityViolation,
    KeyUnavailable,
    NotFound,
    VaultForbidden,
    VaultSealed,
    VaultUnreachable,
)

__all__ = ["KeyMissing", "seam"]

_MISSING = re.compile(r"key not found|no existing key named|could not find key", re.IGNORECASE)
_REJECTED = re.compile(
    r"invalid ciphertext|message authentication failed|unable to decrypt|version is too new|"
    r"invalid signature|signature verification|illegal base64|failed to decode|ciphertext",
    re.IGNORECASE,
)


class KeyMissing(Exception):
    """Internal signal: the transit key does not exist (Vault answered 'key not found'); only ``_vault`` sees it."""


def _vault_message(exc: BaseException) -> str:
    errors = getattr(exc, "errors", None)
    has_errors = isinstance(errors, list) and bool(errors)
    text = "; ".join(str(e) for e in errors) if has_errors else str(exc).split(", on ", 1)[0]  # type: ignore[union-attr]
    return " ".join(text.split())[:200]


@contextlib.contextmanager
def seam(operation: str, addr: str) -> Iterator[None]:
    """Translate hvac/requests errors raised inside into ``KeyUnavailable`` subclasses naming the operation."""
    try:
        yield
    except (hvac_errors.VaultDown, hvac_errors.VaultNotInitialized) as exc:
        message = _vault_message(exc)
        if "seal" in message.lower() or isinstance(exc, hvac_errors.VaultNotInitialized):
            raise VaultSealed(f"Vault/OpenBao at {addr} is sealed; refused: {operation}") from None
        raise VaultUnreachable(f"Vault/OpenBao at {addr} is unavailable ({message}); refused: {operation}") from None
    except (hvac_errors.Forbidden, hvac_errors.Unauthorized):
        raise VaultForbidden(
            f"Vault/OpenBao refused {operation}: permission denied under this token's policy (or the token expired)"
        ) from None
    except hvac_errors.InvalidRequest as exc:
        message = _vault_message(exc)
        if _MISSING.search(message):
            raise KeyMissing(message) from None
        if _REJECTED.search(message):
            raise IntegrityViolation(f"Vault/OpenBao rejected the data in {operation}: {message}") from None
        raise KeyUnavailable(f"Vault/OpenBao refused {operation}: {message}") from None
    except hvac_errors.InvalidPath:
        raise NotFound(f"Vault/OpenBao has nothing at the path of {operation}") from None
    except hvac_errors.RateLimitExceeded:
        raise KeyUnavailable(f"Vault/OpenBao rate-limited {operation}; retry later", retry_after=1.0) from None
    except hvac_errors.BadGateway as exc:
        raise VaultUnreachable(
            f"Vault/OpenBao at {addr} is unreachable behind its proxy ({_vault_message(exc)}); refused: {operation}"
        ) from None
    except hvac_errors.VaultError as exc:
        raise KeyUnavailable(f"Vault/OpenBao failed {operation}: {_vault_message(exc)}") from None
    except requests.exceptions.SSLError:
        raise VaultUnreachable(
            f"TLS to Vault/OpenBao at {addr} failed (check vault_ca_cert); refused: {operation}"
        ) from None
    except requests.exceptions.Timeout:
        raise VaultUnreachable(f"Vault/OpenBao at {addr} timed out; refused: {operation}") from None
    except requests.exceptions.RequestException as exc:
        raise VaultUnreachable(
            f"cannot reach Vault/OpenBao at {addr} ({type(exc).__name__}); refused: {operation}"
        ) from None
