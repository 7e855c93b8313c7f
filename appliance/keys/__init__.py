"""Keys: envelope encryption, MACs, signatures and secrets behind one interface (see README.md).

``open_key_service(settings)`` gives the local keystore or Vault/OpenBao (transit + KV v2); ``encrypt``/``decrypt``
are the AES-256-GCM helpers every stage uses with a data key; ``verify_offline`` checks an exported signature with
public keys only.
"""

from __future__ import annotations

from appliance.keys._envelope import decrypt, encrypt
from appliance.keys._factory import open_key_service
from appliance.keys._local import LocalKeyService
from appliance.keys._names import ARTIFACTS, AUDIT_HMAC, AUDIT_SIGNING, CANARIES, CHECKPOINTS, SECRETS_GATEWAY
from appliance.keys._protocols import ManagedKeyService, SecretStore
from appliance.keys._signature import parse_signature, verify_offline
from appliance.keys._status import KeyInfo, KeyServiceStatus

__all__ = [
    "ARTIFACTS",
    "AUDIT_HMAC",
    "AUDIT_SIGNING",
    "CANARIES",
    "CHECKPOINTS",
    "SECRETS_GATEWAY",
    "KeyInfo",
    "KeyServiceStatus",
    "LocalKeyService",
    "ManagedKeyService",
    "SecretStore",
    "decrypt",
    "encrypt",
    "open_key_service",
    "parse_signature",
    "verify_offline",
]


def __getattr__(name: str) -> object:
    if name == "VaultKeyService":  # imports hvac only when asked for
        from appliance.keys._vault import VaultKeyService

        return VaultKeyService
    raise AttributeError(name)
