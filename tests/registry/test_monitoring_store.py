"""The registry's monitoring part (revision 0004): kept eval splits and reference sets (encrypted, bound to their
fingerprint), the time series, degraded marks and rollback, on SQLite and the real PostgreSQL."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.config import Settings
from appliance.errors import Conflict, IntegrityViolation, NotFound, PolicyViolation
from appliance.registry import Registry, SeriesPoint, open_registry
from tests.registry.conftest import APPROVERS, OPERATOR, RecordingAudit, RunFactory, enrol, make_dataset, snapshot


@pytest.fixture
def reg(any_settings: Settings, audit: RecordingAudit) -> Iterator[Registry]:
    from appliance.keys import open_key_service

    registry = enrol(open_registry(any_settings, keys=open_key_service(any_settings), audit=audit))
    audit.events.clear()
    yield registry
    registry.close()


def _publish(reg: Registry, make_run: RunFactory, versions: int, **run: Any) -> None:
    for version in range(1, versions + 1):
        reg.add(make_run(**run), "triage", OPERATOR)
        for approver in APPROVERS:
            reg.approve("triage", version, approver)
        reg.publish("triage", version, "embedded", OPERATOR)


def test_eval_split_is_kept_encrypted_and_bound_to_its_adapter(
    reg: Registry, make_run: RunFactory, tmp_path: Path
) -> None:
    """At add the run's eval split is sealed with the approval-time figures; it opens only for its own adapter: a
    blob moved to another adapter's row fails to open."""
    dataset = make_dataset(tmp_path / "ds", ["p-1", "p-2"], ["p-8", "p-9"])
    reg.add(make_run(dataset=dataset), "triage", OPERATOR)
    reg.add(make_run(), "triage", OPERATOR)
    info, data = reg.eval_split("triage", 1)
    lines = [json.loads(x) for x in data.splitlines()]
    assert lines == [{"instruction": "e0", "response": "b0"}, {"instruction": "e1", "response": "b1"}]
    assert info.records == 2 and info.approval is not None and info.approval["adapter"]["loss"] == 5.1
    blobs = sorted((reg.evalsets.root / "eval_split").glob("*/records.jsonl.enc"))
    assert len(blobs) == 2 and all(b"e0" not in b.read_bytes() for b in blobs)
    mine = next(b for b in blobs if b.parent.name.startswith("triage-v1-"))
    other = next(b for b in blobs if b.parent.name.startswith("triage-v2-"))
    shutil.copy(other, mine)  # the other adapter's (valid) ciphertext in v1's place
    with pytest.raises(IntegrityViolation):
        reg.eval_split("triage", 1)


def test_a_changed_dataset_is_refused_at_add(reg: Registry, make_run: RunFactory, tmp_path: Path) -> None:
    """The eval split kept must be the one the run was evaluated on: a dataset edited since is refused."""
    dataset = make_dataset(tmp_path / "ds", ["p-1"], ["p-9"])
    run = make_run(dataset=dataset)
    (dataset / "eval.jsonl").write_text('{"instruction": "e0", "response": "changed", "subject": "x"}\n')
    before = snapshot(reg)
    with pytest.raises(IntegrityViolation, match="no longer matches"):
        reg.add(run, "triage", OPERATOR)
    assert snapshot(reg) == before


def test_reference_sets(reg: Registry, make_run: RunFactory, tmp_path: Path, audit: RecordingAudit) -> None:
    """A reference set is kept encrypted (both splits) and audited; a name is used once, and a dataset an adapter
    was trained on is no reference."""
    run = make_run()
    reg.add(run, "triage", OPERATOR)
    reference = make_dataset(tmp_path / "ref", ["r-1", "r-2", "r-3"], ["r-4"])
    info = reg.add_reference("ward-2027", reference, OPERATOR)
    assert info.records == 4 and [r.name for r in reg.references()] == ["ward-2027"]
    assert len(reg.reference_records("ward-2027").splitlines()) == 4
    assert "registry.reference_add" in audit.types()
    with pytest.raises(Conflict):
        reg.add_reference("ward-2027", reference, OPERATOR)
    trained_on = Path(json.loads((run / "metadata.json").read_text())["dataset"]["path"])
    with pytest.raises(PolicyViolation, match="independent_reference"):
        reg.add_reference("leaky", trained_on, OPERATOR)
    with pytest.raises(NotFound):
        reg.reference_records("leaky")


def test_series_round_trip(reg: Registry, make_run: RunFactory, audit: RecordingAudit) -> None:
    """Points are stored with one monitor.evaluate event per version and read back newest first."""
    _publish(reg, make_run, 1)
    fingerprint = reg.show("triage", 1).weights_fingerprint
    for run_id, loss in (("mon-a", 2.0), ("mon-b", 2.5)):
        reg.record_series(
            [SeriesPoint(run_id, "triage", 1, fingerprint, "eval-split", 4, 0, loss, 0.5, "pass", {"reasons": []})],
            OPERATOR,
        )
    points = reg.series("triage", 1)
    assert [p.run_id for p in points] == ["mon-b", "mon-a"] and points[0].loss == 2.5
    assert audit.types().count("monitor.evaluate") == 2


