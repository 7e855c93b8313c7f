"""What the monitor keeps in the registry (README.md, "Monitoring"): each adapter's eval split and the reference
sets (sealed record sets, :mod:`appliance.registry._evalsets`), the monitor's time series, and degradation marks.
Rollback itself is a serving change (:mod:`appliance.registry._lifecycle`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from appliance.errors import Conflict, NotFound, PolicyViolation, ValidationFailed
from appliance.registry._context import Context, aware, info_of
from appliance.registry._evalsets import EVAL_SPLIT, REFERENCE, SealedSet, dataset_records
from appliance.registry._models import Adapter, Dataset, EvalSet, MonitorResult, utcnow
from appliance.registry._rundir import check_name, read_dataset
from appliance.registry._types import Actor, AdapterInfo, EvalSetInfo, SeriesPoint

__all__ = ["MonitoringStore"]


class MonitoringStore:
    """Kept record sets, the monitor's results and degradation marks."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    # --- kept record sets ------------------------------------------------------------------------------------
    def keep_eval_split(
        self, s: Session, adapter: Adapter, dataset_path: Path, dataset_fingerprint: str, actor: Actor
    ) -> str:
        """Seal the run's eval split, bound to the adapter's weights fingerprint, with the approval-time figures
        (in ``add``'s transaction); the sealed directory, for the caller to remove if that transaction fails."""
        data, count = dataset_records(dataset_path, dataset_fingerprint, ("eval",))
        sealed = self.ctx.evalsets.seal(EVAL_SPLIT, adapter.served_id, adapter.weights_fingerprint, data)
        s.add(
            _set_row(
                (EVAL_SPLIT, adapter.served_id, adapter.weights_fingerprint),
                sealed,
                dataset_fingerprint,
                count,
                actor,
                adapter_id=adapter.id,
                approval=adapter.run.evaluation,
            )
        )
        return sealed.rel_dir

    def eval_split(self, name: str, version: int) -> tuple[EvalSetInfo, bytes]:
        """The adapter's kept eval split (JSONL of instruction/response) and its approval-time figures.

        Decrypted under AAD bound to the adapter's weights fingerprint; NotFound for an adapter registered before
        revision 0004 (nothing was kept)."""
        with self.ctx.db.session("reading an eval split") as s:
            adapter = self.ctx.get(s, name, version)
            row = s.scalar(select(EvalSet).where(EvalSet.kind == EVAL_SPLIT, EvalSet.adapter_id == adapter.id))
            if row is None:
                raise NotFound(f"adapter {name} v{version} has no kept eval split (registered before revision 0004)")
            return _set_info(row), self.ctx.evalsets.open(EVAL_SPLIT, row.name, adapter.weights_fingerprint, row)

    def add_reference(self, name: str, dataset_dir: Path, actor: Actor) -> EvalSetInfo:
        """Keep a newer labelled reference set (a prepared dataset, both splits) encrypted for the monitor.

        Refused: a name already used (Conflict), a dataset that changed since it was prepared
        (IntegrityViolation), and a dataset an adapter was trained on (PolicyViolation: it is no reference)."""
        check_name(name)
        dataset_dir = Path(dataset_dir)
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
        ctx = self.ctx
        sealed_dir: str | None = None
        try:
            with ctx.db.session("adding a reference set") as s:
                if s.scalar(select(EvalSet).where(EvalSet.kind == REFERENCE, EvalSet.name == name)) is not None:
                    raise Conflict(f"a reference set named {name!r} already exists")
                if s.scalar(select(Dataset).where(Dataset.fingerprint == fingerprint)) is not None:
                    refused = PolicyViolation(
                        f"rule monitoring.independent_reference: dataset {fingerprint[:16]}... trained a registered "
                        "adapter; a reference set must be data no adapter saw"
                    )
                    ctx.denied("registry.reference_add", "reference_add", actor, None, refused, {"reference": name})
                    raise refused
                sealed = ctx.evalsets.seal(REFERENCE, name, fingerprint, data)
                sealed_dir = sealed.rel_dir
                row = _set_row((REFERENCE, name, fingerprint), sealed, fingerprint, count, actor)
                s.add(row)
                s.flush()
                ctx.record(
                    "registry.reference_add",
                    "reference_add",
                    actor,
                    None,
                    details={"reference": name, "records": count, "dataset": fingerprint[:16]},
                )
                return _set_info(row)
        except BaseException:
            if sealed_dir is not None:
                ctx.evalsets.remove(sealed_dir)
            raise

    def references(self) -> list[EvalSetInfo]:
        """Every reference set, oldest first (never their records)."""
        with self.ctx.db.session("listing reference sets") as s:
            query = select(EvalSet).where(EvalSet.kind == REFERENCE).order_by(EvalSet.registered_at, EvalSet.id)
            return [_set_info(r) for r in s.scalars(query)]

    def reference_records(self, name: str) -> bytes:
        """A reference set's records (JSONL), decrypted and checked."""
        with self.ctx.db.session("reading a reference set") as s:
            row = s.scalar(select(EvalSet).where(EvalSet.kind == REFERENCE, EvalSet.name == name))
            if row is None:
                raise NotFound(f"no reference set named {name!r}")
            return self.ctx.evalsets.open(REFERENCE, name, row.dataset_fingerprint, row)

    # --- the time series and degradation ---------------------------------------------------------------------
    def record_series(self, points: list[SeriesPoint], actor: Actor) -> None:
        """Store one monitor pass's points; one ``monitor.evaluate`` audit event per adapter version, recorded
        before the rows commit."""
        groups: dict[tuple[str, int], list[SeriesPoint]] = {}
        for point in points:
            groups.setdefault((point.name, point.version), []).append(point)
        with self.ctx.db.session("recording monitor results") as s:
            for (name, version), group in groups.items():
                adapter = self.ctx.get(s, name, version)
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
                self.ctx.record("monitor.evaluate", "evaluate", actor, adapter, details=details)

    def series(
        self, name: str | None = None, version: int | None = None, reference: str | None = None, limit: int = 200
    ) -> list[SeriesPoint]:
        """The monitor's time series, newest first."""
        with self.ctx.db.session("reading monitor results") as s:
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
                    measured_at=aware(r.measured_at),
                )
                for r in s.scalars(query.limit(limit))
            ]

    def mark_degraded(
        self, name: str, version: int, actor: Actor, reason: str, details: Mapping[str, Any] | None = None
    ) -> AdapterInfo:
        """Record that the monitor found ``name`` v``version`` degraded (``adapter.degraded``); a rollback never
        chooses it again. Its publication is left to the rollback."""
        with self.ctx.db.session("marking an adapter degraded") as s:
            adapter = self.ctx.get(s, name, version, lock=True)
            adapter.degraded_at = adapter.degraded_at or utcnow()
            adapter.degraded_reason = reason[:2000]
            adapter.updated_at = utcnow()
            s.flush()
            self.ctx.record("adapter.degraded", "degraded", actor, adapter, details=dict(details or {}))
            return info_of(adapter)


def _set_row(
    sealed_as: tuple[str, str, str],
    sealed: SealedSet,
    dataset_fingerprint: str,
    records: int,
    actor: Actor,
    *,
    adapter_id: int | None = None,
    approval: Any = None,
) -> EvalSet:
    """The row of a record set sealed as ``(kind, name, binding)``, and where its sealed artefact lies."""
    kind, name, binding = sealed_as
    return EvalSet(
        kind=kind,
        name=name,
        adapter_id=adapter_id,
        binding=binding,
        dataset_fingerprint=dataset_fingerprint,
        records=records,
        artifact_dir=sealed.rel_dir,
        key_purpose=sealed.purpose,
        wrapped_key=sealed.wrapped_key,
        sha256=sealed.sha256,
        size=sealed.size,
        approval=approval,
        registered_by=actor.subject,
    )


def _set_info(row: EvalSet) -> EvalSetInfo:
    return EvalSetInfo(
        kind=row.kind,
        name=row.name,
        records=row.records,
        dataset_fingerprint=row.dataset_fingerprint,
        registered_by=row.registered_by,
        registered_at=aware(row.registered_at),
        approval=dict(row.approval) if row.approval is not None else None,
    )
