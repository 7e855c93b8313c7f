"""Two-person approval (README.md, "Approval rules"): who counts as a current approver, the approval policy's
limits, the run's claims against its ledger row, and ``approve`` itself. Publish and rollback re-check the same
rules through :func:`check_servable`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from appliance.errors import Conflict, IntegrityViolation, PermissionDenied, PolicyViolation
from appliance.registry._context import Context, info_of
from appliance.registry._ledger import ClaimedRun, check_against_ledger
from appliance.registry._models import Adapter, Approval, Person, utcnow
from appliance.registry._policy import ApprovalLimits, check_privacy_audit, check_quality
from appliance.registry._rundir import RunMetadata
from appliance.registry._types import Actor, AdapterInfo

__all__ = [
    "REQUIRED_APPROVALS",
    "Approvals",
    "audit_of",
    "check_ledger",
    "check_limits",
    "check_servable",
    "claimed_by_metadata",
    "current_approvers",
]

REQUIRED_APPROVALS = 2


class Approvals:
    """Records approvals; the second distinct current approver moves an adapter to ``approved``."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def approve(self, name: str, version: int, actor: Actor, comment: str | None = None) -> AdapterInfo:
        """Record ``actor``'s approval; the second distinct approver moves the adapter to ``approved``."""
        ctx = self.ctx
        limits = ctx.approval_limits()
        with ctx.db.session("approving an adapter") as s:
            adapter = ctx.get(s, name, version, lock=True)
            try:
                if "approver" not in actor.roles:
                    raise PermissionDenied(f"{actor.subject} does not hold the approver role")
                lapsed = adapter.status in {"approved", "production"} and (
                    len(current_approvers(s, adapter)) < REQUIRED_APPROVALS
                )
                if adapter.status != "staged" and not lapsed:
                    raise Conflict(f"adapter {name} v{version} is {adapter.status}; only staged adapters are approved")
                if actor.subject == adapter.run.trained_by:
                    raise PolicyViolation(
                        f"rule two-person-approval: {actor.subject} trained adapter {name} v{version} and cannot "
                        "approve it"
                    )
                if any(a.subject == actor.subject for a in adapter.approvals):
                    raise Conflict(
                        f"{actor.subject} already approved adapter {name} v{version}; the next approval must come "
                        "from a different person"
                    )
                check_limits(adapter, limits)
                check_ledger(ctx.ledger_path, adapter)
            except (PermissionDenied, Conflict, IntegrityViolation) as exc:
                ctx.denied("registry.approve", "approve", actor, adapter, exc)
                raise
            approval = Approval(
                adapter=adapter, subject=actor.subject, role="approver", auth_method=actor.auth_method, comment=comment
            )
            s.add(approval)
            s.flush()
            approvers = current_approvers(s, adapter)
            if len(approvers) >= REQUIRED_APPROVALS and adapter.status == "staged":
                adapter.status = "approved"
                adapter.updated_at = utcnow()
            s.flush()
            ctx.record(
                "registry.approve",
                "approve",
                actor,
                adapter,
                details={"approvals": len(approvers), "status": adapter.status},
            )
            return info_of(adapter)


def current_approvers(s: Session, adapter: Adapter) -> set[str]:
    """Who approved ``adapter`` and still may: a CLI approval counts while its person is enabled and holds the
    approver role in the people table (a revoked approver's approval lapses). An OIDC approver's roles come
    from the identity provider, which the registry cannot ask again; their approval counts as given."""
    current = set()
    for approval in adapter.approvals:
        if approval.auth_method == "cli":
            person = s.get(Person, approval.subject)
            if person is None or person.disabled_at is not None or all(r.role != "approver" for r in person.roles):
                continue
        current.add(approval.subject)
    return current


def check_servable(s: Session, adapter: Adapter, limits: ApprovalLimits, ledger_path: Path) -> None:
    """Rules 4-8 for a version a rollback would serve: two current approvers (PolicyViolation), the policy's
    limits and the ledger row."""
    if len(current_approvers(s, adapter)) < REQUIRED_APPROVALS:
        raise PolicyViolation("lacks two approvals by current approvers")
    check_limits(adapter, limits)
    check_ledger(ledger_path, adapter)


def check_ledger(ledger_path: Path, adapter: Adapter) -> None:
    """The registered run still matches its ledger row (catches rows registered before add checked it)."""
    check_against_ledger(ledger_path, _claimed_by_row(adapter))


def check_limits(adapter: Adapter, limits: ApprovalLimits) -> None:
    """The ``approval:`` limits of ``policies/privacy.yaml``, the quality gate and the audit gate (rules 5, 7, 8)."""
    run = adapter.run
    where = f"adapter {adapter.name} v{adapter.version}"
    if not run.dp_enabled:
        if limits.require_dp:
            raise PolicyViolation(f"rule approval.require_dp: {where} was trained without differential privacy")
    elif run.epsilon is None or run.epsilon > limits.max_epsilon:
        raise PolicyViolation(
            f"rule approval.max_epsilon: {where} spent epsilon {run.epsilon} > the limit {limits.max_epsilon}"
        )
    if run.max_exposure is None:
        raise PolicyViolation(f"rule approval.max_canary_exposure: {where} has no measured canary exposure")
    if run.max_exposure > limits.max_canary_exposure:
        raise PolicyViolation(
            f"rule approval.max_canary_exposure: {where} has canary exposure {run.max_exposure:g} bits > the "
            f"limit {limits.max_canary_exposure:g}"
        )
    check_quality(where, run.evaluation, limits)
    check_privacy_audit(where, run.epsilon if run.dp_enabled else None, run.privacy_audit)


def claimed_by_metadata(meta: RunMetadata, weights: str, config: str) -> ClaimedRun:
    """What a run directory's unsigned ``metadata.json`` claims, to compare with the run's ledger row at add."""
    dp = meta.dp
    return ClaimedRun(
        run_id=meta.run_id,
        dataset=meta.dataset.fingerprint,
        trained_by=meta.trained_by,
        dp=dp.enabled,
        privacy_unit=dp.privacy_unit,
        epsilon=dp.epsilon,
        delta=dp.delta,
        noise_multiplier=dp.noise_multiplier,
        sample_rate=dp.sample_rate,
        steps=meta.steps,
        max_exposure=meta.canaries.max_exposure if meta.canaries.exposures else None,
        weights=weights,
        config=config,
        evaluation=meta.evaluation,
        privacy_audit=audit_of(meta),
    )


def audit_of(meta: RunMetadata) -> dict[str, Any] | None:
    """The run's privacy audit (its empirical epsilon lower bound), as kept in ``training_runs.privacy_audit``."""
    return meta.privacy_audit.model_dump() if meta.privacy_audit is not None else None


def _claimed_by_row(adapter: Adapter) -> ClaimedRun:
    run, steps = adapter.run, adapter.meta.get("steps")
    return ClaimedRun(
        run_id=run.run_id,
        dataset=run.dataset.fingerprint,
        trained_by=run.trained_by,
        dp=run.dp_enabled,
        privacy_unit=run.privacy_unit,
        epsilon=run.epsilon,
        delta=run.delta,
        noise_multiplier=run.dp.get("noise_multiplier"),
        sample_rate=run.dp.get("sample_rate"),
        steps=steps if isinstance(steps, int) else None,
        max_exposure=run.max_exposure,
        weights=adapter.weights_fingerprint,
        config=str(adapter.files.get("adapter_config.json", {}).get("sha256")),  # the bytes sealed at add
        evaluation=adapter.run.evaluation,
        privacy_audit=adapter.run.privacy_audit,
    )
