"""The registry's tables (SQLAlchemy 2 ORM). Alembic migrations in ``migrations/`` create exactly these.

Provenance chain: base_models <- training_runs -> datasets -> dataset_subjects; adapters -> training_runs;
approvals and publications hang off adapters. People and their roles authenticate CLI approvers.
Times are timezone-aware UTC. Nothing here holds a raw subject id, prompt text or plaintext key.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "STATUSES",
    "Adapter",
    "Approval",
    "Base",
    "BaseModel",
    "Dataset",
    "DatasetSubject",
    "EvalSet",
    "MonitorResult",
    "Person",
    "PersonRole",
    "Publication",
    "TrainingRun",
    "utcnow",
]

STATUSES = ("staged", "approved", "production", "retired")

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """Declarative base with stable constraint names (so migrations can refer to them)."""

    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class BaseModel(Base):
    """A base model directory, identified by its content hash."""

    __tablename__ = "base_models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(Text)
    registered_at: Mapped[datetime] = mapped_column(default=utcnow)


class Dataset(Base):
    """A prepared dataset: its fingerprint, its manifest, and the salt of its subject digests."""

    __tablename__ = "datasets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    path: Mapped[str] = mapped_column(Text)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    subject_salt: Mapped[str | None] = mapped_column(String(128), nullable=True)
    registered_at: Mapped[datetime] = mapped_column(default=utcnow)

    subjects: Mapped[list[DatasetSubject]] = relationship(back_populates="dataset", cascade="all, delete-orphan")


class DatasetSubject(Base):
    """One salted subject digest in a dataset, with how many training records carry it (None when unknown)."""

    __tablename__ = "dataset_subjects"

    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"), primary_key=True)
    digest: Mapped[str] = mapped_column(String(128), primary_key=True)
    records: Mapped[int | None] = mapped_column(Integer, nullable=True)  # train-split records; 0 = eval only

    dataset: Mapped[Dataset] = relationship(back_populates="subjects")


class TrainingRun(Base):
    """One training run: who trained what on which data, with which privacy guarantee and results."""

    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(String(128), unique=True)
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id"))
    dataset_id: Mapped[int] = mapped_column(ForeignKey("datasets.id"))
    trained_by: Mapped[str] = mapped_column(String(128))
    dp_enabled: Mapped[bool] = mapped_column(Boolean)
    epsilon: Mapped[float | None] = mapped_column(Float, nullable=True)
    delta: Mapped[float | None] = mapped_column(Float, nullable=True)
    privacy_unit: Mapped[str] = mapped_column(String(16))
    max_exposure: Mapped[float | None] = mapped_column(Float, nullable=True)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    # base vs adapter on the eval split (appliance.evaluation's report; NULL: registered before revision 0003)
    evaluation: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # the one-run privacy audit's counts and bound (NULL: not audited, or registered before revision 0005)
    privacy_audit: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    dp: Mapped[dict[str, Any]] = mapped_column(JSON)
    canaries: Mapped[dict[str, Any]] = mapped_column(JSON)
    lora: Mapped[dict[str, Any]] = mapped_column(JSON)
    started_at: Mapped[str | None] = mapped_column(String(64), nullable=True)
    finished_at: Mapped[str | None] = mapped_column(String(64), nullable=True)
    registered_at: Mapped[datetime] = mapped_column(default=utcnow)

    base_model: Mapped[BaseModel] = relationship()
    dataset: Mapped[Dataset] = relationship()


class Adapter(Base):
    """A registered adapter version: its weights fingerprint, lifecycle status and encrypted artifact."""

    __tablename__ = "adapters"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_adapters_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(63))
    version: Mapped[int] = mapped_column(Integer)
    run_pk: Mapped[int] = mapped_column(ForeignKey("training_runs.id"))
    weights_fingerprint: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16), default="staged")
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    artifact_dir: Mapped[str] = mapped_column(Text)  # relative to <data_dir>/artifacts
    key_purpose: Mapped[str] = mapped_column(String(63))
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    files: Mapped[dict[str, Any]] = mapped_column(JSON)  # {file name: {"sha256": hex, "size": int}}
    registered_by: Mapped[str] = mapped_column(String(128))
    registered_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    retired_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    # set when the monitor found it degraded (revision 0004): never chosen by a rollback or published again by one
    degraded_at: Mapped[datetime | None] = mapped_column(nullable=True)
    degraded_reason: Mapped[str | None] = mapped_column(Text, nullable=True)

    run: Mapped[TrainingRun] = relationship()
    approvals: Mapped[list[Approval]] = relationship(back_populates="adapter", order_by="Approval.id")
    publications: Mapped[list[Publication]] = relationship(back_populates="adapter", order_by="Publication.id")

    @property
    def served_id(self) -> str:
        """The id backends serve this adapter under (contracts.md)."""
        return f"{self.name}-v{self.version}"


class Approval(Base):
    """One person's approval of one adapter version."""

    __tablename__ = "approvals"
    __table_args__ = (UniqueConstraint("adapter_id", "subject", name="uq_approvals_adapter_subject"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"))
    subject: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(32))
    auth_method: Mapped[str] = mapped_column(String(16))
    comment: Mapped[str | None] = mapped_column(Text, nullable=True)
    approved_at: Mapped[datetime] = mapped_column(default=utcnow)

    adapter: Mapped[Adapter] = relationship(back_populates="approvals")


class Publication(Base):
    """An adapter published to one backend target; active while ``unpublished_at`` is null."""

    __tablename__ = "publications"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"))
    target: Mapped[str] = mapped_column(String(16))
    served_id: Mapped[str] = mapped_column(String(80))
    path: Mapped[str] = mapped_column(Text)
    # SHA-256 of the adapter_config.json bytes written to ``path`` (NULL: published before revision 0002)
    config_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    published_by: Mapped[str] = mapped_column(String(128))
    published_at: Mapped[datetime] = mapped_column(default=utcnow)
    unpublished_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    unpublished_at: Mapped[datetime | None] = mapped_column(nullable=True)

    adapter: Mapped[Adapter] = relationship(back_populates="publications")


class Person(Base):
    """Someone who may act through the CLI: a subject and the scrypt hash of their personal token."""

    __tablename__ = "people"

    subject: Mapped[str] = mapped_column(String(128), primary_key=True)
    token_hash: Mapped[str] = mapped_column(Text)  # "scrypt$n$r$p$salt_b64$hash_b64"
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    disabled_at: Mapped[datetime | None] = mapped_column(nullable=True)

    roles: Mapped[list[PersonRole]] = relationship(back_populates="person", cascade="all, delete-orphan")


class PersonRole(Base):
    """A role held by a person (``approver``, ``admin``)."""

    __tablename__ = "person_roles"

    subject: Mapped[str] = mapped_column(ForeignKey("people.subject", ondelete="CASCADE"), primary_key=True)
    role: Mapped[str] = mapped_column(String(32), primary_key=True)
    granted_by: Mapped[str] = mapped_column(String(128))
    granted_at: Mapped[datetime] = mapped_column(default=utcnow)

    person: Mapped[Person] = relationship(back_populates="roles")


class EvalSet(Base):
    """A labelled record set the monitor scores adapters on, encrypted at rest like an adapter (revision 0004).

    ``kind`` ``eval_split``: the run's eval split, kept at registration, bound to the adapter's weights fingerprint
    and carrying the approval-time figures; ``reference``: a newer labelled set the hospital registered, bound to
    its prepared dataset's fingerprint.
    """

    __tablename__ = "eval_sets"
    __table_args__ = (UniqueConstraint("kind", "name", name="uq_eval_sets_kind_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(80))  # the reference's name, or the adapter's served id
    adapter_id: Mapped[int | None] = mapped_column(ForeignKey("adapters.id"), nullable=True)
    binding: Mapped[str] = mapped_column(String(64))  # fingerprint the ciphertext is bound to (AAD)
    dataset_fingerprint: Mapped[str] = mapped_column(String(64))
    records: Mapped[int] = mapped_column(Integer)
    artifact_dir: Mapped[str] = mapped_column(Text)  # relative to <data_dir>/evalsets
    key_purpose: Mapped[str] = mapped_column(String(63))
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    sha256: Mapped[str] = mapped_column(String(64))  # of the plaintext JSONL
    size: Mapped[int] = mapped_column(Integer)
    # eval split: the run's evaluation report (approval-time figures, appliance.evaluation's format)
    approval: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    registered_by: Mapped[str] = mapped_column(String(128))
    registered_at: Mapped[datetime] = mapped_column(default=utcnow)


class MonitorResult(Base):
    """One point of the monitor's time series: an adapter version scored on one record set through serving."""

    __tablename__ = "monitor_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(String(40), index=True)  # one `appliance monitor run` pass
    adapter_id: Mapped[int] = mapped_column(ForeignKey("adapters.id"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    version: Mapped[int] = mapped_column(Integer)
    fingerprint: Mapped[str] = mapped_column(String(64))  # the published weights fingerprint scored
    reference: Mapped[str] = mapped_column(String(80))  # "eval-split" or a reference set's name
    measured_at: Mapped[datetime] = mapped_column(default=utcnow)
    n: Mapped[int] = mapped_column(Integer)  # records sent
    mismatched: Mapped[int] = mapped_column(Integer)  # records the backend received differently
    loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    exact_match: Mapped[float | None] = mapped_column(Float, nullable=True)
    outcome: Mapped[str] = mapped_column(String(16))  # pass | fail | not_comparable | error
    figures: Mapped[dict[str, Any]] = mapped_column(JSON)  # figures, per-record scores, reasons (numbers only)
