"""The registry service: the only writer of adapter state.

Every state change runs in one database transaction that also records its audit event; the transaction commits
only after the audit trail confirmed the event is durable, so a refused audit write leaves the registry
unchanged (fail closed). Files outside the database (encrypted artifacts, decrypted serving copies, backend
lists) are written before the commit and undone or re-rendered from the committed state when anything fails.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import re
import shutil
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import structlog
from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from appliance.audit import AuditEventFields, OutcomeStatus, adapter_fields, audit_event
from appliance.canaries import SEALED_FILE, CanaryDocument, check_count, open_document, read_document, render_document
from appliance.errors import (
    ApplianceError,
    AuditUnavailable,
    ConfigError,
    Conflict,
    IntegrityViolation,
    NotFound,
    PermissionDenied,
    PolicyViolation,
    StorageUnavailable,
    Unauthenticated,
    ValidationFailed,
)
from appliance.protocols import AuditLog, KeyService
from appliance.registry._artifacts import PROBE_FILE, ArtifactStore
from appliance.registry._db import Database, exclusive_file_lock
from appliance.registry._evalsets import EVAL_SPLIT, REFERENCE, EvalSetStore, dataset_records
from appliance.registry._ledger import ClaimedRun, check_against_ledger
from appliance.registry._lineage import describe, subject_digest
from appliance.registry._models import (
    Adapter,
    Approval,
    BaseModel,
    Dataset,
    DatasetSubject,
    EvalSet,
    MonitorResult,
    Person,
    PersonRole,
    Publication,
    TrainingRun,
    utcnow,
)
from appliance.registry._people import hash_token, new_token, verify_token
from appliance.registry._policy import ApprovalLimits, check_privacy_audit, check_quality, load_approval_limits
from appliance.registry._publish import TARGETS, PublishEntry, Publisher, check_target
from appliance.registry._rundir import RunMetadata, check_name, read_run_dir, sha256_file
from appliance.registry._types import (
    ROLES,
    Actor,
    AdapterInfo,
    ApprovalInfo,
    ErasureItem,
    ErasurePlan,
    EvalSetInfo,
    LineageReport,
    PublishedAdapter,
    RollbackResult,
    SeriesPoint,
    VerifyResult,
)
from appliance.serving import PUBLICATION_KEY, read_signed_list

__all__ = ["REQUIRED_APPROVALS", "Registry", "check_subject"]

log = structlog.get_logger("appliance.registry")

REQUIRED_APPROVALS = 2


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


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
        self.db = db
        self.keys = keys
        self.audit = audit
        self.artifacts = ArtifactStore(artifacts_dir, keys)
        self.evalsets = EvalSetStore(artifacts_dir, keys)
        self.publisher = Publisher(serving_dir, sign=lambda data: keys.sign(PUBLICATION_KEY, data))
        self.policies_dir = Path(policies_dir)
        self.ledger_path = Path(ledger_path)
        self.verify_base_model = verify_base_model
        self._on_close: list[Any] = []

    # --- registration ----------------------------------------------------------------------------------------
    def add(self, run_dir: Path, name: str, actor: Actor) -> AdapterInfo:
        """Register a completed training run's adapter as the next version of ``name`` (status ``staged``)."""
        check_name(name)
        run = read_run_dir(run_dir)
        meta = run.metadata
        if self.verify_base_model:
            self._check_base_model(Path(meta.base_model.path), meta.base_model.sha256)
        sealed = None
        kept: str | None = None
        try:
            with self.db.session("registering an adapter") as s:
                dup = s.scalar(select(Adapter).where(Adapter.weights_fingerprint == run.weights_fingerprint))
                if dup is not None:
                    raise Conflict(
                        f"these weights are already registered as {dup.name} v{dup.version} "
                        f"(fingerprint {run.weights_fingerprint[:16]}...)"
                    )
                prior_run = s.scalar(select(TrainingRun).where(TrainingRun.run_id == meta.run_id))
                if prior_run is not None:
                    raise Conflict(f"training run {meta.run_id!r} is already registered")
                try:  # metadata.json is an unsigned file: its claims must match the run's ledger row
                    check_against_ledger(
                        self.ledger_path, _claimed_by_metadata(meta, run.weights_fingerprint, run.config_sha256)
                    )
                except IntegrityViolation as exc:
                    self._denied("registry.add", "add", actor, None, exc, details={"run_id": meta.run_id})
                    raise
                version = (s.scalar(select(func.max(Adapter.version)).where(Adapter.name == name)) or 0) + 1
                sealed = self.artifacts.seal(name, version, self._files_to_seal(run.files, meta))
                base = s.scalar(select(BaseModel).where(BaseModel.sha256 == meta.base_model.sha256))
                if base is None:
                    base = BaseModel(sha256=meta.base_model.sha256, path=meta.base_model.path)
                    s.add(base)
                dataset = s.scalar(select(Dataset).where(Dataset.fingerprint == run.dataset.fingerprint))
                if dataset is None:
                    dataset = Dataset(
                        fingerprint=run.dataset.fingerprint,
                        path=run.dataset.path,
                        manifest=run.dataset.manifest,
                        subject_salt=run.dataset.salt,
                        subjects=[DatasetSubject(digest=d, records=n) for d, n in sorted(run.dataset.subjects.items())],
                    )
                    s.add(dataset)
                dp = meta.dp
                training_run = TrainingRun(
                    run_id=meta.run_id,
                    base_model=base,
                    dataset=dataset,
                    trained_by=meta.trained_by,
                    dp_enabled=dp.enabled,
                    epsilon=dp.epsilon,
                    delta=dp.delta,
                    privacy_unit=dp.privacy_unit,
                    # no canary measured is no exposure measured (training writes 0.0 for none), not 0 bits
                    max_exposure=meta.canaries.max_exposure if meta.canaries.exposures else None,
                    hyperparameters=meta.hyperparameters,
                    metrics=meta.metrics,
                    evaluation=meta.evaluation,
                    privacy_audit=_audit_of(meta),
                    dp=dp.model_dump(),
                    canaries=meta.canaries.model_dump(),
                    lora=meta.lora,
                    started_at=meta.started_at,
                    finished_at=meta.finished_at,
                )
                adapter = Adapter(
                    name=name,
                    version=version,
                    run=training_run,
                    weights_fingerprint=run.weights_fingerprint,
                    status="staged",
                    meta=run.raw_metadata,
                    artifact_dir=sealed.rel_dir,
                    key_purpose=sealed.purpose,
                    wrapped_key=sealed.wrapped_key,
                    files=sealed.files,
                    registered_by=actor.subject,
                )
                s.add(adapter)
                s.flush()
                kept = self._keep_eval_split(s, adapter, Path(run.dataset.path), run.dataset.fingerprint, actor)
                self._record(
                    "registry.add",
                    "add",
                    actor,
                    adapter,
                    details={"run_id": meta.run_id, "dp": dp.enabled, "dataset": run.dataset.fingerprint[:16]},
                )
                info = self._info(adapter)
        except BaseException:
            if sealed is not None:
                self.artifacts.remove(sealed.rel_dir)
            if kept is not None:
                self.evalsets.remove(kept)
            raise
        log.info("registry.added", adapter=name, version=version, fingerprint=run.weights_fingerprint[:16])
        return info

    def _files_to_seal(self, files: Mapping[str, Path], meta: RunMetadata) -> dict[str, Path | bytes]:
        """The run's files, its sealed canaries opened (``canaries`` unwrap: the trainer cannot) and re-sealed as
        ``canaries.json`` with the adapter; the plaintext stays in memory. A run whose metadata says its canaries
        were sealed must bring them (ValidationFailed otherwise); a file sealed for another run is refused."""
        out: dict[str, Path | bytes] = {k: v for k, v in files.items() if k not in (SEALED_FILE, PROBE_FILE)}
        promised = bool(meta.canaries.model_extra and meta.canaries.model_extra.get("sealed"))
        if SEALED_FILE not in files:
            if promised:
                raise ValidationFailed(
                    f"the run's metadata says its canaries were sealed, but {SEALED_FILE} is missing"
                )
            return out
        document = open_document(self.keys, meta.run_id, files[SEALED_FILE].read_bytes())
        check_count(document, meta.canaries.count)
        out[PROBE_FILE] = render_document(document.run_id, document.candidates, document.canaries)
        return out

    def canaries(self, name: str, version: int, actor: Actor) -> CanaryDocument:
        """The canary secrets and prompts of one adapter, decrypted in memory only (for the production probe);
        NotFound when it was registered without sealed canaries. The read is audited (counts only)."""
        with self.db.session("reading an adapter's canaries") as s:
            adapter = self._get(s, name, version)
            artifact = self._artifact(adapter)
            if PROBE_FILE not in artifact["files"]:
                raise NotFound(f"adapter {name} v{version} was registered without sealed canaries")
            artifact["files"] = {PROBE_FILE: artifact["files"][PROBE_FILE]}
            document = read_document(dict(self.artifacts.open(**artifact))[PROBE_FILE])
            self._record(
                "registry.canary_read", "canary_read", actor, adapter, details={"canaries": len(document.canaries)}
            )
        return document

    def _check_base_model(self, path: Path, sha256: str) -> None:
        if not (path / "config.json").is_file():
            log.warning("registry.base_model_absent", detail="base model directory not present; hash not rechecked")
            return
        from appliance.models import model_hash

        actual = model_hash(path)
        if actual != sha256:
            raise IntegrityViolation(
                f"base model at {path} hashes to {actual[:16]}..., but the run recorded {sha256[:16]}..."
            )

    # --- queries ---------------------------------------------------------------------------------------------
    def list_adapters(self, name: str | None = None, status: str | None = None) -> list[AdapterInfo]:
        """Adapters, newest version first within each name."""
        with self.db.session("listing adapters") as s:
            query = select(Adapter).options(*self._eager()).order_by(Adapter.name, Adapter.version.desc())
            if name is not None:
                query = query.where(Adapter.name == name)
            if status is not None:
                query = query.where(Adapter.status == status)
            return [self._info(a) for a in s.scalars(query)]

    def show(self, name: str, version: int) -> AdapterInfo:
        """One adapter version with its provenance, approvals and publications."""
        with self.db.session("reading an adapter") as s:
            return self._info(self._get(s, name, version))

    def resolve(self, name: str, version: int | Literal["production"]) -> PublishedAdapter:
        """The published adapter the gateway should route ``(name, version)`` to.

        ``"production"`` means the newest published version of ``name``. Raises NotFound for an unknown name or
        version, PermissionDenied for a version that exists but is not published (the message says its status).
        """
        with self.db.session("resolving an adapter") as s:
            if version == "production":
                adapter = s.scalar(
                    select(Adapter)
                    .options(*self._eager())
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
                adapter = self._get(s, name, version)
                if adapter.status != "production":
                    raise PermissionDenied(f"adapter {name} v{version} is {adapter.status}, not published")
            return self._published(adapter)

    def published(self) -> list[PublishedAdapter]:
        """Every adapter in production, by name then version."""
        with self.db.session("listing published adapters") as s:
            query = (
                select(Adapter)
                .options(*self._eager())
                .where(Adapter.status == "production")
                .order_by(Adapter.name, Adapter.version)
            )
            return [self._published(a) for a in s.scalars(query)]

    # --- approval --------------------------------------------------------------------------------------------
    def approval_limits(self) -> ApprovalLimits:
        """The limits from ``policies/privacy.yaml`` (read on every approval: policy edits apply at once)."""
        return load_approval_limits(self.policies_dir)

    def approve(self, name: str, version: int, actor: Actor, comment: str | None = None) -> AdapterInfo:
        """Record ``actor``'s approval; the second distinct approver moves the adapter to ``approved``."""
        limits = self.approval_limits()
        with self.db.session("approving an adapter") as s:
            adapter = self._get(s, name, version, lock=True)
            try:
                if "approver" not in actor.roles:
                    raise PermissionDenied(f"{actor.subject} does not hold the approver role")
                lapsed = adapter.status in {"approved", "production"} and (
                    len(self._current_approvers(s, adapter)) < REQUIRED_APPROVALS
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
                self._check_limits(adapter, limits)
                self._check_ledger(adapter)
            except (PermissionDenied, Conflict, IntegrityViolation) as exc:
                self._denied("registry.approve", "approve", actor, adapter, exc)
                raise
            approval = Approval(
                adapter=adapter, subject=actor.subject, role="approver", auth_method=actor.auth_method, comment=comment
            )
            s.add(approval)
            s.flush()
            approvers = self._current_approvers(s, adapter)
            if len(approvers) >= REQUIRED_APPROVALS and adapter.status == "staged":
                adapter.status = "approved"
                adapter.updated_at = utcnow()
            s.flush()
            self._record(
                "registry.approve",
                "approve",
                actor,
                adapter,
                details={"approvals": len(approvers), "status": adapter.status},
            )
            return self._info(adapter)

    @staticmethod
    def _current_approvers(s: Session, adapter: Adapter) -> set[str]:
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

    def _check_ledger(self, adapter: Adapter) -> None:
        """The registered run still matches its ledger row (catches rows registered before add checked it)."""
        check_against_ledger(self.ledger_path, _claimed_by_row(adapter))

    @staticmethod
    def _check_limits(adapter: Adapter, limits: ApprovalLimits) -> None:
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

    # --- publish ---------------------------------------------------------------------------------------------
    def publish(self, name: str, version: int, target: str, actor: Actor) -> PublishedAdapter:
        """Decrypt an approved adapter into the serving directory and add it to ``target``'s list."""
        check_target(target)
        limits = self.approval_limits()
        with self._serving_change(target) as s:
            adapter = self._get(s, name, version, lock=True)
            try:
                if adapter.status not in {"approved", "production"}:
                    raise Conflict(f"adapter {name} v{version} is {adapter.status}; only approved adapters publish")
                current = self._current_approvers(s, adapter)
                if len(current) < REQUIRED_APPROVALS:
                    lapsed = sorted({a.subject for a in adapter.approvals} - current)
                    why = f" ({', '.join(lapsed)} no longer holds the approver role)" if lapsed else ""
                    raise PolicyViolation(
                        f"rule two-person-approval: adapter {name} v{version} lacks two approvals by current "
                        f"approvers{why}; another approver must approve it"
                    )
                if any(p.target == target and p.unpublished_at is None for p in adapter.publications):
                    raise Conflict(f"adapter {name} v{version} is already published to {target}")
                self._check_limits(adapter, limits)  # the policy may have tightened since approval
                self._check_ledger(adapter)
            except (PermissionDenied, Conflict, IntegrityViolation) as exc:
                self._denied("registry.publish", "publish", actor, adapter, exc, details={"target": target})
                raise
            out = self.publisher.adapter_dir(adapter.served_id)
            written = self.artifacts.decrypt_to(
                out, base_model_path=adapter.run.base_model.path, **self._artifact(adapter)
            )
            s.add(
                Publication(
                    adapter=adapter,
                    target=target,
                    served_id=adapter.served_id,
                    path=str(out),
                    config_sha256=written["adapter_config.json"],
                    published_by=actor.subject,
                )
            )
            adapter.status = "production"
            adapter.updated_at = utcnow()
            s.flush()
            self.publisher.write(target, self._entries(s, target))
            self._record("registry.publish", "publish", actor, adapter, details={"target": target})
            result = self._published(adapter)
        log.info("registry.published", adapter=name, version=version, target=target)
        return result

    def unpublish(self, name: str, version: int, actor: Actor, target: str | None = None) -> AdapterInfo:
        """Remove an adapter from one target's list (or all); with none left it is ``approved`` again."""
        targets = [check_target(target)] if target else list(TARGETS)
        with self._serving_change(*targets) as s:
            adapter = self._get(s, name, version, lock=True)
            active = [p for p in adapter.publications if p.unpublished_at is None and p.target in targets]
            if not active:
                where = f"to {target}" if target else "anywhere"
                raise Conflict(f"adapter {name} v{version} is not published {where}")
            self._end_publications(adapter, active, actor)
            if adapter.status == "production" and not self._active(adapter):
                adapter.status = "approved"
            s.flush()
            for t in {p.target for p in active}:
                self.publisher.write(t, self._entries(s, t))
            self._record(
                "registry.unpublish", "unpublish", actor, adapter, details={"targets": "|".join(sorted(targets))}
            )
            return self._info(adapter)

    def retire(self, name: str, version: int, actor: Actor, reason: str | None = None) -> AdapterInfo:
        """Retire an adapter for good: unpublished everywhere, never approved or published again."""
        with self._serving_change(*TARGETS) as s:
            adapter = self._get(s, name, version, lock=True)
            if adapter.status == "retired":
                raise Conflict(f"adapter {name} v{version} is already retired")
            active = self._active(adapter)
            self._end_publications(adapter, active, actor)
            adapter.status = "retired"
            adapter.retired_reason = reason
            adapter.updated_at = utcnow()
            s.flush()
            for t in {p.target for p in active}:
                self.publisher.write(t, self._entries(s, t))
            self._record("registry.retire", "retire", actor, adapter, details={"unpublished": len(active)})
            return self._info(adapter)

    @contextlib.contextmanager
    def _serving_change(self, *targets: str) -> Iterator[Session]:
        """A transaction that rewrites backend lists; if it fails, the lists are re-rendered from the database.

        Decrypted copies no longer published anywhere are deleted once the change has committed.
        """
        with self._publish_lock():
            try:
                with self.db.session("changing what is served") as s:
                    yield s
            except BaseException:
                with contextlib.suppress(ApplianceError, OSError):
                    self._resync(targets)
                raise
            with contextlib.suppress(ApplianceError, OSError):
                self._resync(())

    @contextlib.contextmanager
    def _publish_lock(self) -> Iterator[None]:
        """One serving change at a time on this host: a list rendered by one transaction must not be overwritten
        by another that could not see it (an exclusive flock on ``<serving_dir>/.publish.lock``)."""
        root = self.publisher.serving_dir
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"cannot lock the serving directory {root}: {exc.strerror}") from exc
        with exclusive_file_lock(root / ".publish.lock", f"cannot lock the serving directory {root}"):
            yield

    def _resync(self, targets: tuple[str, ...]) -> None:
        with self.db.session("re-rendering backend lists") as s:
            for t in targets:
                if self.publisher.list_path(t).exists() or self._entries(s, t):
                    self.publisher.write(t, self._entries(s, t))
            live = {p.served_id for p in s.scalars(select(Publication).where(Publication.unpublished_at.is_(None)))}
        root = self.publisher.serving_dir / "adapters"
        if root.is_dir():
            for child in root.iterdir():
                if child.is_dir() and not child.name.startswith(".") and child.name not in live:
                    shutil.rmtree(child, ignore_errors=True)

    @staticmethod
    def _end_publications(adapter: Adapter, publications: list[Publication], actor: Actor) -> None:
        now = utcnow()
        for publication in publications:
            publication.unpublished_at = now
            publication.unpublished_by = actor.subject
        adapter.updated_at = now

    @staticmethod
    def _active(adapter: Adapter) -> list[Publication]:
        return [p for p in adapter.publications if p.unpublished_at is None]

    def _entries(self, s: Session, target: str) -> list[PublishEntry]:
        query = (
            select(Publication)
            .options(selectinload(Publication.adapter).selectinload(Adapter.run).selectinload(TrainingRun.base_model))
            .where(Publication.target == target, Publication.unpublished_at.is_(None))
        )
        return [
            PublishEntry(
                served_id=p.served_id,
                name=p.adapter.name,
                version=p.adapter.version,
                path=p.path,
                fingerprint=p.adapter.weights_fingerprint,
                base_model=p.adapter.run.base_model.path,
                config_sha256=p.config_sha256,
            )
            for p in s.scalars(query)
        ]

    # --- integrity -------------------------------------------------------------------------------------------
    def verify(self, name: str | None = None, version: int | None = None) -> list[VerifyResult]:
        """Decrypt every artifact (or one name / version) and check each file's digest and the fingerprint; for a
        published adapter, also its decrypted copy under ``serving/adapters/`` (what TGI and vLLM load unchecked)
        against the weights fingerprint and the config digest recorded at publish.

        Each published list's signature is checked first (:meth:`verify_publications`); an adapter served from a
        list that fails is failed too, before any of its fingerprints is compared."""
        lists = self.verify_publications()
        refused = {r.name: r.error for r in lists if not r.ok}
        with self.db.session("reading adapters to verify") as s:
            if version is not None and name is not None:
                adapters = [self._get(s, name, version)]
            else:
                query = select(Adapter).order_by(Adapter.name, Adapter.version)
                if name is not None:
                    query = query.where(Adapter.name == name)
                adapters = list(s.scalars(query))
                if name is not None and not adapters:
                    raise NotFound(f"no adapter named {name!r}")
            work = [(a.name, a.version, self._artifact(a), self._active(a)) for a in adapters]
            bad_lists = {
                (a.name, a.version): refused[f"{p.target} list"]
                for a in adapters
                for p in self._active(a)
                if f"{p.target} list" in refused
            }
            served = {  # one directory per adapter; any publication without a config digest fails it
                (n, v): (Path(p[0].path), None if any(x.config_sha256 is None for x in p) else p[0].config_sha256)
                for n, v, _, p in work
                if p
            }
        results = [r for r in lists if not r.ok]
        for a_name, a_version, artifact, _ in work:
            if (a_name, a_version) in bad_lists:
                error = f"served from a published list that does not verify: {bad_lists[(a_name, a_version)]}"
                results.append(VerifyResult(a_name, a_version, ok=False, files=0, error=error))
                continue
            try:
                count = sum(1 for _ in self.artifacts.open(**artifact))
                if (a_name, a_version) in served:
                    _check_served(*served[(a_name, a_version)], artifact["weights_fingerprint"])
            except (IntegrityViolation, OSError) as exc:
                message = exc.message if isinstance(exc, ApplianceError) else f"unreadable: {exc.strerror}"
                results.append(VerifyResult(a_name, a_version, ok=False, files=0, error=message))
            else:
                results.append(VerifyResult(a_name, a_version, ok=True, files=count))
        return results

    def verify_publications(self) -> list[VerifyResult]:
        """Each target's published list against its signature (the registry's public key from the key service)
        and against what the database says is published; one result per target (``name`` = ``"<target> list"``,
        ``version`` 0)."""
        public_keys = self.keys.public_keys(PUBLICATION_KEY)
        with self.db.session("reading publications to verify") as s:
            expected = {t: self._entries(s, t) for t in TARGETS}
        results = []
        for target in TARGETS:
            path = self.publisher.list_path(target)
            try:
                signed = read_signed_list(path, target, public_keys)
                if signed is None:
                    if expected[target]:
                        raise IntegrityViolation(f"{path} is missing: {len(expected[target])} adapter(s) are published")
                    continue
                wanted = self.publisher.render(target, expected[target])
                digests = Publisher.signed_digests(expected[target])
                if not hmac.compare_digest(signed.data, wanted) or signed.adapters != digests:
                    raise IntegrityViolation(f"{path} is signed but is not what the registry has published")
            except (IntegrityViolation, ConfigError) as exc:
                results.append(VerifyResult(f"{target} list", 0, ok=False, files=0, error=exc.message))
            else:
                results.append(VerifyResult(f"{target} list", 0, ok=True, files=1))
        return results

    def rewrap(self, actor: Actor) -> int:
        """Rewrap every adapter's data key under the newest version of its key encryption key."""
        with self.db.session("rewrapping data keys") as s:
            adapters = list(s.scalars(select(Adapter)))
            for adapter in adapters:
                adapter.wrapped_key = self.keys.rewrap(adapter.key_purpose, adapter.wrapped_key)
            s.flush()
            self._record("registry.rewrap", "rewrap", actor, None, details={"adapters": len(adapters)})
            return len(adapters)

    # --- lineage ---------------------------------------------------------------------------------------------
    def lineage(self, subject_id: str, actor: Actor) -> LineageReport:
        """The datasets, runs and adapters that saw a subject (matched by each dataset's salted digest)."""
        if not subject_id or not subject_id.strip():
            raise ValidationFailed("a subject id is required")
        with self.db.session("tracing a subject's lineage") as s:
            datasets, runs, adapters = [], [], []
            for dataset in s.scalars(select(Dataset).where(Dataset.subject_salt.is_not(None)).order_by(Dataset.id)):
                assert dataset.subject_salt is not None
                digest = subject_digest(dataset.subject_salt, subject_id)
                row = s.get(DatasetSubject, (dataset.id, digest))
                if row is None:
                    continue
                datasets.append({"fingerprint": dataset.fingerprint, "path": dataset.path, "records": row.records})
                for run in s.scalars(
                    select(TrainingRun).where(TrainingRun.dataset_id == dataset.id).order_by(TrainingRun.id)
                ):
                    runs.append(
                        {
                            "run_id": run.run_id,
                            "dataset": dataset.fingerprint,
                            "trained_by": run.trained_by,
                            "dp_enabled": run.dp_enabled,
                            "epsilon": run.epsilon,
                            "delta": run.delta,
                            "privacy_unit": run.privacy_unit,
                            "records": row.records,
                        }
                    )
                    for adapter in s.scalars(select(Adapter).where(Adapter.run_pk == run.id).order_by(Adapter.id)):
                        adapters.append(
                            {
                                "name": adapter.name,
                                "version": adapter.version,
                                "status": adapter.status,
                                "fingerprint": adapter.weights_fingerprint,
                                "run_id": run.run_id,
                            }
                        )
            self._record(
                "registry.lineage",
                "lineage",
                actor,
                None,
                details={"datasets": len(datasets), "runs": len(runs), "adapters": len(adapters)},
            )
        return LineageReport(datasets=datasets, runs=runs, adapters=adapters)

    def erasure_plan(self, subject_id: str, actor: Actor) -> ErasurePlan:
        """What must be re-prepared, retired or retrained to honour an erasure request, with each DP guarantee."""
        report = self.lineage(subject_id, actor)
        runs = {r["run_id"]: r for r in report.runs}
        items: list[ErasureItem] = []
        for dataset in report.datasets:
            items.append(
                ErasureItem(
                    kind="dataset",
                    ref=dataset["fingerprint"],
                    action="re-prepare from source data without the subject's records",
                    status=None,
                    guarantee="raw records: no privacy guarantee; delete at source and re-run intake",
                    records=dataset["records"],
                )
            )
        for adapter in report.adapters:
            run = runs[adapter["run_id"]]
            trained = run["records"] != 0
            if adapter["status"] == "retired":
                action = "already retired; delete its encrypted artifacts if the erasure requires it"
            elif not trained:
                action = "none for the weights (subject only in eval); retrain before the next evaluation report"
            else:
                action = "retire, then retrain on the re-prepared dataset"
            items.append(
                ErasureItem(
                    kind="adapter",
                    ref=f"{adapter['name']}-v{adapter['version']}",
                    action=action,
                    status=adapter["status"],
                    guarantee=describe(
                        run["dp_enabled"], run["epsilon"], run["delta"], run["privacy_unit"], run["records"]
                    ),
                    epsilon=run["epsilon"],
                    delta=run["delta"],
                    privacy_unit=run["privacy_unit"],
                    records=run["records"],
                )
            )
        return ErasurePlan(items=items)

    # --- monitoring: kept record sets, the time series, degradation, rollback --------------------------------
    def _keep_eval_split(
        self, s: Session, adapter: Adapter, dataset_path: Path, dataset_fingerprint: str, actor: Actor
    ) -> str:
        """Seal the run's eval split, bound to the adapter's weights fingerprint, with the approval-time figures."""
        data, count = dataset_records(dataset_path, dataset_fingerprint, ("eval",))
        sealed = self.evalsets.seal(EVAL_SPLIT, adapter.served_id, adapter.weights_fingerprint, data)
        s.add(
            EvalSet(
                kind=EVAL_SPLIT,
                name=adapter.served_id,
                adapter_id=adapter.id,
                binding=adapter.weights_fingerprint,
                dataset_fingerprint=dataset_fingerprint,
                records=count,
                artifact_dir=sealed.rel_dir,
                key_purpose=sealed.purpose,
                wrapped_key=sealed.wrapped_key,
                sha256=sealed.sha256,
                size=sealed.size,
                approval=adapter.run.evaluation,
                registered_by=actor.subject,
            )
        )
        return sealed.rel_dir

    @staticmethod
    def _set_info(row: EvalSet) -> EvalSetInfo:
        return EvalSetInfo(
            kind=row.kind,
            name=row.name,
            records=row.records,
            dataset_fingerprint=row.dataset_fingerprint,
            registered_by=row.registered_by,
            registered_at=_aware(row.registered_at),
            approval=dict(row.approval) if row.approval is not None else None,
        )

    def eval_split(self, name: str, version: int) -> tuple[EvalSetInfo, bytes]:
        """The adapter's kept eval split (JSONL of instruction/response) and its approval-time figures.

        Decrypted under AAD bound to the adapter's weights fingerprint; NotFound for an adapter registered before
        revision 0004 (nothing was kept)."""
        with self.db.session("reading an eval split") as s:
            adapter = self._get(s, name, version)
            row = s.scalar(select(EvalSet).where(EvalSet.kind == EVAL_SPLIT, EvalSet.adapter_id == adapter.id))
            if row is None:
                raise NotFound(f"adapter {name} v{version} has no kept eval split (registered before revision 0004)")
            return self._set_info(row), self.evalsets.open(EVAL_SPLIT, row.name, adapter.weights_fingerprint, row)

    def add_reference(self, name: str, dataset_dir: Path, actor: Actor) -> EvalSetInfo:
        """Keep a newer labelled reference set (a prepared dataset, both splits) encrypted for the monitor.

        Refused: a name already used (Conflict), a dataset that changed since it was prepared
        (IntegrityViolation), and a dataset an adapter was trained on (PolicyViolation: it is no reference)."""
        check_name(name)
        dataset_dir = Path(dataset_dir)
        from appliance.registry._rundir import read_dataset

        try:
            manifest = json.loads((dataset_dir / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValidationFailed(f"{dataset_dir} is not a prepared dataset (manifest.json unreadable)") from exc
        fingerprint = manifest.get("fingerprint") if isinstance(manifest, dict) else None
        if not isinstance(fingerprint, str):
            raise ValidationFailed(f"{dataset_dir / 'manifest.json'}: field 'fingerprint' is missing")
        read_dataset(dataset_dir, fingerprint)  # the manifest itself is well formed
        data, count = dataset_records(dataset_dir, fingerprint, ("train", "eval"))
        if count == 0:
            raise ValidationFailed(f"reference set {dataset_dir} has no records")
        sealed_dir: str | None = None
        try:
            with self.db.session("adding a reference set") as s:
                if s.scalar(select(EvalSet).where(EvalSet.kind == REFERENCE, EvalSet.name == name)) is not None:
                    raise Conflict(f"a reference set named {name!r} already exists")
                if s.scalar(select(Dataset).where(Dataset.fingerprint == fingerprint)) is not None:
                    refused = PolicyViolation(
                        f"rule monitoring.independent_reference: dataset {fingerprint[:16]}... trained a registered "
                        "adapter; a reference set must be data no adapter saw"
                    )
                    self._denied("registry.reference_add", "reference_add", actor, None, refused, {"reference": name})
                    raise refused
                sealed = self.evalsets.seal(REFERENCE, name, fingerprint, data)
                sealed_dir = sealed.rel_dir
                row = EvalSet(
                    kind=REFERENCE,
                    name=name,
                    adapter_id=None,
                    binding=fingerprint,
                    dataset_fingerprint=fingerprint,
                    records=count,
                    artifact_dir=sealed.rel_dir,
                    key_purpose=sealed.purpose,
                    wrapped_key=sealed.wrapped_key,
                    sha256=sealed.sha256,
                    size=sealed.size,
                    approval=None,
                    registered_by=actor.subject,
                )
                s.add(row)
                s.flush()
                self._record(
                    "registry.reference_add",
                    "reference_add",
                    actor,
                    None,
                    details={"reference": name, "records": count, "dataset": fingerprint[:16]},
                )
                return self._set_info(row)
        except BaseException:
            if sealed_dir is not None:
                self.evalsets.remove(sealed_dir)
            raise

    def references(self) -> list[EvalSetInfo]:
        """Every reference set, oldest first (never their records)."""
        with self.db.session("listing reference sets") as s:
            query = select(EvalSet).where(EvalSet.kind == REFERENCE).order_by(EvalSet.registered_at, EvalSet.id)
            return [self._set_info(r) for r in s.scalars(query)]

    def reference_records(self, name: str) -> bytes:
        """A reference set's records (JSONL), decrypted and checked."""
        with self.db.session("reading a reference set") as s:
            row = s.scalar(select(EvalSet).where(EvalSet.kind == REFERENCE, EvalSet.name == name))
            if row is None:
                raise NotFound(f"no reference set named {name!r}")
            return self.evalsets.open(REFERENCE, name, row.dataset_fingerprint, row)

    def record_series(self, points: list[SeriesPoint], actor: Actor) -> None:
        """Store one monitor pass's points; one ``monitor.evaluate`` audit event per adapter version, recorded
        before the rows commit."""
        groups: dict[tuple[str, int], list[SeriesPoint]] = {}
        for point in points:
            groups.setdefault((point.name, point.version), []).append(point)
        with self.db.session("recording monitor results") as s:
            for (name, version), group in groups.items():
                adapter = self._get(s, name, version)
                for p in group:
                    s.add(
                        MonitorResult(
                            run_id=p.run_id,
                            adapter_id=adapter.id,
                            name=name,
                            version=version,
                            fingerprint=p.fingerprint,
                            reference=p.reference,
                            measured_at=p.measured_at or utcnow(),
                            n=p.n,
                            mismatched=p.mismatched,
                            loss=p.loss,
                            exact_match=p.exact_match,
                            outcome=p.outcome,
                            figures=p.figures,
                        )
                    )
                s.flush()
                outcomes = [p.outcome for p in group]
                details: dict[str, Any] = {
                    "run_id": group[0].run_id,
                    "sets": len(group),
                    **{o: outcomes.count(o) for o in ("pass", "fail", "not_comparable", "error")},
                }
                for p in group:
                    if p.reference == "eval-split":
                        details |= {"eval_split_loss": p.loss, "eval_split_exact_match": p.exact_match}
                self._record("monitor.evaluate", "evaluate", actor, adapter, details=details)

    def series(
        self, name: str | None = None, version: int | None = None, reference: str | None = None, limit: int = 200
    ) -> list[SeriesPoint]:
        """The monitor's time series, newest first."""
        with self.db.session("reading monitor results") as s:
            query = select(MonitorResult).order_by(MonitorResult.measured_at.desc(), MonitorResult.id.desc())
            if name is not None:
                query = query.where(MonitorResult.name == name)
            if version is not None:
                query = query.where(MonitorResult.version == version)
            if reference is not None:
                query = query.where(MonitorResult.reference == reference)
            return [
                SeriesPoint(
                    run_id=r.run_id,
                    name=r.name,
                    version=r.version,
                    fingerprint=r.fingerprint,
                    reference=r.reference,
                    n=r.n,
                    mismatched=r.mismatched,
                    loss=r.loss,
                    exact_match=r.exact_match,
                    outcome=r.outcome,
                    figures=dict(r.figures),
                    measured_at=_aware(r.measured_at),
                )
                for r in s.scalars(query.limit(limit))
            ]

    def mark_degraded(
        self, name: str, version: int, actor: Actor, reason: str, details: Mapping[str, Any] | None = None
    ) -> AdapterInfo:
        """Record that the monitor found ``name`` v``version`` degraded (``adapter.degraded``); a rollback never
        chooses it again. Its publication is left to :meth:`rollback`."""
        with self.db.session("marking an adapter degraded") as s:
            adapter = self._get(s, name, version, lock=True)
            adapter.degraded_at = adapter.degraded_at or utcnow()
            adapter.degraded_reason = reason[:2000]
            adapter.updated_at = utcnow()
            s.flush()
            self._record("adapter.degraded", "degraded", actor, adapter, details=dict(details or {}))
            return self._info(adapter)

    def _fallback(self, s: Session, name: str, below: int, limits: ApprovalLimits) -> tuple[Adapter | None, list[str]]:
        """The newest version of ``name`` older than ``below`` a rollback may serve: approved or in production,
        not degraded, two current approvers, and still within the approval policy and its ledger row; with why
        each newer candidate was passed over."""
        candidates = s.scalars(
            select(Adapter)
            .options(*self._eager())
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
                if len(self._current_approvers(s, candidate)) < REQUIRED_APPROVALS:
                    raise PolicyViolation("lacks two approvals by current approvers")
                self._check_limits(candidate, limits)
                self._check_ledger(candidate)
            except (PolicyViolation, IntegrityViolation) as exc:
                skipped.append(f"v{candidate.version}: {exc.message}")
                continue
            return candidate, skipped
        return None, skipped

    def previous_approved(self, name: str, version: int) -> int | None:
        """The version a rollback from ``name`` v``version`` would serve (None: there is none)."""
        limits = self.approval_limits()
        with self.db.session("finding the previous approved version") as s:
            previous, _ = self._fallback(s, name, version, limits)
            return previous.version if previous is not None else None

    def rollback(
        self, name: str, actor: Actor, *, reason: str | None = None, details: Mapping[str, Any] | None = None
    ) -> RollbackResult:
        """Serve the previous two-person-approved version of ``name`` again (never a newer one).

        The version ``production`` resolves to now (and any published version newer than the one rolled back to)
        is unpublished and marked degraded, so no rollback chooses it again; the newest earlier version that is
        not degraded, has two current approvers and still meets the approval policy and its ledger row is
        published to every target the unpublished ones were on. Refused (Conflict, audited as denied, nothing
        changed) when no such version exists."""
        limits = self.approval_limits()
        with self._serving_change(*TARGETS) as s:
            current = s.scalar(
                select(Adapter)
                .options(*self._eager())
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
                self._denied(
                    "registry.rollback", "rollback", actor, current, refusal, details={"from_version": current.version}
                )
                raise refusal
            newer = list(
                s.scalars(
                    select(Adapter)
                    .options(*self._eager())
                    .where(Adapter.name == name, Adapter.status == "production", Adapter.version > previous.version)
                    .with_for_update()
                )
            )
            targets = sorted({p.target for a in newer for p in self._active(a)})
            now = utcnow()
            for adapter in newer:
                self._end_publications(adapter, self._active(adapter), actor)
                adapter.status = "approved"
                if adapter.degraded_at is None:
                    adapter.degraded_at = now
                    adapter.degraded_reason = (reason or f"rolled back by {actor.subject}")[:2000]
            for target in targets:
                if any(p.target == target and p.unpublished_at is None for p in previous.publications):
                    continue
                out = self.publisher.adapter_dir(previous.served_id)
                written = self.artifacts.decrypt_to(
                    out, base_model_path=previous.run.base_model.path, **self._artifact(previous)
                )
                s.add(
                    Publication(
                        adapter=previous,
                        target=target,
                        served_id=previous.served_id,
                        path=str(out),
                        config_sha256=written["adapter_config.json"],
                        published_by=actor.subject,
                    )
                )
            previous.status = "production"
            previous.updated_at = now
            s.flush()
            for target in targets:
                self.publisher.write(target, self._entries(s, target))
            self._record(
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

    # --- people (CLI identities) -----------------------------------------------------------------------------
    def grant(self, subject: str, role: str, actor: Actor, token: str | None = None) -> str | None:
        """Give ``subject`` a role, creating the person with a new personal token (returned once) if needed.

        Only an admin may grant; the very first grant of ``admin`` on an empty people table bootstraps the
        first admin (an audit event says so).
        """
        check_subject(subject)
        if role not in ROLES:
            raise ValidationFailed(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
        with self.db.session("granting a role") as s:
            bootstrap = role == "admin" and s.scalar(select(func.count()).select_from(PersonRole)) == 0
            if not bootstrap and "admin" not in actor.roles:
                raise PermissionDenied(f"{actor.subject} does not hold the admin role needed to grant roles")
            person = s.get(Person, subject)
            issued: str | None = None
            if person is None:
                issued = token or new_token()
                person = Person(subject=subject, token_hash=hash_token(issued), created_by=actor.subject)
                s.add(person)
            elif person.disabled_at is not None:
                raise Conflict(f"{subject} is disabled")
            if any(r.role == role for r in person.roles):
                raise Conflict(f"{subject} already holds the {role} role")
            person.roles.append(PersonRole(role=role, granted_by=actor.subject))
            s.flush()
            self._record(
                "registry.grant",
                "grant",
                actor,
                None,
                details={"subject": subject, "role": role, "bootstrap": bootstrap, "new_person": issued is not None},
            )
        return issued if token is None else None

    def needs_bootstrap(self) -> bool:
        """Whether no one holds any role yet (the first grant of ``admin`` needs no admin)."""
        with self.db.session("counting roles") as s:
            return not s.scalar(select(func.count()).select_from(PersonRole))

    def revoke(self, subject: str, role: str, actor: Actor) -> None:
        """Take a role away from a person (an admin's act)."""
        if "admin" not in actor.roles:
            raise PermissionDenied(f"{actor.subject} does not hold the admin role needed to revoke roles")
        with self.db.session("revoking a role") as s:
            held = s.get(PersonRole, (subject, role))
            if held is None:
                raise NotFound(f"{subject} does not hold the {role} role")
            s.delete(held)
            s.flush()
            self._record("registry.revoke", "revoke", actor, None, details={"subject": subject, "role": role})

    def people(self) -> list[dict[str, Any]]:
        """Every person with their roles (never their token hash)."""
        with self.db.session("listing people") as s:
            return [
                {
                    "subject": p.subject,
                    "roles": sorted(r.role for r in p.roles),
                    "created_by": p.created_by,
                    "created_at": _aware(p.created_at).isoformat(),
                    "disabled": p.disabled_at is not None,
                }
                for p in s.scalars(select(Person).options(selectinload(Person.roles)).order_by(Person.subject))
            ]

    def authenticate(self, subject: str, token: str) -> Actor:
        """The CLI actor for a person whose personal token matches (constant time; same error for every miss)."""
        with self.db.session("authenticating a person") as s:
            person = s.get(Person, subject)
            stored = person.token_hash if person is not None and person.disabled_at is None else None
            roles = frozenset(r.role for r in person.roles) if person is not None else frozenset()
        if not verify_token(stored, token):
            raise Unauthenticated(f"unknown person or wrong personal token for {subject!r}")
        return Actor(subject=subject, roles=roles, auth_method="cli")

    # --- plumbing --------------------------------------------------------------------------------------------
    def _get(self, s: Session, name: str, version: int, *, lock: bool = False) -> Adapter:
        """The adapter row; ``lock`` takes a row lock (PostgreSQL) so concurrent changes to it serialise."""
        query = select(Adapter).options(*self._eager()).where(Adapter.name == name, Adapter.version == version)
        adapter = s.scalar(query.with_for_update() if lock else query)
        if adapter is None:
            if s.scalar(select(func.count()).select_from(Adapter).where(Adapter.name == name)):
                raise NotFound(f"adapter {name!r} has no version {version}")
            raise NotFound(f"no adapter named {name!r}")
        return adapter

    @staticmethod
    def _eager() -> list[Any]:
        return [
            selectinload(Adapter.approvals),
            selectinload(Adapter.publications),
            selectinload(Adapter.run).selectinload(TrainingRun.base_model),
            selectinload(Adapter.run).selectinload(TrainingRun.dataset),
        ]

    @staticmethod
    def _artifact(adapter: Adapter) -> dict[str, Any]:
        return {
            "name": adapter.name,
            "version": adapter.version,
            "rel_dir": adapter.artifact_dir,
            "purpose": adapter.key_purpose,
            "wrapped_key": adapter.wrapped_key,
            "files": adapter.files,
            "weights_fingerprint": adapter.weights_fingerprint,
        }

    def _published(self, adapter: Adapter) -> PublishedAdapter:
        return PublishedAdapter(
            name=adapter.name,
            version=adapter.version,
            served_id=adapter.served_id,
            fingerprint=adapter.weights_fingerprint,
            status=adapter.status,
            targets=tuple(sorted(p.target for p in self._active(adapter))),
            base_model=adapter.run.base_model.path,
        )

    def _info(self, adapter: Adapter) -> AdapterInfo:
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
            registered_at=_aware(adapter.registered_at),
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
                ApprovalInfo(a.subject, a.role, a.auth_method, a.comment, _aware(a.approved_at))
                for a in adapter.approvals
            ],
            targets=sorted(p.target for p in self._active(adapter)),
            retired_reason=adapter.retired_reason,
            degraded_reason=adapter.degraded_reason,
        )

    def _event(
        self,
        event_type: str,
        action: str,
        actor: Actor,
        adapter: Adapter | None,
        status: OutcomeStatus,
        error_class: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> AuditEventFields:
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

    def _record(
        self,
        event_type: str,
        action: str,
        actor: Actor,
        adapter: Adapter | None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Make the event durable before the transaction commits; AuditUnavailable aborts the change."""
        event = self._event(event_type, action, actor, adapter, "success", details=details)
        try:
            self.audit.record_sync(event)
        except AuditUnavailable:
            raise
        except ApplianceError as exc:
            raise AuditUnavailable(f"the audit trail refused the {event_type} event: {exc.message}") from exc

    def _denied(
        self,
        event_type: str,
        action: str,
        actor: Actor,
        adapter: Adapter | None,
        exc: ApplianceError,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        """Record a refused operation (best effort: the operation is refused either way)."""
        event = self._event(event_type, action, actor, adapter, "denied", error_class=exc.code, details=details)
        try:
            self.audit.record_sync(event)
        except ApplianceError:
            log.warning("registry.denial_not_audited", event_type=event_type, code=exc.code)

    def close(self) -> None:
        """Release the database pool (and anything :func:`open_registry` opened for this registry)."""
        self.db.dispose()
        for closer in self._on_close:
            with contextlib.suppress(Exception):
                closer()


def _check_served(directory: Path, config_sha256: str | None, weights_fingerprint: str) -> None:
    """A published copy still holds the bytes the registry wrote (IntegrityViolation naming the file if not)."""
    if config_sha256 is None:
        raise IntegrityViolation(
            f"served copy {directory}: published before config digests were recorded; unpublish and publish again"
        )
    for file_name, expected in (
        ("adapter_model.safetensors", weights_fingerprint),
        ("adapter_config.json", config_sha256),
    ):
        try:
            actual = sha256_file(directory / file_name)
        except OSError as exc:
            raise IntegrityViolation(f"served copy {directory}: {file_name} unreadable ({exc.strerror})") from exc
        if actual != expected:
            raise IntegrityViolation(f"served copy {directory}: {file_name} differs from what the registry published")


def _quantization_of(meta: dict[str, Any] | None) -> dict[str, Any] | None:
    """The registered metadata's ``quantization`` (how the base was held in training, what it is served on)."""
    value = (meta or {}).get("quantization")
    return dict(value) if isinstance(value, dict) else None


def _claimed_by_metadata(meta: RunMetadata, weights: str, config: str) -> ClaimedRun:
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
        privacy_audit=_audit_of(meta),
    )


def _audit_of(meta: RunMetadata) -> dict[str, Any] | None:
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


_SUBJECT = re.compile(r"^[A-Za-z0-9_.:@+-]{1,128}$")


def check_subject(subject: str) -> str:
    """A person's subject itself when valid (an identifier the audit trail accepts), else ValidationFailed."""
    if not isinstance(subject, str) or not _SUBJECT.match(subject):
        raise ValidationFailed(
            f"invalid person {subject!r}: use 1-128 of letters, digits and . _ : @ + - (e.g. alice@hospital.example)"
        )
    return subject
