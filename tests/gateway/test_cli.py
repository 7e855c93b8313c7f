"""`appliance keys create|list|revoke` and `appliance gateway check-policy`, against the real audit trail."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from appliance.cli import app
from appliance.errors import Unauthenticated
from appliance.gateway._db import GatewayDB, db_path
from appliance.gateway.auth.apikeys import ApiKeyStore
from tests.conftest import REPO_ROOT
from tests.fixtures.audit_trail import audit_records
from tests.fixtures.oidc import free_port
from tests.fixtures.redisd import RedisServer


@pytest.fixture
def env(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The CLI's data directory and the repository's policies."""
    monkeypatch.setenv("APPLIANCE_DATA_DIR", str(data_dir))
    monkeypatch.setenv("APPLIANCE_POLICIES_DIR", str(REPO_ROOT / "policies"))
    return data_dir


def _audit_types(data_dir: Path) -> list[str]:
    return [r["type"] for r in audit_records(data_dir / "audit")]


def _json(output: str) -> Any:
    """The JSON line of a command's output (other stages may log to stdout first)."""
    return json.loads([line for line in output.splitlines() if line[:1] in "[{"][-1])


def test_keys_create_list_revoke(env: Path) -> None:
    """A key is printed once, listed without its secret, verifies, and stops verifying once revoked; all audited."""
    runner = CliRunner()
    r = runner.invoke(app, ["keys", "create", "lab-system", "--scope", "service.inference", "--days", "7", "--json"])
    assert r.exit_code == 0, r.output
    created = _json(r.output)
    store = ApiKeyStore(GatewayDB(db_path(env)), cache_s=0.0)  # a running gateway sees CLI changes within cache_s
    assert store.verify(created["key"]).id == created["id"]
    listed = runner.invoke(app, ["keys", "list", "--json"])
    assert created["id"] in listed.output and created["key"] not in listed.output
    assert runner.invoke(app, ["keys", "revoke", created["id"]]).exit_code == 0
    assert _json(runner.invoke(app, ["keys", "list", "--json"]).output)[0]["state"] == "revoked"
    with pytest.raises(Exception, match="revoked"):
        store.verify(created["key"])
    assert {"admin.apikey.create", "admin.apikey.revoke"} <= set(_audit_types(env))
    assert created["key"] not in "".join(p.read_text() for p in (env / "audit").rglob("*.jsonl"))


def test_keys_revoke_revokes_the_keys_a_key_created(env: Path) -> None:
    """`appliance keys revoke` also revokes the keys the key created (transitively), each revocation audited."""
    store = ApiKeyStore(GatewayDB(db_path(env)), cache_s=0.0)
    _, parent = store.create("svc", ["admin"], ttl_s=3600, created_by="os:ops")
    _, child = store.create("svc2", ["admin"], ttl_s=7200, created_by="apikey:x", creator_key_id=parent.id)
    _, grandchild = store.create("svc3", ["admin"], ttl_s=60, created_by="apikey:x", creator_key_id=child.id)
    _, other = store.create("svc4", ["admin"], ttl_s=3600, created_by="os:ops")
    assert child.expires_at == parent.expires_at and child.created_by == f"apikey:{parent.id}"
    r = CliRunner().invoke(app, ["keys", "revoke", parent.id])
    assert r.exit_code == 0, r.output
    states = {k.id: k.state(0) for k in store.list()}
    assert states == {parent.id: "revoked", child.id: "revoked", grandchild.id: "revoked", other.id: "active"}
    assert _audit_types(env).count("admin.apikey.revoke") == 3
    with pytest.raises(Unauthenticated):  # a key revoked since its request was authenticated creates nothing
        store.create("svc5", ["admin"], ttl_s=60, created_by="apikey:x", creator_key_id=parent.id)


