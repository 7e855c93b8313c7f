"""The adapter registry: provenance, encrypted artifacts, two-person approval, publish and lineage (README.md).

``open_registry(settings)`` gives the :class:`Registry` service over SQLite in the data directory or PostgreSQL;
the gateway calls :meth:`Registry.resolve` / :meth:`Registry.published` to route requests.
"""

from __future__ import annotations

from appliance.config import Settings
from appliance.protocols import AuditLog, KeyService
from appliance.registry._db import Database
from appliance.registry._lineage import subject_digest
from appliance.registry._publish import TARGETS
from appliance.registry._reach import PublicationReport, reach_replicas
from appliance.registry._service import REQUIRED_APPROVALS, Registry
from appliance.registry._types import (
    Actor,
    AdapterInfo,
    ErasurePlan,
    EvalSetInfo,
    LineageReport,
    PublishedAdapter,
    RollbackResult,
    SeriesPoint,
    VerifyResult,
)

__all__ = [
    "REQUIRED_APPROVALS",
    "TARGETS",
    "Actor",
    "AdapterInfo",
    "ErasurePlan",
    "EvalSetInfo",
    "LineageReport",
    "PublicationReport",
    "PublishedAdapter",
    "Registry",
    "RollbackResult",
    "SeriesPoint",
    "VerifyResult",
    "open_registry",
    "reach_replicas",
    "subject_digest",
]


def open_registry(settings: Settings, keys: KeyService | None = None, audit: AuditLog | None = None) -> Registry:
    """The registry over ``settings.registry_url``, migrated to the newest schema.

    ``keys`` and ``audit`` default to the configured key service and audit trail (opened here and closed by
    :meth:`Registry.close`). Neither falls back to anything: a key service or audit trail that cannot be opened
    raises its error and no registry is returned.
    """
    if keys is None:
        from appliance.keys import open_key_service

        keys = open_key_service(settings)
    opened_audit = False
    if audit is None:
        from appliance.audit import open_audit_log

        audit = open_audit_log(settings, keys=keys)
        opened_audit = True
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.registry_url)
    registry = Registry(
        db,
        keys,
        audit,
        artifacts_dir=settings.artifacts_dir,
        serving_dir=settings.serving_dir,
        policies_dir=settings.policies_dir,
        ledger_path=settings.ledger_path,
    )
    if opened_audit:
        registry._on_close.append(audit.close_sync)
    return registry
