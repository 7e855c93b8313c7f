"""`appliance audit export|verify|hash|purge|tail` end to end, and no prompt text in any file they leave."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appliance.audit import digest, digests, open_audit_log
from appliance.cli import app
from appliance.config import Settings
from appliance.errors import ValidationFailed
from appliance.keys import LocalKeyService
from tests.audit.conftest import make_event

MARKER = "QUOKKA-7731 patient Jane Roe, DOB 1961-02-03, metastatic carcinoma"


@pytest.fixture
def env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The CLI sees the test's data directory and the repository's policies."""
    monkeypatch.setenv("APPLIANCE_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("APPLIANCE_POLICIES_DIR", str(settings.policies_dir))
    return settings


def _fill(settings: Settings, keys: LocalKeyService, n: int = 30) -> None:
    writer = open_audit_log(settings, keys)
    for i in range(n):
        writer.record_sync(make_event(request_id=f"r-{i}"))
    writer.close_sync()


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_export_then_verify(env: Settings, keys: LocalKeyService, tmp_path: Path, fmt: str) -> None:
    """export writes records and a manifest; verify DIR passes, and fails (exit 65) after one byte changes."""
    _fill(env, keys)
    runner = CliRunner()
    out = tmp_path / "export"
    result = runner.invoke(app, ["audit", "export", "--out", str(out), "--format", fmt], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] >= 30 and f"key fingerprint {manifest['key_fingerprint']}" in result.output
    ok = runner.invoke(app, ["audit", "verify", str(out), "--expect-key", manifest["key_fingerprint"]])
    assert ok.exit_code == 0 and "OK" in ok.output
    records = out / f"records.{fmt}"
    records.write_text(records.read_text().replace("r-17", "r-71", 1))
    from appliance.cli import main

    with pytest.raises(SystemExit) as exit_info:
        import sys

        sys.argv = ["appliance", "audit", "verify", str(out)]
        main()
    assert exit_info.value.code == 65


def test_verify_live_log_and_export_is_audited(env: Settings, keys: LocalKeyService, tmp_path: Path) -> None:
    """verify (no DIR) checks the live chains; an export is itself recorded as an audit.export event."""
    _fill(env, keys)
    runner = CliRunner()
    assert runner.invoke(app, ["audit", "export", "--out", str(tmp_path / "e"), "--actor", "alice"]).exit_code == 0
    result = runner.invoke(app, ["audit", "verify"])
    assert result.exit_code == 0, result.output
    tail = runner.invoke(app, ["audit", "tail", "-n", "5", "--json"])
    types = [json.loads(line)["type"] for line in tail.output.splitlines() if line.startswith("{")]
    assert tail.exit_code == 0 and "audit.export" in types and len(types) == 5


def test_verify_live_log_reports_tampering(env: Settings, keys: LocalKeyService) -> None:
    """verify on a tampered live log exits non-zero and prints the kind and the place."""
    _fill(env, keys)
    segment = next((env.audit_dir / "node-1").glob("segment-*.jsonl"))
    lines = segment.read_bytes().split(b"\n")
    lines[9] = lines[9].replace(b'"alice"', b'"mallo"')
    segment.write_bytes(b"\n".join(lines))
    result = CliRunner().invoke(app, ["audit", "verify"])
    assert result.exit_code != 0
    assert "edited: node-1 segment-000000000001.jsonl:10 seq 10" in result.output


def test_hash_matches_the_recorded_digest_and_no_text_anywhere(
    env: Settings, keys: LocalKeyService, tmp_path: Path
) -> None:
    """Prompt and output go in only as digests; `audit hash` reproduces them; the marker is in no file at all."""
    writer = open_audit_log(env, keys)
    recorded = {"prompt": digest(keys, MARKER), "output": digest(keys, MARKER + " output")}
    writer.record_sync(make_event(digests=recorded))
    for smuggled in (
        {"details": {"note": MARKER}},
        {"request_id": MARKER},
        {"source": {"ip": "10.0.0.1", "user_agent": MARKER}},  # reduced to product tokens: none here
        {"prompt": MARKER},
    ):
        try:
            writer.record_sync(make_event(**smuggled))
        except ValidationFailed as exc:
            assert MARKER not in str(exc)
    writer.close_sync()
    result = CliRunner().invoke(app, ["audit", "hash"], input=MARKER + "\n")
    assert result.exit_code == 0 and result.output.strip().splitlines()[-1] == recorded["prompt"]
    runner = CliRunner()
    for fmt in ("jsonl", "csv"):
        assert runner.invoke(app, ["audit", "export", "--out", str(tmp_path / fmt), "--format", fmt]).exit_code == 0
    files = [p for root in (env.data_dir, tmp_path) for p in root.rglob("*") if p.is_file()]
    assert any(p.name.startswith("segment-") for p in files) and len(files) > 4
    needles = [MARKER.encode(), b"QUOKKA", b"Jane Roe", MARKER.encode("utf-16-le")]
    leaked = [str(p) for p in files if any(n in p.read_bytes() for n in needles)]
    assert not leaked


def test_hash_argument_and_purge_dry_run(env: Settings, keys: LocalKeyService) -> None:
    """hash TEXT prints the digest; purge --dry-run under the six-year policy drops nothing from a new log."""
    _fill(env, keys, 3)
    runner = CliRunner()
    result = runner.invoke(app, ["audit", "hash", "some text"])
    assert result.output.strip().splitlines()[-1] == digest(keys, "some text")  # other stages may log first
    tail = runner.invoke(app, ["audit", "tail", "-n", "3", "--json"]).output
    hashes = [json.loads(x) for x in tail.splitlines() if x.startswith("{") and '"audit.hash"' in x]
    assert len(hashes) == 1 and hashes[0]["actor"]["auth_method"] == "cli"  # the oracle's use is accountable
    assert digest(keys, "some text") not in tail
    purge = runner.invoke(app, ["audit", "purge", "--dry-run"])
    assert purge.exit_code == 0 and "nothing older than 2192 days" in purge.output


def test_hash_reproduces_a_digest_recorded_before_a_rotation(env: Settings, keys: LocalKeyService) -> None:
    """Records carry the audit key version of their digests; after `audit-hmac` is rotated, `audit hash
    --key-version N` still reproduces a digest recorded under N (the default is the current version), and each
    use records the version, never the text or the digest."""
    writer = open_audit_log(env, keys)
    writer.record_sync(make_event(digests=digests(keys, MARKER, MARKER + " output")))
    writer.close_sync()
    (recorded,) = [json.loads(x)["digests"] for x in _store_lines(env) if b'"digests":{' in x]
    assert recorded["key_version"] == 1 and recorded["prompt"] == digest(keys, MARKER)
    keys.rotate("audit-hmac")
    runner = CliRunner()
    current = runner.invoke(app, ["audit", "hash"], input=MARKER + "\n")
    assert current.exit_code == 0 and current.output.strip().splitlines()[-1] != recorded["prompt"]
    assert "version 2" in current.output
    old = runner.invoke(app, ["audit", "hash", "--key-version", "1"], input=MARKER + "\n")
    assert old.exit_code == 0 and old.output.strip().splitlines()[-1] == recorded["prompt"]
    unknown = runner.invoke(app, ["audit", "hash", "--key-version", "7"], input=MARKER + "\n")
    assert unknown.exit_code != 0 and recorded["prompt"] not in unknown.output
    uses = [json.loads(x) for x in _store_lines(env) if b'"audit.hash"' in x]
    assert [u["details"]["key_version"] for u in uses] == [2, 1]
    assert recorded["prompt"] not in json.dumps(uses) and not any(MARKER.encode() in x for x in _store_lines(env))


def _store_lines(settings: Settings) -> list[bytes]:
    return [
        line
        for p in sorted((settings.audit_dir / "node-1").glob("segment-*.jsonl"))
        for line in p.read_bytes().split(b"\n")
    ]


def test_cli_actor_is_the_user_behind_sudo(
    env: Settings, keys: LocalKeyService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run as `sudo -u appliance appliance audit hash`, the recorded actor is the person, not the service account."""
    _fill(env, keys, 1)
    monkeypatch.setenv("LOGNAME", "appliance")
    monkeypatch.setenv("USER", "appliance")
    monkeypatch.setenv("SUDO_USER", "dr-ops")
    runner = CliRunner()
    assert runner.invoke(app, ["audit", "hash", "some text"]).exit_code == 0
    tail = runner.invoke(app, ["audit", "tail", "-n", "3", "--json"]).output
    (record,) = [json.loads(x) for x in tail.splitlines() if x.startswith("{") and '"audit.hash"' in x]
    assert record["actor"]["subject"] == "dr-ops"  # the same form as every other command (audit.invoking_user)
