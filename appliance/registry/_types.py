"""Plain values the registry hands out (never ORM rows, which are bound to a session)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Literal

from appliance.audit import ActorFields, AuthMethod, actor_fields

__all__ = [
    "ROLES",
    "Actor",
    "AdapterInfo",
    "ApprovalInfo",
    "ErasureItem",
    "ErasurePlan",
    "EvalSetInfo",
    "LineageReport",
    "PublishedAdapter",
    "RollbackResult",
    "SeriesPoint",
    "VerifyResult",
]

ROLES = ("approver", "admin")
Status = Literal["staged", "approved", "production", "retired"]


@dataclass(frozen=True)
class Actor:
    """Who performs a registry operation, as the edge that authenticated them says.

    The CLI builds one from the people table after checking the person's token (``auth_method="cli"``); the
    gateway builds one from an OIDC-verified principal. The registry trusts ``roles`` as given: authenticating
    is the edge's job, authorising is the registry's.
    """

    subject: str
    roles: frozenset[str] = frozenset()
    auth_method: AuthMethod = "cli"
    client_id: str | None = None
    session_id: str | None = None

    def audit(self) -> ActorFields:
        """The audit event's ``actor`` object (contracts.md)."""
        return actor_fields(
            self.subject, self.auth_method, client_id=self.client_id, session_id=self.session_id, roles=self.roles
        )


@dataclass(frozen=True)
class PublishedAdapter:
    """An adapter the gateway may route to: served under ``served_id`` with this weights fingerprint."""

    name: str
    version: int
    served_id: str
    fingerprint: str
    status: str
    targets: tuple[str, ...] = ()
    base_model: str | None = None


@dataclass(frozen=True)
class ApprovalInfo:
    """One approval as recorded."""

    subject: str
    role: str
    auth_method: str
    comment: str | None
    approved_at: datetime


@dataclass(frozen=True)
class AdapterInfo:
    """An adapter version with its provenance, approvals and publications."""

    name: str
    version: int
    served_id: str
    status: str
    weights_fingerprint: str
    run_id: str
    trained_by: str
    registered_by: str
    registered_at: datetime
    base_model: dict[str, Any]
    dataset: dict[str, Any]
    dp: dict[str, Any]
    metrics: dict[str, Any]
    canaries: dict[str, Any]
    hyperparameters: dict[str, Any]
    evaluation: dict[str, Any] | None = None  # base vs adapter on the eval split (None: registered before 0003)
    quantization: dict[str, Any] | None = None  # metadata.quantization (None: trained before QLoRA)
    privacy_audit: dict[str, Any] | None = None  # the one-run audit's counts and epsilon lower bound (None: none)
    approvals: list[ApprovalInfo] = field(default_factory=list)
    targets: list[str] = field(default_factory=list)
    retired_reason: str | None = None
    degraded_reason: str | None = None  # set by the monitor (revision 0004): never rolled back to

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        data = asdict(self)
        data["registered_at"] = self.registered_at.isoformat()
        for approval in data["approvals"]:
            approval["approved_at"] = approval["approved_at"].isoformat()
        return data


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of decrypting and checking one adapter's artifact."""

    name: str
    version: int
    ok: bool
    files: int
    error: str | None = None


@dataclass(frozen=True)
class LineageReport:
    """What saw one subject: datasets (with training-record counts), runs and adapters."""

    datasets: list[dict[str, Any]]
    runs: list[dict[str, Any]]
    adapters: list[dict[str, Any]]

    @property
    def found(self) -> bool:
        """Whether any dataset holds the subject."""
        return bool(self.datasets)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {"datasets": self.datasets, "runs": self.runs, "adapters": self.adapters}


@dataclass(frozen=True)
class ErasureItem:
    """One thing an erasure request touches, what to do about it, and the DP guarantee that applied."""

    kind: Literal["dataset", "adapter"]
    ref: str
    action: str
    status: str | None
    guarantee: str
    epsilon: float | None = None
    delta: float | None = None
    privacy_unit: str | None = None
    records: int | None = None


@dataclass(frozen=True)
class ErasurePlan:
    """Everything that must be retired, retrained or re-prepared for one subject."""

    items: list[ErasureItem]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        return {"items": [asdict(i) for i in self.items]}


@dataclass(frozen=True)
class EvalSetInfo:
    """A kept record set (an adapter's eval split or a reference set): what it is, never its records."""

    kind: str  # "eval_split" | "reference"
    name: str  # the reference's name, or the adapter's served id
    records: int
    dataset_fingerprint: str
    registered_by: str
    registered_at: datetime
    approval: dict[str, Any] | None = None  # eval split: the run's evaluation report (approval-time figures)


@dataclass(frozen=True)
class SeriesPoint:
    """One point of the monitor's time series (figures only: never a record's text)."""

    run_id: str
    name: str
    version: int
    fingerprint: str
    reference: str  # "eval-split" or a reference set's name
    n: int
    mismatched: int
    loss: float | None
    exact_match: float | None
    outcome: str  # "pass" | "fail" | "not_comparable" | "error"
    figures: dict[str, Any] = field(default_factory=dict)
    measured_at: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view."""
        data = asdict(self)
        data["measured_at"] = self.measured_at.isoformat() if self.measured_at else None
        return data


@dataclass(frozen=True)
class RollbackResult:
    """A rollback: which version stopped serving and which serves again, on which targets."""

    name: str
    from_version: int
    to_version: int
    to_fingerprint: str
    targets: tuple[str, ...]
