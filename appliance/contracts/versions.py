"""The versions every stored artifact records (run metadata, prepared manifests, audit exports, the engine's info)."""

from __future__ import annotations

import importlib.metadata

__all__ = ["package_version"]


def package_version(name: str = "appliance", *, unknown: str = "unknown") -> str:
    """The installed version of the distribution ``name`` (the appliance itself by default); ``unknown`` when it is
    not installed (a source checkout without metadata)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return unknown
