"""Retention: the policy file, and purging whole old segments behind a signed anchor so the rest verifies."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from appliance.audit import _writer, open_audit_log
from appliance.audit._retention import RetentionPolicy, load_retention_policy, purge_files
from appliance.audit._sinks.files import FileStore
from appliance.audit._verify import verify_store
from appliance.config import Settings
from appliance.errors import ConfigError, IntegrityViolation
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
