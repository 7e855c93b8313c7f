"""The adapter state machine after registration (README.md, the diagram): what the gateway may route to
(``resolve``, ``published``), publish, unpublish, retire, and rollback to the previous two-person-approved version.
Approval itself is :mod:`appliance.registry._approvals`; every serving change goes through
:class:`~appliance.registry._lists.BackendLists`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import structlog
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from appliance.errors import (
    Conflict,
    IntegrityViolation,
    NotFound,
    PermissionDenied,
    PolicyViolation,
    ValidationFailed,
)
from appliance.registry._approvals import (
    REQUIRED_APPROVALS,
    check_ledger,
    check_limits,
    check_servable,
    current_approvers,
)
from appliance.registry._context import Context, active, eager, info_of, published_of
from appliance.registry._lists import BackendLists, end_publications
from appliance.registry._models import Adapter, utcnow
from appliance.registry._policy import ApprovalLimits
from appliance.registry._publish import TARGETS, check_target
from appliance.registry._types import Actor, AdapterInfo, PublishedAdapter, RollbackResult

__all__ = ["Lifecycle"]

log = structlog.get_logger("appliance.registry")


class Lifecycle:
    """Queries of adapter state and the changes to what is served."""

    def __init__(self, ctx: Context, lists: BackendLists) -> None:
        self.ctx = ctx
        self.lists = lists

    # --- queries ---------------------------------------------------------------------------------------------
    def list_adapters(self, name: str | None = None, status: str | None = None) -> list[AdapterInfo]:
        """Adapters, newest version first within each name."""
        with self.ctx.db.session("listing adapters") as s:
            query = select(Adapter).options(*eager()).order_by(Adapter.name, Adapter.version.desc())
            if name is not None:
                query = query.where(Adapter.name == name)
            if status is not None:
                query = query.where(Adapter.status == status)
            return [info_of(a) for a in s.scalars(query)]

    def show(self, name: str, version: int) -> AdapterInfo:
        """One adapter version with its provenance, approvals and publications."""
        with self.ctx.db.session("reading an adapter") as s:
            return info_of(self.ctx.get(s, name, version))

    def resolve(self, name: str, version: int | Literal["production"]) -> PublishedAdapter:
        """The published adapter the gateway should route ``(name, version)`` to (see :meth:`Registry.resolve`)."""
        with self.ctx.db.session("resolving an adapter") as s:
            if version == "production":
                adapter = s.scalar(
                    select(Adapter)
                    .options(*eager())
                    .where(Adapter.name == name, Adapter.status == "production")
                    .order_by(Adapter.version.desc())
                    .limit(1)
                )
                if adapter is None:
                    if s.scalar(select(func.count()).select_from(Adapter).where(Adapter.name == name)):
                        raise NotFound(f"no version of adapter {name!r} is published")
                    raise NotFound(f"no adapter named {name!r}")
            else:
                if not isinstance(version, int) or isinstance(version, bool):
                    raise ValidationFailed(f"version must be an integer or 'production', not {version!r}")
                adapter = self.ctx.get(s, name, version)
                if adapter.status != "production":
                    raise PermissionDenied(f"adapter {name} v{version} is {adapter.status}, not published")
            return published_of(adapter)

    def published(self) -> list[PublishedAdapter]:
        """Every adapter in production, by name then version."""
        with self.ctx.db.session("listing published adapters") as s:
            query = (
                select(Adapter)
                .options(*eager())
                .where(Adapter.status == "production")
                .order_by(Adapter.name, Adapter.version)
            )
            return [published_of(a) for a in s.scalars(query)]

    # --- publish, unpublish, retire --------------------------------------------------------------------------
    def publish(self, name: str, version: int, target: str, actor: Actor) -> PublishedAdapter:
        """Decrypt an approved adapter into the serving directory and add it to ``target``'s list."""
        check_target(target)
        ctx = self.ctx
        limits = ctx.approval_limits()
        with self.lists.change(target) as s:
            adapter = ctx.get(s, name, version, lock=True)
            try:
                if adapter.status not in {"approved", "production"}:
                    raise Conflict(f"adapter {name} v{version} is {adapter.status}; only approved adapters publish")
                current = current_approvers(s, adapter)
                if len(current) < REQUIRED_APPROVALS:
                    lapsed = sorted({a.subject for a in adapter.approvals} - current)
                    why = f" ({', '.join(lapsed)} no longer holds the approver role)" if lapsed else ""
                    raise PolicyViolation(
                        f"rule two-person-approval: adapter {name} v{version} lacks two approvals by current "
                        f"approvers{why}; another approver must approve it"
                    )
                if any(p.target == target and p.unpublished_at is None for p in adapter.publications):
                    raise Conflict(f"adapter {name} v{version} is already published to {target}")
                check_limits(adapter, limits)  # the policy may have tightened since approval
                check_ledger(ctx.ledger_path, adapter)
            except (PermissionDenied, Conflict, IntegrityViolation) as exc:
                ctx.denied("registry.publish", "publish", actor, adapter, exc, details={"target": target})
                raise
            self.lists.serve_copy(s, adapter, target, actor)
            adapter.status = "production"
            adapter.updated_at = utcnow()
            s.flush()
            self.lists.render(s, [target])
            ctx.record("registry.publish", "publish", actor, adapter, details={"target": target})
            result = published_of(adapter)
        log.info("registry.published", adapter=name, version=version, target=target)
        return result

    def unpublish(self, name: str, version: int, actor: Actor, target: str | None = None) -> AdapterInfo:
        """Remove an adapter from one target's list (or all); with none left it is ``approved`` again."""
        targets = [check_target(target)] if target else list(TARGETS)
        with self.lists.change(*targets) as s:
            adapter = self.ctx.get(s, name, version, lock=True)
            ending = [p for p in adapter.publications if p.unpublished_at is None and p.target in targets]
            if not ending:
                where = f"to {target}" if target else "anywhere"
                raise Conflict(f"adapter {name} v{version} is not published {where}")
            end_publications(adapter, ending, actor)
            if adapter.status == "production" and not active(adapter):
                adapter.status = "approved"
            s.flush()
            self.lists.render(s, {p.target for p in ending})
            self.ctx.record(
                "registry.unpublish", "unpublish", actor, adapter, details={"targets": "|".join(sorted(targets))}
            )
            return info_of(adapter)

    def retire(self, name: str, version: int, actor: Actor, reason: str | None = None) -> AdapterInfo:
        """Retire an adapter for good: unpublished everywhere, never approved or published again."""
        with self.lists.change(*TARGETS) as s:
            adapter = self.ctx.get(s, name, version, lock=True)
            if adapter.status == "retired":
                raise Conflict(f"adapter {name} v{version} is already retired")
            ending = active(adapter)
            end_publications(adapter, ending, actor)
            adapter.status = "retired"
            adapter.retired_reason = reason
            adapter.updated_at = utcnow()
            s.flush()
            self.lists.render(s, {p.target for p in ending})
            self.ctx.record("registry.retire", "retire", actor, adapter, details={"unpublished": len(ending)})
            return info_of(adapter)

    # --- rollback --------------------------------------------------------------------------------------------
    def previous_approved(self, name: str, version: int) -> int | None:
        """The version a rollback from ``name`` v``version`` would serve (None: there is none)."""
        limits = self.ctx.approval_limits()
        with self.ctx.db.session("finding the previous approved version") as s:
            previous, _ = self._fallback(s, name, version, limits)
            return previous.version if previous is not None else None

    def rollback(
        self, name: str, actor: Actor, *, reason: str | None = None, details: Mapping[str, Any] | None = None
    ) -> RollbackResult:
        """Serve the previous two-person-approved version of ``name`` again (see :meth:`Registry.rollback`)."""
        ctx = self.ctx
        limits = ctx.approval_limits()
        with self.lists.change(*TARGETS) as s:
            current = s.scalar(
                select(Adapter)
                .options(*eager())
                .where(Adapter.name == name, Adapter.status == "production")
                .order_by(Adapter.version.desc())
                .limit(1)
                .with_for_update()
            )
            if current is None:
                raise Conflict(f"no version of adapter {name!r} is published; there is nothing to roll back")
            previous, skipped = self._fallback(s, name, current.version, limits)
            if previous is None:
                why = f" ({'; '.join(skipped)})" if skipped else ""
                refusal = Conflict(
                    f"no earlier version of adapter {name} is approved by two current approvers and not degraded; "
                    f"v{current.version} keeps serving{why}"
                )
                ctx.denied(
                    "registry.rollback", "rollback", actor, current, refusal, details={"from_version": current.version}
                )
                raise refusal
            newer = list(
                s.scalars(
                    select(Adapter)
                    .options(*eager())
                    .where(Adapter.name == name, Adapter.status == "production", Adapter.version > previous.version)
                    .with_for_update()
                )
            )
            targets = sorted({p.target for a in newer for p in active(a)})
            now = utcnow()
            for adapter in newer:
                end_publications(adapter, active(adapter), actor)
                adapter.status = "approved"
                if adapter.degraded_at is None:
                    adapter.degraded_at = now
                    adapter.degraded_reason = (reason or f"rolled back by {actor.subject}")[:2000]
            for target in targets:
                if any(p.target == target and p.unpublished_at is None for p in previous.publications):
                    continue
                self.lists.serve_copy(s, previous, target, actor)
            previous.status = "production"
            previous.updated_at = now
            s.flush()
            self.lists.render(s, targets)
            ctx.record(
                "registry.rollback",
                "rollback",
                actor,
                current,
                details={
                    **dict(details or {}),
                    "from_version": current.version,
                    "to_version": previous.version,
                    "to_fingerprint": previous.weights_fingerprint,
                    "unpublished": len(newer),
                    "targets": "|".join(targets) or None,
                },
            )
            result = RollbackResult(
                name, current.version, previous.version, previous.weights_fingerprint, tuple(targets)
            )
        log.info("registry.rolled_back", adapter=name, from_version=result.from_version, to_version=result.to_version)
        return result

    def _fallback(self, s: Session, name: str, below: int, limits: ApprovalLimits) -> tuple[Adapter | None, list[str]]:
        """The newest version of ``name`` older than ``below`` a rollback may serve: approved or in production,
        not degraded, two current approvers, and still within the approval policy and its ledger row; with why
        each newer candidate was passed over."""
        candidates = s.scalars(
            select(Adapter)
            .options(*eager())
            .where(
                Adapter.name == name,
                Adapter.version < below,
                Adapter.status.in_(("approved", "production")),
                Adapter.degraded_at.is_(None),
            )
            .order_by(Adapter.version.desc())
        )
        skipped: list[str] = []
        for candidate in candidates:
            try:
                check_servable(s, candidate, limits, self.ctx.ledger_path)
            except (PolicyViolation, IntegrityViolation) as exc:
                skipped.append(f"v{candidate.version}: {exc.message}")
                continue
            return candidate, skipped
        return None, skipped
