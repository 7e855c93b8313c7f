"""What an operator may see of a key service: where it is, whether it is sealed, and each key's versions."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["KeyInfo", "KeyServiceStatus"]


@dataclass(frozen=True)
class KeyInfo:
    """One named key: its type and versions (never its material)."""

    name: str
    type: str
    latest_version: int
    versions: int
    min_decryption_version: int = 1


@dataclass(frozen=True)
class KeyServiceStatus:
    """The key service's state as shown by ``appliance keyservice status``."""

    backend: str
    location: str  # keystore path or Vault address
    sealed: bool
    keys: list[KeyInfo] = field(default_factory=list)
    detail: str | None = None  # e.g. "keys not listed: this token may not list transit keys"
