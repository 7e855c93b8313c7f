"""``open_key_service(settings)``: the configured key service, and only that one (never a fallback)."""

from __future__ import annotations

from appliance.config import Settings
from appliance.errors import ConfigError
from appliance.keys._local import LocalKeyService
from appliance.keys._protocols import ManagedKeyService

__all__ = ["open_key_service"]


def open_key_service(settings: Settings) -> ManagedKeyService:
    """The key service ``settings.keys.backend`` names: the local keystore or Vault/OpenBao.

    A Vault/OpenBao that cannot be reached, is sealed or refuses the login raises the matching
    ``KeyUnavailable`` subclass here; nothing falls back to the local keystore.
    """
    backend = settings.keys.backend
    if backend == "local":
        if settings.environment == "production":
            import structlog

            structlog.get_logger("appliance.keys").warning(
                "keys.local_in_production", detail="the local keystore is meant for a single small node or the demo"
            )
        return LocalKeyService(settings.keystore_path)
    if backend == "vault":
        from appliance.keys._vault import VaultKeyService

        return VaultKeyService.from_settings(settings.keys)
    raise ConfigError(f"unknown key service backend {backend!r}: use 'local' or 'vault'")
