"""``registry add``: a completed training run's directory checked (its files, its dataset, its claims against the
ledger) and registered as the next version of a name, ``staged``, with its files sealed, its canaries re-sealed and
its eval split kept (README.md, "What the run directory proves").
"""

from __future__ import annotations

from pathlib import Path

import structlog
from sqlalchemy import func, select

from appliance.errors import Conflict, IntegrityViolation
from appliance.registry._approvals import audit_of, claimed_by_metadata
from appliance.registry._canary_store import files_to_seal
from appliance.registry._context import Context, info_of
from appliance.registry._ledger import check_against_ledger
from appliance.registry._models import Adapter, BaseModel, Dataset, DatasetSubject, TrainingRun
from appliance.registry._monitoring_store import MonitoringStore
from appliance.registry._rundir import check_name, read_run_dir
from appliance.registry._types import Actor, AdapterInfo

__all__ = ["Registration"]

log = structlog.get_logger("appliance.registry")


class Registration:
    """Registers training runs' adapters; nothing is written unless every check passed and the event is durable."""

    def __init__(self, ctx: Context, monitoring: MonitoringStore) -> None:
        self.ctx = ctx
        self.monitoring = monitoring

    def add(self, run_dir: Path, name: str, actor: Actor) -> AdapterInfo:
        """Register a completed training run's adapter as the next version of ``name`` (status ``staged``)."""
        ctx = self.ctx
        check_name(name)
        run = read_run_dir(run_dir)
        meta = run.metadata
        if ctx.verify_base_model:
            _check_base_model(Path(meta.base_model.path), meta.base_model.sha256)
        sealed = None
        kept: str | None = None
        try:
            with ctx.db.session("registering an adapter") as s:
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
                        ctx.ledger_path, claimed_by_metadata(meta, run.weights_fingerprint, run.config_sha256)
                    )
                except IntegrityViolation as exc:
                    ctx.denied("registry.add", "add", actor, None, exc, details={"run_id": meta.run_id})
                    raise
                version = (s.scalar(select(func.max(Adapter.version)).where(Adapter.name == name)) or 0) + 1
                sealed = ctx.artifacts.seal(name, version, files_to_seal(ctx.keys, run.files, meta))
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
                    privacy_audit=audit_of(meta),
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
                kept = self.monitoring.keep_eval_split(
                    s, adapter, Path(run.dataset.path), run.dataset.fingerprint, actor
                )
                ctx.record(
                    "registry.add",
                    "add",
                    actor,
                    adapter,
                    details={"run_id": meta.run_id, "dp": dp.enabled, "dataset": run.dataset.fingerprint[:16]},
                )
                info = info_of(adapter)
        except BaseException:
            if sealed is not None:
                ctx.artifacts.remove(sealed.rel_dir)
            if kept is not None:
                ctx.evalsets.remove(kept)
            raise
        log.info("registry.added", adapter=name, version=version, fingerprint=run.weights_fingerprint[:16])
        return info


def _check_base_model(path: Path, sha256: str) -> None:
    """The base model the run names still hashes as recorded (skipped, with a warning, when it is not here)."""
    if not (path / "config.json").is_file():
        log.warning("registry.base_model_absent", detail="base model directory not present; hash not rechecked")
        return
    from appliance.models import model_hash

    actual = model_hash(path)
    if actual != sha256:
        raise IntegrityViolation(
            f"base model at {path} hashes to {actual[:16]}..., but the run recorded {sha256[:16]}..."
        )
