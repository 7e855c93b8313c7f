"""The whole adapter lifecycle against SQLite and a real PostgreSQL, with the real keystore and audit trail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from appliance.config import Settings
from appliance.errors import Conflict, NotFound, PermissionDenied
from appliance.registry import open_registry
from tests.registry.conftest import APPROVERS, OPERATOR, RunFactory, enrol


def test_full_lifecycle(any_settings: Settings, make_run: RunFactory) -> None:
    """add -> two approvals -> publish to every target -> resolve -> unpublish -> retire, each step audited."""
    from appliance.audit import open_audit_log
    from appliance.keys import open_key_service

    keys = open_key_service(any_settings)
    audit = open_audit_log(any_settings, keys=keys)
    reg = enrol(open_registry(any_settings, keys=keys, audit=audit))
    try:
        first = reg.add(make_run(), "triage", OPERATOR)
        second = reg.add(make_run(), "triage", OPERATOR)
        assert (first.version, second.version, first.status) == (1, 2, "staged")
        assert first.served_id == "triage-v1" and first.trained_by == "trainer-tom"

        after_one = reg.approve("triage", 1, APPROVERS[0], comment="reviewed eval")
        assert after_one.status == "staged" and [a.subject for a in after_one.approvals] == ["alice"]
        approved = reg.approve("triage", 1, APPROVERS[1])
        assert approved.status == "approved"

        for target in ("embedded", "tgi", "vllm"):
            published = reg.publish("triage", 1, target, OPERATOR)
        assert published.status == "production" and published.targets == ("embedded", "tgi", "vllm")
        served = any_settings.serving_dir / "adapters" / "triage-v1"
        assert (served / "adapter_model.safetensors").is_file()
        config = json.loads((served / "adapter_config.json").read_text())
        assert config["base_model_name_or_path"] == published.base_model

        assert reg.resolve("triage", "production").fingerprint == first.weights_fingerprint
        assert reg.resolve("triage", 1).served_id == "triage-v1"
        assert [p.served_id for p in reg.published()] == ["triage-v1"]
        with pytest.raises(PermissionDenied, match="staged, not published"):
            reg.resolve("triage", 2)
        with pytest.raises(NotFound, match="no version 9"):
            reg.resolve("triage", 9)
        with pytest.raises(NotFound, match="no adapter named"):
            reg.resolve("nope", "production")

        reg.unpublish("triage", 1, OPERATOR, target="tgi")
        assert reg.show("triage", 1).targets == ["embedded", "vllm"]
        assert (any_settings.serving_dir / "tgi" / "lora_adapters.env").read_text() == "LORA_ADAPTERS=\n"
        after = reg.unpublish("triage", 1, OPERATOR)
        assert after.status == "approved" and after.targets == [] and not served.exists()

        reg.publish("triage", 1, "embedded", OPERATOR)
        retired = reg.retire("triage", 1, OPERATOR, reason="superseded")
        assert retired.status == "retired" and retired.retired_reason == "superseded"
        listed = json.loads((any_settings.serving_dir / "embedded" / "adapters.json").read_text())
        assert listed == {"adapters": []}
        with pytest.raises(Conflict, match="only approved adapters publish"):
            reg.publish("triage", 1, "embedded", OPERATOR)
        with pytest.raises(NotFound):
            reg.resolve("triage", "production")
        assert all(r.ok for r in reg.verify())
    finally:
        reg.close()
        audit.close_sync()
    segments = sorted(any_settings.audit_dir.rglob("*"))
    text = "".join(p.read_text(errors="replace") for p in segments if p.is_file())
    for event_type in ("registry.add", "registry.approve", "registry.publish", "registry.unpublish", "registry.retire"):
        assert event_type in text, event_type


def test_readd_same_weights_refused(registry, make_run: RunFactory) -> None:  # type: ignore[no-untyped-def]
    """Registering the same weights twice is a Conflict and leaves one adapter and one artifact directory."""
    run = make_run()
    registry.add(run, "triage", OPERATOR)
    with pytest.raises(Conflict, match="already registered as triage v1"):
        registry.add(run, "other", OPERATOR)
    assert [a.version for a in registry.list_adapters()] == [1]
    assert len(list((registry.artifacts.root).glob("*/*"))) == 1


def test_versions_increase_per_name(registry, make_run: RunFactory) -> None:  # type: ignore[no-untyped-def]
    """Versions count up within a name and start at 1 for each new name."""
    assert registry.add(make_run(), "a", OPERATOR).version == 1
    assert registry.add(make_run(), "b", OPERATOR).version == 1
    assert registry.add(make_run(), "a", OPERATOR).version == 2
    assert [(a.name, a.version) for a in registry.list_adapters()] == [("a", 2), ("a", 1), ("b", 1)]


def test_open_registry_default_services(settings: Settings, make_run: RunFactory, tmp_path: Path) -> None:
    """open_registry(settings) alone opens the configured keystore and audit trail and records to it."""
    reg = open_registry(settings)
    try:
        reg.add(make_run(), "triage", OPERATOR)
    finally:
        reg.close()
    assert settings.keystore_path.is_file()
    assert any(settings.audit_dir.rglob("*"))


@pytest.mark.postgres
def test_concurrent_approvals_and_publishes(postgres_url: str, data_dir: Path, make_run: RunFactory) -> None:
    """Two approvals and two publishes racing from threads on PostgreSQL all land: approved, both listed."""
    import threading

    from appliance.config import load_settings
    from appliance.keys import open_key_service
    from tests.conftest import REPO_ROOT
    from tests.registry.conftest import RecordingAudit

    settings = load_settings(
        data_dir=data_dir, policies_dir=REPO_ROOT / "policies", registry={"database_url": postgres_url}
    )
    reg = enrol(open_registry(settings, keys=open_key_service(settings), audit=RecordingAudit()))
    try:
        for name in ("a", "b"):
            reg.add(make_run(), name, OPERATOR)
        errors: list[BaseException] = []

        def race(calls: list[tuple[object, ...]]) -> None:
            barrier = threading.Barrier(len(calls))

            def run(fn: object, *args: object) -> None:
                barrier.wait()
                try:
                    fn(*args)  # type: ignore[operator]
                except BaseException as exc:  # surfaced below
                    errors.append(exc)

            threads = [threading.Thread(target=run, args=call) for call in calls]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        for name in ("a", "b"):
            race([(reg.approve, name, 1, APPROVERS[0]), (reg.approve, name, 1, APPROVERS[1])])
        race([(reg.publish, "a", 1, "tgi", OPERATOR), (reg.publish, "b", 1, "tgi", OPERATOR)])
        assert errors == []
        assert [a.status for a in reg.list_adapters()] == ["production", "production"]
        env = (settings.serving_dir / "tgi" / "lora_adapters.env").read_text()
        assert "a-v1=" in env and "b-v1=" in env
    finally:
        reg.close()
