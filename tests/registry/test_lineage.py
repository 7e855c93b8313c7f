"""Lineage and erasure planning: salted subject digests per dataset, and the DP guarantee that applied."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from appliance.errors import ValidationFailed
from appliance.registry import Registry, subject_digest
from appliance.registry._lineage import group_guarantee
from tests.registry.conftest import OPERATOR, RecordingAudit, RunFactory, make_dataset


@pytest.fixture
def two_datasets(registry: Registry, make_run: RunFactory, tmp_path: Path) -> Registry:
    """MRN-7 is in dataset A (3 training records) and only in dataset B's eval split; MRN-8 only in A."""
    a = make_dataset(tmp_path / "a", ["MRN-7", "MRN-7", "MRN-7", "MRN-8"])
    b = make_dataset(tmp_path / "b", ["MRN-9"], eval_subjects=["MRN-7"])
    registry.add(make_run(dataset=a), "triage", OPERATOR)
    registry.add(make_run(dataset=a, dp={"privacy_unit": "subject", "epsilon": 2.0}), "triage", OPERATOR)
    registry.add(make_run(dataset=b), "notes", OPERATOR)
    registry.add(make_run(dataset=b, dp={"enabled": False, "epsilon": None, "delta": None}), "nodp", OPERATOR)
    return registry


def test_lineage_finds_every_dataset_run_and_adapter(two_datasets: Registry) -> None:
    """A subject is traced through each dataset's own salt to the runs and adapters built on it."""
    report = two_datasets.lineage("MRN-7", OPERATOR)
    assert sorted(d["records"] for d in report.datasets) == [0, 3]
    assert sorted((a["name"], a["version"]) for a in report.adapters) == [
        ("nodp", 1),
        ("notes", 1),
        ("triage", 1),
        ("triage", 2),
    ]
    assert len(report.runs) == 4


def test_lineage_unknown_subject(two_datasets: Registry) -> None:
    """A subject in no dataset yields an empty report; whitespace around an id does not matter."""
    assert not two_datasets.lineage("MRN-404", OPERATOR).found
    assert len(two_datasets.lineage("  MRN-8 ", OPERATOR).adapters) == 2
    with pytest.raises(ValidationFailed):
        two_datasets.lineage("   ", OPERATOR)


def test_raw_subject_ids_never_stored_or_audited(two_datasets: Registry, audit: RecordingAudit) -> None:
    """The database holds only salted digests and the lineage audit event carries counts, not the id."""
    from sqlalchemy import text

    two_datasets.lineage("MRN-7", OPERATOR)
    with two_datasets.db.engine.connect() as conn:
        dump = " ".join(
            str(row)
            for t in ("datasets", "dataset_subjects")
            for row in conn.execute(text(f"SELECT * FROM {t}"))  # noqa: S608
        )
        salt = conn.execute(text("SELECT subject_salt FROM datasets ORDER BY id")).scalars().first()
    assert "MRN-7" not in dump and subject_digest(salt, "MRN-7") in dump
    event = audit.events[-1]
    assert event["type"] == "registry.lineage" and "MRN" not in str(event)
    assert event["details"] == {"datasets": 2, "runs": 4, "adapters": 4}


def test_erasure_plan_states_each_guarantee(two_datasets: Registry) -> None:
    """The plan says what to do per dataset and adapter, and weakens record-level DP by group privacy."""
    two_datasets.retire("triage", 2, OPERATOR)
    plan = {item.ref: item for item in two_datasets.erasure_plan("MRN-7", OPERATOR).items}
    datasets = [i for i in plan.values() if i.kind == "dataset"]
    assert len(datasets) == 2 and all("re-prepare" in d.action for d in datasets)

    record = plan["triage-v1"]
    assert record.action.startswith("retire, then retrain") and record.records == 3
    eps, delta = group_guarantee(4.0, 1e-5, 3)
    assert f"({eps:g}, {delta:.3g})-DP holds for the subject (group privacy)" in record.guarantee

    subject = plan["triage-v2"]
    assert subject.status == "retired" and "already retired" in subject.action
    assert subject.guarantee.startswith("subject-level (2, 1e-05)-DP")

    assert "only in the eval split" in plan["notes-v1"].guarantee and plan["notes-v1"].records == 0
    assert plan["nodp-v1"].guarantee.startswith("no differential privacy")


def test_group_privacy_bound() -> None:
    """(k*eps, k*e^((k-1)eps)*delta) for k records, capped at delta 1, and the plain bound for one record."""
    assert group_guarantee(1.0, 1e-6, 1) == (1.0, 1e-6)
    eps, delta = group_guarantee(1.0, 1e-6, 3)
    assert eps == 3.0 and math.isclose(delta, 3 * math.exp(2.0) * 1e-6)
    assert group_guarantee(8.0, 1e-5, 200)[1] == 1.0
