"""Retention: the policy file, and purging whole old segments behind a signed anchor so the rest verifies."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from appliance.audit import AuditWriter, _writer, open_audit_log
from appliance.audit._factory import open_audit_store
from appliance.audit._retention import RetentionPolicy, load_retention_policy, purge_files
from appliance.audit._sinks.files import FileStore
from appliance.audit._verify import verify_store
from appliance.cli import app
from appliance.config import Settings
from appliance.errors import AuditUnavailable, ConfigError, IntegrityViolation
from appliance.keys import AUDIT_SIGNING, LocalKeyService
from tests.audit.conftest import make_event
from tests.conftest import REPO_ROOT

LATER = datetime.now(UTC) + timedelta(days=7 * 366)  # "now" seven years on: every closed segment is old


@pytest.fixture
def segmented(settings: Settings, keys: LocalKeyService) -> Settings:
    """A closed chain of about 60 records in segments of 10."""
    settings = settings.model_copy(update={"audit": settings.audit.model_copy(update={"segment_max_records": 10})})
    writer = open_audit_log(settings, keys)
    for i in range(55):
        writer.record_sync(make_event(request_id=f"r-{i}"))
    writer.close_sync()
    return settings


def test_repository_policy_is_six_years() -> None:
    """policies/retention.yaml loads and keeps audit records six years (HIPAA 164.316(b)(2))."""
    policy = load_retention_policy(REPO_ROOT / "policies" / "retention.yaml")
    assert policy.audit.retain_days >= 2190


def test_short_retention_needs_a_reason(tmp_path: Path) -> None:
    """A period under six years is a ConfigError naming the file unless below_hipaa_minimum gives a reason."""
    path = tmp_path / "retention.yaml"
    path.write_text("audit:\n  retain_days: 30\n")
    with pytest.raises(ConfigError, match=r"retention\.yaml"):
        load_retention_policy(path)
    path.write_text("audit:\n  retain_days: 30\n  below_hipaa_minimum: test system without patient data\n")
    assert load_retention_policy(path).audit.retain_days == 30


def test_purge_keeps_a_verifiable_rest(segmented: Settings, keys: LocalKeyService) -> None:
    """Old segments go, a signed anchor stays, the rest verifies, and the chain continues after a reopen."""
    store = FileStore(segmented.audit_dir)
    before = store.segments("node-1")
    (result,) = purge_files(store, keys, RetentionPolicy(), now=LATER)
    after = store.segments("node-1")
    assert result.segments and len(after) == 1 and len(before) == len(result.segments) + 1
    assert result.through_seq == after[0][0] - 1
    assert store.anchor("node-1") is not None
    report = verify_store(store, keys.public_keys(AUDIT_SIGNING))
    assert report.ok, [str(p) for p in report.all_problems]
    writer = open_audit_log(segmented, keys)
    writer.record_sync(make_event())
    writer.close_sync()
    assert verify_store(store, keys.public_keys(AUDIT_SIGNING)).ok


def test_purge_dry_run_and_recent_records(segmented: Settings, keys: LocalKeyService) -> None:
    """A dry run changes nothing, and nothing younger than the retention period is ever dropped."""
    store = FileStore(segmented.audit_dir)
    before = store.segments("node-1")
    (dry,) = purge_files(store, keys, RetentionPolicy(), now=LATER, dry_run=True)
    assert dry.segments and store.segments("node-1") == before
    (today,) = purge_files(store, keys, RetentionPolicy())
    assert today.through_seq is None and store.segments("node-1") == before


def test_forged_anchor_is_reported(segmented: Settings, keys: LocalKeyService) -> None:
    """An anchor whose seq/hash was changed no longer verifies, and verification says so."""
    store = FileStore(segmented.audit_dir)
    purge_files(store, keys, RetentionPolicy(), now=LATER)
    path = store.anchor_path("node-1")
    anchor = json.loads(path.read_text())
    anchor["seq"] -= 10  # claim less was purged, to hide the deletion of ten records
    path.write_text(json.dumps(anchor))
    kinds = {p.kind for p in verify_store(store, keys.public_keys(AUDIT_SIGNING)).all_problems}
    assert "bad_signature" in kinds


def test_tampered_chain_is_not_purged(segmented: Settings, keys: LocalKeyService) -> None:
    """A chain that does not verify is evidence: purge refuses with IntegrityViolation and deletes nothing."""
    store = FileStore(segmented.audit_dir)
    first = store.segments("node-1")[0][1]
    first.write_bytes(first.read_bytes().replace(b'"alice"', b'"mallo"', 1))
    before = store.segments("node-1")
    with pytest.raises(IntegrityViolation):
        purge_files(store, keys, RetentionPolicy(), now=LATER)
    assert store.segments("node-1") == before and store.anchor("node-1") is None


def test_records_within_retention_are_never_purged(
    settings: Settings, keys: LocalKeyService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A clock set back (an RTC reset) gives later records older times: a segment whose last record looks old but
    which holds recent records is kept, and nothing after it goes."""
    settings = settings.model_copy(update={"audit": settings.audit.model_copy(update={"segment_max_records": 10})})
    writer = open_audit_log(settings, keys)
    for i in range(5):
        writer.record_sync(make_event(request_id=f"r-{i}"))
    monkeypatch.setattr(_writer, "_utc_now", lambda: "2019-01-01T00:00:00.000000Z")
    for i in range(30):
        writer.record_sync(make_event(request_id=f"o-{i}"))
    writer.close_sync()
    store = FileStore(settings.audit_dir)
    before = store.segments("node-1")
    (result,) = purge_files(store, keys, RetentionPolicy())
    assert result.through_seq is None and store.segments("node-1") == before and store.anchor("node-1") is None


