"""The key service as this package offers it: ``KeyService`` plus secrets and an operator view."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from appliance.keys._status import KeyServiceStatus
from appliance.protocols import KeyService

__all__ = ["ManagedKeyService", "SecretStore"]


@runtime_checkable
class SecretStore(Protocol):
    """Small secrets (the gateway's session secret, the OIDC client secret): KV v2 on Vault, the keystore locally."""

    def get_secret(self, path: str) -> dict[str, str]:
        """The secret at path (``NotFound`` when there is none)."""
        ...

    def put_secret(self, path: str, data: Mapping[str, str]) -> None:
        """Store (replace) the secret at path."""
        ...


@runtime_checkable
class ManagedKeyService(KeyService, SecretStore, Protocol):
    """What ``open_key_service`` returns: a ``KeyService`` that also stores secrets and reports its status."""

    backend: str

    def create(self, name: str, key_type: str = "aes256-gcm96") -> None:
        """Create a key ahead of use: ``aes256-gcm96`` (data keys, HMAC) or ``ed25519`` (signing)."""
        ...

    def status(self) -> KeyServiceStatus:
        """Where the keys are, whether the service is sealed, and each key's versions (never material)."""
        ...
