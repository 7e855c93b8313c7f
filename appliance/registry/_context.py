"""What every part of the registry shares: one :class:`Context` (database, key service, audit trail, the stores and
the policy paths), the adapter row lookup, the views of a row, and the audit helpers every operation records with.

Each state change records its event through :meth:`Context.record` before its transaction commits: a refused
audit write raises ``AuditUnavailable`` and the transaction rolls back (fail closed).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from appliance.audit import AuditEventFields, OutcomeStatus, adapter_fields, audit_event
from appliance.errors import ApplianceError, AuditUnavailable, NotFound
from appliance.protocols import AuditLog, KeyService
from appliance.registry._artifacts import ArtifactStore
from appliance.registry._db import Database
from appliance.registry._evalsets import EvalSetStore
from appliance.registry._models import Adapter, Publication, TrainingRun
from appliance.registry._policy import ApprovalLimits, load_approval_limits
from appliance.registry._publish import Publisher
from appliance.registry._types import Actor, AdapterInfo, ApprovalInfo, PublishedAdapter

__all__ = ["Context", "active", "artifact_of", "aware", "eager", "info_of", "published_of"]

log = structlog.get_logger("appliance.registry")


@dataclass
class Context:
    """The registry's dependencies, shared by its parts (policy paths may be replaced: read at each use)."""

    db: Database
    keys: KeyService
    audit: AuditLog
    artifacts: ArtifactStore
    evalsets: EvalSetStore
    publisher: Publisher
    policies_dir: Path
    ledger_path: Path
    verify_base_model: bool = True

    def approval_limits(self) -> ApprovalLimits:
        """The limits from ``policies/privacy.yaml`` (read on every approval: policy edits apply at once)."""
        return load_approval_limits(self.policies_dir)

    def get(self, s: Session, name: str, version: int, *, lock: bool = False) -> Adapter:
        """The adapter row; ``lock`` takes a row lock (PostgreSQL) so concurrent changes to it serialise."""
        query = select(Adapter).options(*eager()).where(Adapter.name == name, Adapter.version == version)
        adapter = s.scalar(query.with_for_update() if lock else query)
        if adapter is None:
            if s.scalar(select(func.count()).select_from(Adapter).where(Adapter.name == name)):
                raise NotFound(f"adapter {name!r} has no version {version}")
            raise NotFound(f"no adapter named {name!r}")
        return adapter

    def event(
        self,
        event_type: str,
        action: str,
        actor: Actor,
        adapter: Adapter | None,
        status: OutcomeStatus,
        error_class: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> AuditEventFields:
        """The registry's audit event (built by ``appliance.audit.audit_event``, the contract's one builder)."""
        return audit_event(
            event_type,
            actor=actor.audit(),
            source={"ip": None, "user_agent": None},
            action=action,
            adapter=adapter_fields(adapter.name, adapter.version, adapter.weights_fingerprint) if adapter else None,
            status=status,
            error_class=error_class,
            details=details,
        )

    def record(
        self,
        event_type: str,
        action: str,
        actor: Actor,
        adapter: Adapter | None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Make the event durable before the transaction commits; AuditUnavailable aborts the change."""
        event = self.event(event_type, action, actor, adapter, "success", details=details)
        try:
            self.audit.record_sync(event)
        except AuditUnavailable:
            raise
        except ApplianceError as exc:
            raise AuditUnavailable(f"the audit trail refused the {event_type} event: {exc.message}") from exc

    def denied(
        self,
        event_type: str,
        action: str,
        actor: Actor,
        adapter: Adapter | None,
        exc: ApplianceError,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Record a refused operation (best effort: the operation is refused either way)."""
        event = self.event(event_type, action, actor, adapter, "denied", error_class=exc.code, details=details)
        try:
            self.audit.record_sync(event)
        except ApplianceError:
            log.warning("registry.denial_not_audited", event_type=event_type, code=exc.code)


def aware(value: datetime) -> datetime:
    """A stored timestamp as UTC-aware (SQLite gives it back naive)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def eager() -> list[Any]:
    """The relations every adapter view reads, loaded with the row."""
    return [
        selectinload(Adapter.approvals),
        selectinload(Adapter.publications),
        selectinload(Adapter.run).selectinload(TrainingRun.base_model),
        selectinload(Adapter.run).selectinload(TrainingRun.dataset),
    ]


def active(adapter: Adapter) -> list[Publication]:
    """The adapter's publications not yet ended."""
    return [p for p in adapter.publications if p.unpublished_at is None]


def artifact_of(adapter: Adapter) -> dict[str, Any]:
    """The keyword arguments :class:`ArtifactStore` opens or decrypts this adapter's sealed files with."""
    return {
        "name": adapter.name,
        "version": adapter.version,
        "rel_dir": adapter.artifact_dir,
        "purpose": adapter.key_purpose,
        "wrapped_key": adapter.wrapped_key,
        "files": adapter.files,
        "weights_fingerprint": adapter.weights_fingerprint,
    }


def published_of(adapter: Adapter) -> PublishedAdapter:
    """What the gateway routes to."""
    return PublishedAdapter(
        name=adapter.name,
        version=adapter.version,
        served_id=adapter.served_id,
        fingerprint=adapter.weights_fingerprint,
        status=adapter.status,
        targets=tuple(sorted(p.target for p in active(adapter))),
        base_model=adapter.run.base_model.path,
    )


def info_of(adapter: Adapter) -> AdapterInfo:
    """One adapter version with its provenance, approvals and publications."""
    run = adapter.run
    return AdapterInfo(
        name=adapter.name,
        version=adapter.version,
        served_id=adapter.served_id,
        status=adapter.status,
        weights_fingerprint=adapter.weights_fingerprint,
        run_id=run.run_id,
        trained_by=run.trained_by,
        registered_by=adapter.registered_by,
        registered_at=aware(adapter.registered_at),
        base_model={"path": run.base_model.path, "sha256": run.base_model.sha256},
        dataset={"fingerprint": run.dataset.fingerprint, "path": run.dataset.path},
        dp=dict(run.dp),
        metrics=dict(run.metrics),
        evaluation=dict(run.evaluation) if run.evaluation is not None else None,
        quantization=_quantization_of(adapter.meta),
        privacy_audit=dict(run.privacy_audit) if run.privacy_audit is not None else None,
        canaries=dict(run.canaries),
        hyperparameters=dict(run.hyperparameters),
        approvals=[
            ApprovalInfo(a.subject, a.role, a.auth_method, a.comment, aware(a.approved_at)) for a in adapter.approvals
        ],
        targets=sorted(p.target for p in active(adapter)),
        retired_reason=adapter.retired_reason,
        degraded_reason=adapter.degraded_reason,
    )


def _quantization_of(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    """The registered metadata's ``quantization`` (how the base was held in training, what it is served on)."""
    value = (meta or {}).get("quantization")
    return dict(value) if isinstance(value, dict) else None
