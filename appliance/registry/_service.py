"""The registry service: the only writer of adapter state.

Every state change runs in one database transaction that also records its audit event; the transaction commits
only after the audit trail confirmed the event is durable, so a refused audit write leaves the registry
unchanged (fail closed). Files outside the database (encrypted artifacts, decrypted serving copies, backend
lists) are written before the commit and undone or re-rendered from the committed state when anything fails.

:class:`Registry` is the façade the CLI, the gateway and the monitor call. It holds one
:class:`~appliance.registry._context.Context` and the collaborators that share it, one concern each:

- :class:`~appliance.registry._registration.Registration`: ``add`` (run directory → ``staged``);
- :class:`~appliance.registry._approvals.Approvals`: two-person approval and the rules publish re-checks;
- :class:`~appliance.registry._lifecycle.Lifecycle`: queries, publish, unpublish, retire, rollback;
- :class:`~appliance.registry._lists.BackendLists`: the publish lock and the backend lists of every serving change;
- :class:`~appliance.registry._people.People`: CLI identities, roles and personal tokens;
- :class:`~appliance.registry._lineage.Lineage`: lineage and the erasure plan;
- :class:`~appliance.registry._integrity.Integrity`: verify, verify_publications, rewrap;
- :class:`~appliance.registry._monitoring_store.MonitoringStore`: eval splits, references, series, degraded marks;
- :class:`~appliance.registry._canary_store.CanaryStore`: the sealed canaries, for the production probe.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.orm import Session

from appliance.canaries import CanaryDocument
from appliance.protocols import AuditLog, KeyService
from appliance.registry._approvals import REQUIRED_APPROVALS, Approvals
from appliance.registry._artifacts import ArtifactStore
from appliance.registry._canary_store import CanaryStore
from appliance.registry._context import Context, artifact_of
from appliance.registry._db import Database
from appliance.registry._evalsets import EvalSetStore
from appliance.registry._integrity import Integrity
from appliance.registry._lifecycle import Lifecycle
from appliance.registry._lineage import Lineage
from appliance.registry._lists import BackendLists
from appliance.registry._models import Adapter
from appliance.registry._monitoring_store import MonitoringStore
from appliance.registry._people import People, check_subject
from appliance.registry._policy import ApprovalLimits
from appliance.registry._publish import Publisher
from appliance.registry._registration import Registration
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
from appliance.serving import PUBLICATION_KEY

__all__ = ["REQUIRED_APPROVALS", "Registry", "check_subject"]


class Registry:
    """Adapters with provenance, two-person approval, encrypted artifacts, publish and lineage."""

    def __init__(
        self,
        db: Database,
        keys: KeyService,
        audit: AuditLog,
        *,
        artifacts_dir: Path,
        serving_dir: Path,
        policies_dir: Path,
        ledger_path: Path,
        verify_base_model: bool = True,
    ) -> None:
        self.context = Context(
            db=db,
            keys=keys,
            audit=audit,
            artifacts=ArtifactStore(artifacts_dir, keys),
            evalsets=EvalSetStore(artifacts_dir, keys),
            publisher=Publisher(serving_dir, sign=lambda data: keys.sign(PUBLICATION_KEY, data)),
            policies_dir=Path(policies_dir),
            ledger_path=Path(ledger_path),
            verify_base_model=verify_base_model,
        )
        ctx = self.context
        self.lists = BackendLists(ctx)
        self.monitoring = MonitoringStore(ctx)
        self.registration = Registration(ctx, self.monitoring)
        self.approvals = Approvals(ctx)
        self.lifecycle = Lifecycle(ctx, self.lists)
        self.roster = People(ctx)
        self.lineage_index = Lineage(ctx)
        self.integrity = Integrity(ctx)
        self.canary_store = CanaryStore(ctx)
        self._on_close: list[Callable[[], Any]] = []

    # --- the shared dependencies (one Context; the policy and ledger paths may be replaced) ------------------
    @property
    def db(self) -> Database:
        return self.context.db

    @property
    def keys(self) -> KeyService:
        return self.context.keys

    @property
    def audit(self) -> AuditLog:
        return self.context.audit

    @property
    def artifacts(self) -> ArtifactStore:
        return self.context.artifacts

    @property
    def evalsets(self) -> EvalSetStore:
        return self.context.evalsets

    @property
    def publisher(self) -> Publisher:
        return self.context.publisher

    @property
    def policies_dir(self) -> Path:
        return self.context.policies_dir

    @policies_dir.setter
    def policies_dir(self, value: Path) -> None:
        self.context.policies_dir = Path(value)

    @property
    def ledger_path(self) -> Path:
        return self.context.ledger_path

    @ledger_path.setter
    def ledger_path(self, value: Path) -> None:
        self.context.ledger_path = Path(value)

    @property
    def verify_base_model(self) -> bool:
        return self.context.verify_base_model

    # --- registration and canaries ---------------------------------------------------------------------------
    def add(self, run_dir: Path, name: str, actor: Actor) -> AdapterInfo:
        """Register a completed training run's adapter as the next version of ``name`` (status ``staged``)."""
        return self.registration.add(run_dir, name, actor)

    def canaries(self, name: str, version: int, actor: Actor) -> CanaryDocument:
        """The canary secrets and prompts of one adapter, decrypted in memory only (for the production probe);
        NotFound when it was registered without sealed canaries. The read is audited (counts only)."""
        return self.canary_store.canaries(name, version, actor)

    # --- queries ---------------------------------------------------------------------------------------------
    def list_adapters(self, name: str | None = None, status: str | None = None) -> list[AdapterInfo]:
        """Adapters, newest version first within each name."""
        return self.lifecycle.list_adapters(name, status)

    def show(self, name: str, version: int) -> AdapterInfo:
        """One adapter version with its provenance, approvals and publications."""
        return self.lifecycle.show(name, version)

    def resolve(self, name: str, version: int | Literal["production"]) -> PublishedAdapter:
        """The published adapter the gateway should route ``(name, version)`` to.

        ``"production"`` means the newest published version of ``name``. Raises NotFound for an unknown name or
        version, PermissionDenied for a version that exists but is not published (the message says its status).
        """
        return self.lifecycle.resolve(name, version)

    def published(self) -> list[PublishedAdapter]:
        """Every adapter in production, by name then version."""
        return self.lifecycle.published()

    # --- approval, publish, unpublish, retire ----------------------------------------------------------------
    def approval_limits(self) -> ApprovalLimits:
        """The limits from ``policies/privacy.yaml`` (read on every approval: policy edits apply at once)."""
        return self.context.approval_limits()

    def approve(self, name: str, version: int, actor: Actor, comment: str | None = None) -> AdapterInfo:
        """Record ``actor``'s approval; the second distinct approver moves the adapter to ``approved``."""
        return self.approvals.approve(name, version, actor, comment)

    def publish(self, name: str, version: int, target: str, actor: Actor) -> PublishedAdapter:
        """Decrypt an approved adapter into the serving directory and add it to ``target``'s list."""
        return self.lifecycle.publish(name, version, target, actor)

    def unpublish(self, name: str, version: int, actor: Actor, target: str | None = None) -> AdapterInfo:
        """Remove an adapter from one target's list (or all); with none left it is ``approved`` again."""
        return self.lifecycle.unpublish(name, version, actor, target)

    def retire(self, name: str, version: int, actor: Actor, reason: str | None = None) -> AdapterInfo:
        """Retire an adapter for good: unpublished everywhere, never approved or published again."""
        return self.lifecycle.retire(name, version, actor, reason)

    # --- integrity -------------------------------------------------------------------------------------------
    def verify(self, name: str | None = None, version: int | None = None) -> list[VerifyResult]:
        """Decrypt every artifact (or one name / version) and check each file's digest and the fingerprint; for a
        published adapter, also its decrypted copy under ``serving/adapters/`` against the weights fingerprint
        and the config digest recorded at publish. Each published list's signature is checked first; an adapter
        served from a list that fails is failed too."""
        return self.integrity.verify(name, version)

    def verify_publications(self) -> list[VerifyResult]:
        """Each target's published list against its signature and against what the database says is published;
        one result per target (``name`` = ``"<target> list"``, ``version`` 0)."""
        return self.integrity.verify_publications()

    def rewrap(self, actor: Actor) -> int:
        """Rewrap every adapter's data key under the newest version of its key encryption key."""
        return self.integrity.rewrap(actor)

    # --- lineage ---------------------------------------------------------------------------------------------
    def lineage(self, subject_id: str, actor: Actor) -> LineageReport:
        """The datasets, runs and adapters that saw a subject (matched by each dataset's salted digest)."""
        return self.lineage_index.lineage(subject_id, actor)

    def erasure_plan(self, subject_id: str, actor: Actor) -> ErasurePlan:
        """What must be re-prepared, retired or retrained to honour an erasure request, with each DP guarantee."""
        return self.lineage_index.erasure_plan(subject_id, actor)

    # --- monitoring: kept record sets, the time series, degradation, rollback --------------------------------
    def eval_split(self, name: str, version: int) -> tuple[EvalSetInfo, bytes]:
        """The adapter's kept eval split (JSONL of instruction/response) and its approval-time figures; NotFound
        for an adapter registered before revision 0004."""
        return self.monitoring.eval_split(name, version)

    def add_reference(self, name: str, dataset_dir: Path, actor: Actor) -> EvalSetInfo:
        """Keep a newer labelled reference set (a prepared dataset, both splits) encrypted for the monitor."""
        return self.monitoring.add_reference(name, dataset_dir, actor)

    def references(self) -> list[EvalSetInfo]:
        """Every reference set, oldest first (never their records)."""
        return self.monitoring.references()

    def reference_records(self, name: str) -> bytes:
        """A reference set's records (JSONL), decrypted and checked."""
        return self.monitoring.reference_records(name)

    def record_series(self, points: list[SeriesPoint], actor: Actor) -> None:
        """Store one monitor pass's points; one ``monitor.evaluate`` audit event per adapter version."""
        self.monitoring.record_series(points, actor)

    def series(
        self, name: str | None = None, version: int | None = None, reference: str | None = None, limit: int = 200
    ) -> list[SeriesPoint]:
        """The monitor's time series, newest first."""
        return self.monitoring.series(name, version, reference, limit)

    def mark_degraded(
        self, name: str, version: int, actor: Actor, reason: str, details: Mapping[str, Any] | None = None
    ) -> AdapterInfo:
        """Record that the monitor found ``name`` v``version`` degraded (``adapter.degraded``); a rollback never
        chooses it again. Its publication is left to :meth:`rollback`."""
        return self.monitoring.mark_degraded(name, version, actor, reason, details)

    def previous_approved(self, name: str, version: int) -> int | None:
        """The version a rollback from ``name`` v``version`` would serve (None: there is none)."""
        return self.lifecycle.previous_approved(name, version)

    def rollback(
        self, name: str, actor: Actor, *, reason: str | None = None, details: Mapping[str, Any] | None = None
    ) -> RollbackResult:
        """Serve the previous two-person-approved version of ``name`` again (never a newer one).

        The version ``production`` resolves to now (and any published version newer than the one rolled back to)
        is unpublished and marked degraded, so no rollback chooses it again; the newest earlier version that is
        not degraded, has two current approvers and still meets the approval policy and its ledger row is
        published to every target the unpublished ones were on. Refused (Conflict, audited as denied, nothing
        changed) when no such version exists."""
        return self.lifecycle.rollback(name, actor, reason=reason, details=details)

    # --- people (CLI identities) -----------------------------------------------------------------------------
    def grant(self, subject: str, role: str, actor: Actor, token: str | None = None) -> str | None:
        """Give ``subject`` a role, creating the person with a new personal token (returned once) if needed.

        Only an admin may grant; the very first grant of ``admin`` on an empty people table bootstraps the
        first admin (an audit event says so).
        """
        return self.roster.grant(subject, role, actor, token)

    def needs_bootstrap(self) -> bool:
        """Whether no one holds any role yet (the first grant of ``admin`` needs no admin)."""
        return self.roster.needs_bootstrap()

    def revoke(self, subject: str, role: str, actor: Actor) -> None:
        """Take a role away from a person (an admin's act)."""
        self.roster.revoke(subject, role, actor)

    def people(self) -> list[dict[str, Any]]:
        """Every person with their roles (never their token hash)."""
        return self.roster.people()

    def authenticate(self, subject: str, token: str) -> Actor:
        """The CLI actor for a person whose personal token matches (constant time; same error for every miss)."""
        return self.roster.authenticate(subject, token)

    # --- plumbing --------------------------------------------------------------------------------------------
    def _get(self, s: Session, name: str, version: int, *, lock: bool = False) -> Adapter:
        """The adapter row (:meth:`Context.get`)."""
        return self.context.get(s, name, version, lock=lock)

    @staticmethod
    def _artifact(adapter: Adapter) -> dict[str, Any]:
        """What the artifact store opens this adapter's sealed files with."""
        return artifact_of(adapter)

    def close(self) -> None:
        """Release the database pool (and anything :func:`open_registry` opened for this registry)."""
        self.context.db.dispose()
        for closer in self._on_close:
            with contextlib.suppress(Exception):
                closer()
