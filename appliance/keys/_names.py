"""Key names: the well-known names the stages use, and the one rule every name must satisfy."""

from __future__ import annotations

import re

from appliance.errors import ValidationFailed

__all__ = ["ARTIFACTS", "AUDIT_HMAC", "AUDIT_SIGNING", "CANARIES", "CHECKPOINTS", "SECRETS_GATEWAY", "check_name"]

CHECKPOINTS = "checkpoints"  # data keys for training checkpoints (trainer)
ARTIFACTS = "artifacts"  # data keys for encrypted adapters at rest (registry / publisher)
CANARIES = "canaries"  # data keys sealing canary secrets: the trainer makes them, only the registry unwraps
AUDIT_HMAC = "audit-hmac"  # HMAC-SHA256 digests of prompts and outputs (audit writer)
AUDIT_SIGNING = "audit-signing"  # Ed25519 signatures of audit checkpoints (audit writer)
SECRETS_GATEWAY = "gateway"  # KV path prefix for the gateway's secrets (session secret, OIDC client secret)

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_SECRET_PATH = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}(/[a-z0-9][a-z0-9_-]{0,62}){0,7}$")


def check_name(name: str) -> str:
    """The name itself when it is a valid key name (lower-case letters, digits, '-' and '_'), else an error."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValidationFailed(f"invalid key name {name!r}: use 1-63 of a-z, 0-9, '-', '_' (starting alphanumeric)")
    return name


def check_secret_path(path: str) -> str:
    """The path itself when it is a valid secret path (key names joined by '/'), else an error."""
    if not isinstance(path, str) or not _SECRET_PATH.match(path):
        raise ValidationFailed(f"invalid secret path {path!r}: key names (a-z, 0-9, '-', '_') joined by '/'")
    return path
