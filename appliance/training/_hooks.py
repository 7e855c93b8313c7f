"""Where training reaches its neighbours: the key service (checkpoint encryption) and the audit trail.

Both go through the other stages' factories (``appliance.keys.open_key_service``,
``appliance.audit.open_audit_log``), which are part of this package: a failure of either fails the run closed.
There is no fallback to unencrypted checkpoints or an unaudited run.
"""

from __future__ import annotations

from collections.abc import Mapping

import structlog

from appliance.audit import OutcomeStatus, audit_event, cli_actor, open_audit_log
from appliance.config import Settings
from appliance.keys import open_key_service
from appliance.protocols import AuditLog, KeyService

__all__ = ["TrainingAudit", "open_audit", "open_keys"]

log = structlog.get_logger("appliance.training")


def open_keys(settings: Settings) -> KeyService:
    """The configured key service (checkpoints are encrypted under it); KeyUnavailable when it cannot open."""
    return open_key_service(settings)


def open_audit(settings: Settings) -> AuditLog:
    """The audit log; AuditUnavailable when it cannot be written."""
    return open_audit_log(settings)


class TrainingAudit:
    """Records ``training.start`` / ``training.finish`` / ``training.refused`` (short identifiers only).

    ``audit`` None only for runs built without the stage factories (tests): events then go to the log alone.
    """

    def __init__(self, audit: AuditLog | None, trained_by: str) -> None:
        self._audit = audit
        self._actor = cli_actor(trained_by)

    def record(
        self,
        event_type: str,
        *,
        status: OutcomeStatus,
        details: Mapping[str, str | int | float | bool | None],
        error: str | None = None,
    ) -> None:
        """Make one event durable before returning (raises AuditUnavailable when it cannot be)."""
        action = event_type.split(".", 1)[1]
        event = audit_event(
            event_type, actor=self._actor, action=action, status=status, error_class=error, details=details
        )
        log.info(event_type, status=status, error_class=error, **dict(details))
        if self._audit is not None:
            self._audit.record_sync(event)
