"""Where training reaches its neighbours: the key service (checkpoint encryption) and the audit trail.

Both go through the other stages' factories (``appliance.keys.open_key_service``,
``appliance.audit.open_audit_log``). While a stage is not installed the hook says so loudly in the log and
carries on without it; once it is, any failure of it fails the run closed (no fallback).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import structlog

from appliance.config import Settings
from appliance.protocols import AuditLog, KeyService

__all__ = ["TrainingAudit", "open_audit_or_none", "open_keys_or_none"]

log = structlog.get_logger("appliance.training")


def _factory(module: str, name: str) -> Any:
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return None


def open_keys_or_none(settings: Settings) -> KeyService | None:
    """The configured key service; None (with a warning) only while the keys stage is not installed."""
    factory = _factory("appliance.keys", "open_key_service")
    if factory is None:
        log.warning("training.keys_stage_missing", effect="checkpoints are stored unencrypted with a checksum")
        return None
    service = factory(settings)
    assert isinstance(service, KeyService)
    return service


def open_audit_or_none(settings: Settings) -> AuditLog | None:
    """The audit log; None (with a warning) only while the audit stage is not installed."""
    factory = _factory("appliance.audit", "open_audit_log")
    if factory is None:
        log.warning("training.audit_stage_missing", effect="training events go to the application log only")
        return None
    audit = factory(settings)
    assert isinstance(audit, AuditLog)
    return audit


class TrainingAudit:
    """Records ``training.start`` / ``training.finish`` / ``training.refused`` (short identifiers only)."""

    def __init__(self, audit: AuditLog | None, trained_by: str) -> None:
        self._audit = audit
        self._actor: dict[str, Any] = {
            "subject": trained_by,
            "client_id": None,
            "auth_method": "cli",
            "session_id": None,
            "roles": [],
        }

    def record(
        self,
        event_type: str,
        *,
        status: str,
        details: Mapping[str, str | int | float | bool | None],
        error: str | None = None,
    ) -> None:
        """Make one event durable before returning (raises AuditUnavailable when it cannot be)."""
        event = {
            "type": event_type,
            "actor": self._actor,
            "action": event_type.split(".", 1)[1],
            "route": None,
            "adapter": None,
            "outcome": {"status": status, "http_status": None, "error_class": error},
            "tokens": None,
            "latency_ms": None,
            "request_id": None,
            "digests": None,
            "details": dict(details),
        }
        log.info(event_type, status=status, error_class=error, **dict(details))
        if self._audit is not None:
            self._audit.record_sync(event)