def test_rollback_serves_the_previous_approved_version(
    reg: Registry, make_run: RunFactory, audit: RecordingAudit
) -> None:
    """v2 in production, v1 unpublished: rollback unpublishes v2, marks it degraded, publishes v1 again; a second
    rollback finds nothing older and changes nothing (never a roll forward to the degraded v2)."""
    _publish(reg, make_run, 2)
    reg.unpublish("triage", 1, OPERATOR)
    result = reg.rollback("triage", OPERATOR, reason="test", details={"loss_ward": 3.2})
    assert (result.from_version, result.to_version, result.targets) == (2, 1, ("embedded",))
    assert reg.resolve("triage", "production").version == 1
    assert reg.show("triage", 2).status == "approved" and reg.show("triage", 2).degraded_reason == "test"
    listing = json.loads((reg.publisher.list_path("embedded")).read_text())
    assert [a["id"] for a in listing["adapters"]] == ["triage-v1"]
    event = next(e for e in audit.events if e["type"] == "registry.rollback")
    assert event["details"]["to_version"] == 1 and event["details"]["loss_ward"] == 3.2
    before = snapshot(reg)
    with pytest.raises(Conflict, match=r"no earlier version"):
        reg.rollback("triage", OPERATOR)
    assert snapshot(reg) == before


def test_rollback_never_to_a_version_without_its_approvals(
    reg: Registry, make_run: RunFactory, audit: RecordingAudit
) -> None:
    """v1's approver lost the role: v1 lacks two current approvers, so there is nothing to roll back to; v2 keeps
    serving and the refusal is audited as denied."""
    _publish(reg, make_run, 2)
    reg.revoke(APPROVERS[0].subject, "approver", OPERATOR)
    before = snapshot(reg)
    with pytest.raises(Conflict, match="v2 keeps serving"):
        reg.rollback("triage", OPERATOR)
    assert snapshot(reg) == before
    assert reg.previous_approved("triage", 2) is None
    denied = [e for e in audit.events if e["type"] == "registry.rollback"]
    assert denied and denied[-1]["outcome"]["status"] == "denied"


def test_a_degraded_version_is_never_rolled_back_to(reg: Registry, make_run: RunFactory) -> None:
    """v1 marked degraded: a rollback from v3 skips it for v2, and one from v2 then finds nothing."""
    _publish(reg, make_run, 3)
    reg.mark_degraded("triage", 1, OPERATOR, "failed twice", {"failing_runs": 2})
    assert reg.previous_approved("triage", 3) == 2
    assert reg.rollback("triage", OPERATOR).to_version == 2
    with pytest.raises(Conflict):
        reg.rollback("triage", OPERATOR)


def test_upgrade_from_0003_and_back(any_settings: Settings) -> None:
    """A database at 0003 upgrades in place to the head (0004: eval sets, the series, degraded columns; 0005: the
    privacy audit) with a schema equal to the models, and downgrades cleanly to 0003."""
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import inspect

    from appliance.registry._db import VERSION_TABLE, Database, _alembic_config
    from appliance.registry._models import Base

    db = Database(any_settings.registry_url, migrate=False)
    try:
        with db.engine.begin() as conn:
            command.upgrade(_alembic_config(conn), "0003")
        assert "eval_sets" not in inspect(db.engine).get_table_names()
        db.migrate()
        assert db.current() == db.head() == "0005"
        tables = set(inspect(db.engine).get_table_names())
        assert {"eval_sets", "monitor_results"} <= tables
        assert "degraded_at" in {c["name"] for c in inspect(db.engine).get_columns("adapters")}
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert [d for d in diff if not (d[0] == "remove_table" and d[1].name == VERSION_TABLE)] == []
        with db.engine.begin() as conn:
            command.downgrade(_alembic_config(conn), "0003")
        assert "eval_sets" not in inspect(db.engine).get_table_names()
    finally:
        db.engine.dispose()


def test_registry_rollback_by_hand(
    settings: Settings, make_run: RunFactory, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`appliance registry rollback NAME` does the same by hand (real audit trail); with nothing older approved it
    is refused with the Conflict exit code and changes nothing."""
    from tests.fixtures.cli import Cli

    monkeypatch.setenv("APPLIANCE_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("APPLIANCE_POLICIES_DIR", str(settings.policies_dir))
    registry = enrol(open_registry(settings))
    try:
        _publish(registry, make_run, 2)
    finally:
        registry.close()
    cli = Cli(capsys, monkeypatch)
    code, out, err = cli(
        "registry", "rollback", "triage", "--reason", "worse on ward 2027", "--actor", "olga", "--no-reload"
    )
    assert code == 0, err
    assert "v2 -> v1" in out
    code, out, err = cli("registry", "rollback", "triage", "--actor", "olga")
    assert code == Conflict.exit_code and "CONFLICT" in err
    code, out, _ = cli("audit", "tail", "-n", "10", "--json")
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    rollbacks = [(e["outcome"]["status"], e["actor"]["subject"]) for e in events if e["type"] == "registry.rollback"]
    assert rollbacks == [("success", "olga"), ("denied", "olga")]


def test_kept_sets_check_the_intake_fingerprint(tmp_path: Path) -> None:
    """The registry checks a dataset with intake's own fingerprint (train.jsonl then eval.jsonl), so a dataset
    `appliance data prepare` wrote is accepted and one byte changed is not."""
    from appliance.intake import fingerprint_dir
    from appliance.registry._evalsets import dataset_records

    dataset = make_dataset(tmp_path / "ds", ["p-1", "p-2"], ["p-3"])
    fingerprint = fingerprint_dir(dataset)
    data, count = dataset_records(dataset, fingerprint, ("train", "eval"))
    assert count == 3 and b"subject" not in data
    with (dataset / "train.jsonl").open("ab") as fh:
        fh.write(b" ")
    with pytest.raises(IntegrityViolation):
        dataset_records(dataset, fingerprint, ("eval",))
