"""Lineage for GDPR erasure: which datasets, runs and adapters saw a subject, and what DP promised each.

Datasets store only salted digests, ``HMAC-SHA256(key=bytes.fromhex(salt), subject_id)`` (the intake stage's
construction, subject id stripped and UTF-8 encoded), each dataset with its own salt. A lookup recomputes the
digest under every dataset's salt; the raw id is never stored, logged or put in an audit event.

The guarantee per adapter: with ``privacy_unit = "subject"`` the run's (epsilon, delta) bounds what anyone can
learn about the subject. With ``privacy_unit = "record"`` it bounds one record; a subject with k training
records gets only the group-privacy bound (k*epsilon, k*exp((k-1)*epsilon)*delta), which grows fast with k.
:class:`Lineage` answers ``registry lineage`` and ``erasure plan``; each lookup is an audit event with counts only.
"""

from __future__ import annotations

import math

from sqlalchemy import select

from appliance import contracts
from appliance.errors import ValidationFailed
from appliance.registry._context import Context
from appliance.registry._models import Adapter, Dataset, DatasetSubject, TrainingRun
from appliance.registry._types import Actor, ErasureItem, ErasurePlan, LineageReport

__all__ = ["Lineage", "describe", "group_guarantee", "subject_digest"]


class Lineage:
    """Which datasets, runs and adapters saw a subject, and what an erasure request needs done about each."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def lineage(self, subject_id: str, actor: Actor) -> LineageReport:
        """The datasets, runs and adapters that saw a subject (matched by each dataset's salted digest)."""
        if not subject_id or not subject_id.strip():
            raise ValidationFailed("a subject id is required")
        with self.ctx.db.session("tracing a subject's lineage") as s:
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
            self.ctx.record(
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


def subject_digest(salt_hex: str, subject_id: str) -> str:
    """The digest a dataset with this (hex) salt stores for a subject id given by a person (trimmed)."""
    return contracts.subject_digest(bytes.fromhex(salt_hex), subject_id.strip())


def group_guarantee(epsilon: float, delta: float, records: int) -> tuple[float, float]:
    """(epsilon, delta) for a group of ``records`` records under a per-record (epsilon, delta) guarantee."""
    k = max(1, records)
    try:
        group_delta = k * math.exp((k - 1) * epsilon) * delta
    except OverflowError:
        group_delta = math.inf
    return k * epsilon, min(1.0, group_delta)


def describe(dp_enabled: bool, epsilon: float | None, delta: float | None, unit: str, records: int | None) -> str:
    """A one-line statement of the guarantee that applied to the subject in one run."""
    if not dp_enabled or epsilon is None or delta is None:
        return "no differential privacy: the weights may encode the subject's records; retraining is required"
    if records == 0:
        return "the subject is only in the eval split: the weights were not trained on their records"
    if unit == "subject":
        return f"subject-level ({epsilon:g}, {delta:g})-DP: bounds what the adapter reveals about this subject"
    if records is None:
        return (
            f"record-level ({epsilon:g}, {delta:g})-DP per record; the subject's record count is unknown, so "
            "the per-subject bound is weaker by group privacy"
        )
    if records == 1:
        return f"record-level ({epsilon:g}, {delta:g})-DP; the subject has one training record"
    g_eps, g_delta = group_guarantee(epsilon, delta, records)
    return (
        f"record-level ({epsilon:g}, {delta:g})-DP per record; the subject has {records} training records, so "
        f"only ({g_eps:g}, {g_delta:.3g})-DP holds for the subject (group privacy)"
    )