def test_keys_create_with_several_scopes_is_audited(env: Path) -> None:
    """A key with two scopes is recorded (the trail holds them as one identifier) and stays in force."""
    args = ["keys", "create", "lab-system", "--scope", "service.inference", "--scope", "inference", "--json"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert ApiKeyStore(GatewayDB(db_path(env))).list()[0].state(0) == "active"
    assert "admin.apikey.create" in _audit_types(env)


def test_keys_cli_records_the_person_behind_sudo(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run as `sudo -u appliance appliance keys create`, the audit actor and the key's creator are the person."""
    monkeypatch.setenv("LOGNAME", "appliance")
    monkeypatch.setenv("USER", "appliance")
    monkeypatch.setenv("SUDO_USER", "dr-ops")
    r = CliRunner().invoke(app, ["keys", "create", "lab-system", "--scope", "service.inference", "--json"])
    assert r.exit_code == 0, r.output
    lines = [seg.read_text().splitlines() for seg in sorted((env / "audit").rglob("segment-*.jsonl"))]
    (record,) = [json.loads(x) for seg in lines for x in seg if '"admin.apikey.create"' in x]
    assert record["actor"] == {
        "auth_method": "cli",
        "client_id": None,
        "roles": [],
        "session_id": None,
        "subject": "dr-ops",
    }
    store = ApiKeyStore(GatewayDB(db_path(env)), cache_s=0.0)
    assert [k.created_by for k in store.list()] == ["dr-ops"]


def test_keys_create_refuses_scope_without_role(env: Path) -> None:
    """A scope the policy does not know grants nothing, so no key is made."""
    r = CliRunner().invoke(app, ["keys", "create", "x", "--scope", "no-such-scope"])
    assert r.exit_code != 0
    assert ApiKeyStore(GatewayDB(db_path(env))).list() == []


def test_check_policy_reports_problems(env: Path, tmp_path: Path) -> None:
    """check-policy accepts the shipped policy and rejects a broken one, naming the field."""
    runner = CliRunner()
    assert runner.invoke(app, ["gateway", "check-policy"]).exit_code == 0
    bad = tmp_path / "access.yaml"
    bad.write_text("version: 1\nroles:\n  a:\n    groups: [g]\n    routes: [teleport]\n")
    r = runner.invoke(app, ["gateway", "check-policy", str(bad)])
    assert r.exit_code != 0 and "routes" in str(r.exception)


def test_run_refuses_production_without_tls(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`appliance gateway run` in production without a TLS certificate and key stops with CONFIG_INVALID."""
    monkeypatch.setenv("APPLIANCE_ENVIRONMENT", "production")
    r = CliRunner().invoke(app, ["gateway", "run"])
    assert r.exit_code != 0 and "tls_cert_file" in str(r.exception)


def test_run_refuses_several_workers_on_the_memory_store(env: Path) -> None:
    """`gateway run --workers 2` without the shared state store stops with CONFIG_INVALID (limits would split)."""
    r = CliRunner().invoke(app, ["gateway", "run", "--workers", "2"])
    assert r.exit_code != 0 and "state_store" in str(r.exception)


@pytest.mark.redis
def test_run_with_workers_on_redis(env: Path, tmp_path: Path, redis_server: RedisServer, redis_prefix: str) -> None:
    """`gateway run --workers 2` on Redis: two processes answer on one port, each on its own audit lane, and both
    lanes are closed with a signed end when the parent is stopped."""
    port = free_port()
    config = tmp_path / "appliance.toml"
    config.write_text(
        f'data_dir = "{env}"\npolicies_dir = "{REPO_ROOT / "policies"}"\n'
        f'[gateway]\nstate_store = "redis"\nredis_key_prefix = "{redis_prefix}"\n'
    )
    proc_env = {**os.environ, "APPLIANCE_GATEWAY__REDIS_URL": redis_server.url()}  # the secret stays out of the file
    for name in ("APPLIANCE_DATA_DIR", "APPLIANCE_POLICIES_DIR"):
        proc_env.pop(name, None)
    log = (tmp_path / "gateway.log").open("wb")
    cli = [str(Path(sys.executable).parent / "appliance"), "--config", str(config)]
    proc = subprocess.Popen(
        [*cli, "gateway", "run", "--workers", "2", "--host", "127.0.0.1", "--port", str(port)],
        env=proc_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        lanes: set[str] = set()
        while time.monotonic() < deadline and len(lanes) < 2:
            time.sleep(0.5)
            assert proc.poll() is None, (tmp_path / "gateway.log").read_text()[-3000:]
            lanes = {p.parent.name for p in (env / "audit").rglob("segment-*.jsonl")}
        assert lanes == {"node-1", "node-1.2"}, lanes
        answered = 0
        while time.monotonic() < deadline and answered < 20:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                    answered += r.status == 200
            except OSError:
                time.sleep(0.3)
        assert answered == 20
    finally:
        proc.terminate()  # the supervisor stops its workers, each closing its audit lane
        try:
            proc.wait(60)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
    for lane in ("node-1", "node-1.2"):  # each worker closed its lane: audit.stop, then a signed checkpoint
        assert _types_of(env, lane)[-2:] == ["audit.stop", "audit.checkpoint"], (
            lane,
            _types_of(env, lane),
            (tmp_path / "gateway.log").read_text()[-4000:],
        )


def _types_of(data_dir: Path, lane: str) -> list[str]:
    return [r["type"] for r in audit_records(data_dir / "audit" / lane)]


def test_demo_idp_ends_with_the_demo(tmp_path: Path) -> None:
    """The demo's identity provider (a node process) does not outlive a demo killed with SIGKILL."""
    script = (
        "import sys, time; from pathlib import Path; from appliance.cli.gateway import _start_demo_idp; "
        "p = _start_demo_idp(int(sys.argv[1]), 'http://127.0.0.1:9', 'demo-secret', Path(sys.argv[2])); "
        "print(p.pid, flush=True); time.sleep(120)"
    )
    demo = subprocess.Popen(
        [sys.executable, "-c", script, str(free_port()), str(tmp_path / "idp.log")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert demo.stdout is not None
        node_pid = int(demo.stdout.readline())
        assert Path(f"/proc/{node_pid}").exists()
    finally:
        demo.kill()
        demo.wait(30)
    deadline = time.monotonic() + 15
    while Path(f"/proc/{node_pid}").exists() and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(node_pid, os.WNOHANG)  # not our child; only in case the kernel re-parented it to us
        time.sleep(0.1)
    status = Path(f"/proc/{node_pid}/status")
    assert not status.exists() or "State:\tZ" in status.read_text(), "the demo IdP outlived the demo"
