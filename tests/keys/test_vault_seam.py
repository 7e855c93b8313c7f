"""The hvac/requests error seam: every foreign error becomes one of ours (no server needed)."""

from __future__ import annotations

import inspect
from typing import Any

import hvac.exceptions as hvac_errors
import pytest
import requests

from appliance.errors import (
    ApplianceError,
    IntegrityViolation,
    KeyUnavailable,
    NotFound,
    VaultForbidden,
    VaultSealed,
    VaultUnreachable,
)
from appliance.keys._vault_seam import KeyMissing, seam

ADDR = "http://127.0.0.1:8200"


def _raise_through_seam(exc: BaseException) -> BaseException:
    with pytest.raises((ApplianceError, KeyMissing)) as info, seam("test op", ADDR):
        raise exc
    return info.value


def test_every_hvac_error_is_mapped() -> None:
    """Each VaultError subclass hvac defines comes out of the seam as one of our errors, never as itself."""
    classes: list[Any] = [
        c for _, c in inspect.getmembers(hvac_errors, inspect.isclass) if issubclass(c, hvac_errors.VaultError)
    ]
    assert len(classes) > 8
    for cls in classes:
        out = _raise_through_seam(cls("boom", errors=["boom"]))
        assert isinstance(out, KeyUnavailable | NotFound | IntegrityViolation | KeyMissing), cls
        assert not isinstance(out, hvac_errors.VaultError)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (hvac_errors.VaultDown("Vault is sealed", errors=["Vault is sealed"]), VaultSealed),
        (hvac_errors.VaultDown("standby", errors=["node is in standby"]), VaultUnreachable),
        (hvac_errors.Forbidden("permission denied", errors=["permission denied"]), VaultForbidden),
        (hvac_errors.Unauthorized("missing client token"), VaultForbidden),
        (hvac_errors.InvalidRequest("x", errors=["encryption key not found"]), KeyMissing),
        (hvac_errors.InvalidRequest("x", errors=["cipher: message authentication failed"]), IntegrityViolation),
        (hvac_errors.InvalidRequest("x", errors=["missing input"]), KeyUnavailable),
        (hvac_errors.InvalidPath(), NotFound),
        (hvac_errors.InternalServerError("x", errors=["storage failure"]), KeyUnavailable),
        (requests.exceptions.ConnectionError("refused"), VaultUnreachable),
        (requests.exceptions.ConnectTimeout("slow"), VaultUnreachable),
        (requests.exceptions.ReadTimeout("slow"), VaultUnreachable),
        (requests.exceptions.SSLError("bad cert"), VaultUnreachable),
        (requests.exceptions.ChunkedEncodingError("cut"), VaultUnreachable),
    ],
)
def test_specific_mappings(exc: BaseException, expected: type[BaseException]) -> None:
    """Sealed, forbidden, unreachable, timeouts, TLS and rejected data each map to the error that names them."""
    out = _raise_through_seam(exc)
    assert type(out) is expected
    if isinstance(out, ApplianceError):
        assert "test op" in out.message or isinstance(out, NotFound)


def test_messages_never_carry_the_token() -> None:
    """A foreign error whose text contains a token is reported without it."""
    token = "hvs.secret-token-value"
    out = _raise_through_seam(requests.exceptions.ConnectionError(f"failed with header X-Vault-Token: {token}"))
    assert token not in str(out)