@pytest.fixture(params=["files", pytest.param("postgres", marks=pytest.mark.postgres)])
def old_trail(
    request: pytest.FixtureRequest, settings: Settings, keys: LocalKeyService, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """A closed chain of 2019 records (segments of 10) on files or PostgreSQL, where `appliance audit` finds it."""
    section: dict[str, object] = {"segment_max_records": 10}
    if request.param == "postgres":
        section |= {"sink": "postgres", "database_url": request.getfixturevalue("postgres_url")}
        monkeypatch.setenv("APPLIANCE_AUDIT__SINK", "postgres")
        monkeypatch.setenv("APPLIANCE_AUDIT__DATABASE_URL", str(section["database_url"]))
    monkeypatch.setenv("APPLIANCE_AUDIT__SEGMENT_MAX_RECORDS", "10")
    monkeypatch.setenv("APPLIANCE_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("APPLIANCE_POLICIES_DIR", str(settings.policies_dir))
    settings = settings.model_copy(update={"audit": settings.audit.model_copy(update=section)})
    real = _writer._utc_now
    monkeypatch.setattr(_writer, "_utc_now", lambda: "2019-01-01T00:00:00.000000Z")
    writer = open_audit_log(settings, keys)
    for i in range(35):
        writer.record_sync(make_event(request_id=f"r-{i}"))
    writer.close_sync()
    monkeypatch.setattr(_writer, "_utc_now", real)
    return settings


def _lines(store: Any) -> list[bytes]:
    return [line for _, data in store.read("node-1") for line in data.split(b"\n") if line]


def test_purge_is_not_done_when_its_record_fails(old_trail: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """`appliance audit purge` records who purges what before it deletes: when that record cannot be made durable,
    the command fails and no record is gone (no anchor, every line still there)."""
    store = open_audit_store(old_trail)
    before = _lines(store)
    real = AuditWriter.record_sync

    def refuse_purge(self: AuditWriter, event: Mapping[str, Any]) -> Any:
        if event["type"] == "audit.purge":
            raise AuditUnavailable("audit store full")
        return real(self, event)

    monkeypatch.setattr(AuditWriter, "record_sync", refuse_purge)
    result = CliRunner().invoke(app, ["audit", "purge"])
    assert result.exit_code != 0
    assert store.anchor("node-1") is None
    assert _lines(store)[: len(before)] == before


def test_purge_records_its_intent_before_and_its_outcome_after(
    old_trail: Settings, keys: LocalKeyService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The intent (chain, through seq, anchor hash, counts) is durable while every record is still there; the
    outcome follows the deletion and names the anchor that verification now starts from."""
    store = open_audit_store(old_trail)
    first = _lines(store)[0]
    seen: list[tuple[str, bool]] = []
    real = AuditWriter.record_sync

    def spy(self: AuditWriter, event: Mapping[str, Any]) -> Any:
        receipt = real(self, event)
        if event["type"] == "audit.purge":
            seen.append((event["action"], _lines(store)[0] == first))
        return receipt

    monkeypatch.setattr(AuditWriter, "record_sync", spy)
    result = CliRunner().invoke(app, ["audit", "purge"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert seen == [("purge.intent", True), ("purge", False)]
    anchor = store.anchor("node-1")
    assert anchor is not None
    records = [json.loads(x) for x in _lines(store) if b'"audit.purge"' in x]
    assert [r["action"] for r in records] == ["purge.intent", "purge"] and records[0]["seq"] < records[1]["seq"]
    assert records[0]["details"] == records[1]["details"]
    details = records[1]["details"]
    assert (details["chain"], details["through_seq"], details["anchor_hash"]) == ("node-1", anchor.seq, anchor.hash)
    assert details["records"] > 0 and records[1]["actor"]["auth_method"] == "cli"
    assert verify_store(store, keys.public_keys(AUDIT_SIGNING)).ok


def test_purge_that_fails_after_its_intent_records_the_error(old_trail: Settings) -> None:
    """A purge that fails after its intent was recorded (here: the store goes away for the purge, not for the log)
    deletes nothing and records the outcome as an error naming the exception class."""
    from appliance.audit import _retention
    from appliance.audit._sinks.postgres import PostgresStore

    store = open_audit_store(old_trail)
    before = _lines(store)
    real = AuditWriter.record_sync

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk went away")

    with pytest.MonkeyPatch.context() as patch:

        def spy(self: AuditWriter, event: Mapping[str, Any]) -> Any:
            receipt = real(self, event)
            if event.get("action") == "purge.intent":
                patch.setattr(_retention, "atomic_write", broken)
                patch.setattr(PostgresStore, "_connect", broken)  # the purge's; the log writes on its own connection
            return receipt

        patch.setattr(AuditWriter, "record_sync", spy)
        result = CliRunner().invoke(app, ["audit", "purge"])
    assert result.exit_code != 0 and store.anchor("node-1") is None
    after = _lines(store)
    assert after[: len(before)] == before
    records = [json.loads(x) for x in after if b'"audit.purge"' in x]
    assert [(r["action"], r["outcome"]["status"]) for r in records] == [("purge.intent", "success"), ("purge", "error")]
    assert records[1]["outcome"]["error_class"] == "OSError"
