"""The appliance role's units: systemd-analyze verify, then a real boot of the converged root with
systemd-nspawn -b (private network, so the host's firewall is untouched), where systemd applies each unit's
sandbox, starts the gateway (two processes sharing their state in Redis over mutual TLS), the embedded engine and
the redis role's Redis, and a probe inside the container asks them over loopback.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.ansible.conftest import Converged

pytestmark = [pytest.mark.ansible, pytest.mark.slow]

UNITS = ("appliance-gateway.service", "appliance-engine.service")
TIMERS = ("appliance-monitor.timer",)  # started at boot; its service (monitor run --once) runs later
# Where the role puts things (ansible/roles/appliance, molecule group_vars).
VENV = "/opt/appliance/venv"
BASE_MODEL = "/srv/appliance/models/base"
GATEWAY_URL = "https://127.0.0.1:8443/healthz"
READY_URL = "https://127.0.0.1:8443/readyz"  # backend, audit, keys and the shared state store (Redis)
GATEWAY_CA = "/etc/appliance/gateway.pem"  # the self-signed test certificate is its own CA
ENGINE_URL = "http://127.0.0.1:8081/health"
# The redis role's server (group redis; molecule binds it to loopback): Debian's unit with the role's drop-in.
REDIS_UNIT = "redis-server.service"
REDIS_ADDR = ("127.0.0.1", 6380)
REDIS_CA = "/etc/appliance-redis/tls/ca.pem"
# The gateway's client certificate to Redis (redis_tls_auth_clients: true in molecule), installed by the role.
REDIS_CLIENT = ("/etc/appliance/redis-client.pem", "/etc/appliance/redis-client.key")
READY_TIMEOUT_S = 240  # both services answering, from the probe's start (torch imports on a loaded CI machine)
BOOT_TIMEOUT_S = READY_TIMEOUT_S + 180

PROBE_UNIT = """[Unit]
Description=Wait for the appliance units to answer, record their state, then power off (test only)
After=appliance-gateway.service appliance-engine.service multi-user.target

[Service]
Type=oneshot
TimeoutStartSec={timeout}
ExecStart=/bin/sh -c "/usr/bin/python3 /usr/local/sbin/molecule-probe {timeout_s} 2>/var/tmp/probe.err"
ExecStopPost=/bin/systemctl poweroff --no-block

[Install]
WantedBy=multi-user.target
"""

# Runs inside the container as root, with the root's own python3 (stdlib only).
PROBE_SCRIPT = r"""
import json, ssl, subprocess, sys, time, urllib.error, urllib.request

UNITS = {units!r}
TIMERS = {timers!r}
REDIS_UNIT, REDIS_ADDR, REDIS_CA, REDIS_CLIENT = {redis_unit!r}, {redis_addr!r}, {redis_ca!r}, {redis_client!r}
TARGETS = {{"gateway": {gateway_url!r}, "engine": {engine_url!r}, "ready": {ready_url!r}}}
TLS = ssl.create_default_context(cafile={gateway_ca!r})  # verifies the certificate and 127.0.0.1 against it
deadline = time.monotonic() + float(sys.argv[1])
answers = {{name: {{"status": None, "error": "not asked yet"}} for name in TARGETS}}
started = time.monotonic()
while time.monotonic() < deadline and any(a["status"] != 200 for a in answers.values()):
    for name, url in TARGETS.items():
        if answers[name]["status"] == 200:
            continue
        try:
            context = TLS if url.startswith("https") else None
            with urllib.request.urlopen(url, timeout=5, context=context) as response:
                body = response.read(200).decode(errors="replace")
                answers[name] = {{"status": response.status, "body": body, "after_s": time.monotonic() - started}}
        except urllib.error.HTTPError as exc:
            answers[name] = {{"status": exc.code, "error": str(exc)}}
        except Exception as exc:  # refused while starting, TLS errors, timeouts
            answers[name] = {{"status": None, "error": f"{{type(exc).__name__}}: {{exc}}"}}
    time.sleep(1)
# Every gateway process is ready (the kernel spreads connections over both): ask a few more times.
ready_again = []
for _ in range(8):
    try:
        with urllib.request.urlopen(TARGETS["ready"], timeout=5, context=TLS) as response:
            ready_again.append(response.status)
    except urllib.error.HTTPError as exc:
        ready_again.append(exc.code)
    except Exception as exc:
        ready_again.append(type(exc).__name__)
# Redis: a verified TLS handshake with the gateway's client certificate, then PING without logging in (the answer
# must be NOAUTH); the same without a client certificate must not get an answer at all.
import socket
def redis_ping(client_cert):
    context = ssl.create_default_context(cafile=REDIS_CA)
    if client_cert:
        context.load_cert_chain(*client_cert)
    try:
        with socket.create_connection(REDIS_ADDR, timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname=REDIS_ADDR[0]) as tls:
                tls.sendall(b"PING\r\n")
                return tls.recv(200).decode(errors="replace") or "closed without an answer"
    except Exception as exc:
        return f"{{type(exc).__name__}}: {{exc}}"
redis_answer, redis_deadline = "not asked yet", time.monotonic() + 30
while not redis_answer.startswith("-") and time.monotonic() < redis_deadline:
    redis_answer = redis_ping(REDIS_CLIENT)
    if not redis_answer.startswith("-"):
        time.sleep(1)
redis_without_certificate = redis_ping(None)
# The gateway's worker processes: children of its main process started by multiprocessing's spawn.
import os
main_pid = subprocess.run(
    ["systemctl", "show", "-p", "MainPID", "--value", "appliance-gateway.service"], capture_output=True, text=True
).stdout.strip()
gateway_workers = 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        with open(f"/proc/{{pid}}/stat") as stat, open(f"/proc/{{pid}}/cmdline", "rb") as cmdline:
            ppid = stat.read().rsplit(")", 1)[1].split()[1]
            gateway_workers += ppid == main_pid and b"spawn_main" in cmdline.read()
    except OSError:
        continue
props = "Id,ActiveState,SubState,NRestarts,ExecMainCode,ExecMainStatus,User,NoNewPrivileges,ProtectSystem,"
props += "PrivateTmp,CapabilityBoundingSet,ReadWritePaths,UMask,LimitCORE,PrivateIPC,ExecStart"
show = subprocess.run(
    ["systemctl", "show", "-p", props, *UNITS, REDIS_UNIT, *TIMERS], capture_output=True, text=True
).stdout
units = {{}}
for block in show.split("\n\n"):
    values = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
    if "Id" in values:
        units[values["Id"]] = values
security = subprocess.run(
    ["systemd-analyze", "security", "--no-pager", *UNITS], capture_output=True, text=True
)
journal = subprocess.run(
    ["journalctl", "--no-pager", "-o", "short-monotonic", "-n", "300", *[f"--unit={{u}}" for u in UNITS]],
    capture_output=True,
    text=True,
)
redis_journal = subprocess.run(
    ["journalctl", "--no-pager", "-o", "short-monotonic", "-n", "100", f"--unit={{REDIS_UNIT}}"],
    capture_output=True,
    text=True,
)
result = {{
    "answers": answers,
    "units": units,
    "ready_again": ready_again,
    "gateway_workers": gateway_workers,
    "redis_answer": redis_answer,
    "redis_without_certificate": redis_without_certificate,
    "redis_journal": redis_journal.stdout[-6000:],
    "security": security.stdout + security.stderr,
    "journal": journal.stdout[-20000:],
}}
with open("/var/tmp/probe.json", "w") as out:
    json.dump(result, out, indent=1)
"""


def test_units_pass_systemd_analyze_verify(converged: Converged) -> None:
    """systemd-analyze verify accepts both units, the monitor's service and its timer in the converged root."""
    paths = [f"/etc/systemd/system/{u}" for u in (*UNITS, "appliance-monitor.service", *TIMERS)]
    result = subprocess.run(
        ["chroot", str(converged.root), "systemd-analyze", "verify", "--man=no", *paths],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def _bootstrap_base_model(root: Path) -> None:
    """The tiny random base model for the embedded engine, written by the installed venv as the service user."""
    if (root / BASE_MODEL.lstrip("/") / "config.json").is_file():
        return
    result = subprocess.run(
        [
            "chroot",
            "--userspec=appliance:appliance",
            str(root),
            "/usr/bin/env",
            "-i",
            "PATH=/usr/bin:/bin",
            "HOME=/srv/appliance",
            "HF_HUB_OFFLINE=1",
            "TRANSFORMERS_OFFLINE=1",
            f"{VENV}/bin/appliance",
            "models",
            "bootstrap",
            "tiny",
            "--out",
            BASE_MODEL,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _install_probe(root: Path) -> None:
    units = " ".join(UNITS)
    script = PROBE_SCRIPT.format(
        units=list(UNITS),
        timers=list(TIMERS),
        gateway_url=GATEWAY_URL,
        engine_url=ENGINE_URL,
        gateway_ca=GATEWAY_CA,
        redis_unit=REDIS_UNIT,
        redis_addr=REDIS_ADDR,
        redis_ca=REDIS_CA,
        redis_client=REDIS_CLIENT,
        ready_url=READY_URL,
    )
    (root / "usr/local/sbin/molecule-probe").write_text(script)
    (root / "etc/systemd/system/molecule-probe.service").write_text(
        PROBE_UNIT.format(units=units, timeout=READY_TIMEOUT_S + 60, timeout_s=READY_TIMEOUT_S)
    )
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(exist_ok=True)
    link = wants / "molecule-probe.service"
    if not link.is_symlink():
        link.symlink_to("/etc/systemd/system/molecule-probe.service")
    # No network in the container: do not wait two minutes for network-online.target.
    wait_online = root / "etc/systemd/system/systemd-networkd-wait-online.service"
    if not wait_online.is_symlink():
        wait_online.symlink_to("/dev/null")
    (root / "var/tmp/probe.json").unlink(missing_ok=True)
    (root / "var/tmp/probe.err").unlink(missing_ok=True)


@pytest.fixture(scope="module")
def booted(converged: Converged) -> dict[str, Any]:
    """The converged root booted once with systemd-nspawn -b (private network) until the probe powers it off: what
    the probe recorded (answers, units, Redis's answer, journals)."""
    if shutil.which("systemd-nspawn") is None:
        pytest.fail("systemd-nspawn is missing: install systemd-container (scripts/system-deps.sh)")
    root = converged.root
    _bootstrap_base_model(root)
    _install_probe(root)
    boot = subprocess.run(
        ["systemd-nspawn", "--register=no", "--keep-unit", "--private-network", "-q", "-b", "-D", str(root)],
        capture_output=True,
        text=True,
        timeout=BOOT_TIMEOUT_S,
        stdin=subprocess.DEVNULL,
    )
    probe = root / "var/tmp/probe.json"
    if not probe.exists():
        error = root / "var/tmp/probe.err"
        if error.exists():
            pytest.fail(f"the probe failed in the container: {error.read_text()[-3000:]}")
        pytest.fail(f"the container did not reach the probe (rc {boot.returncode}): {boot.stdout[-3000:]}")
    found: dict[str, Any] = json.loads(probe.read_text())
    return found


def test_units_run_sandboxed_and_answer_in_nspawn(booted: dict[str, Any]) -> None:
    """Booted with systemd-nspawn -b, the gateway (TLS, production settings) and the embedded engine (a tiny base
    model) run in their sandbox as the appliance user and answer over loopback inside the container.

    The venv was installed offline from the wheelhouse (--no-index). A probe unit waits until both answer (or a
    timeout), then records the HTTP status of the gateway's /healthz and the engine's /health and what systemd
    shows for each unit; both must be active/running without a restart, with their sandbox in place.
    """
    found = booted
    journal = found["journal"][-6000:]
    answers = found["answers"]
    assert answers["gateway"]["status"] == 200, f"gateway {GATEWAY_URL}: {answers['gateway']}\n{journal}"
    assert answers["engine"]["status"] == 200, f"engine {ENGINE_URL}: {answers['engine']}\n{journal}"
    assert json.loads(answers["gateway"]["body"]) == {"status": "ok"}
    assert answers["ready"]["status"] == 200, f"gateway {READY_URL}: {answers['ready']}\n{journal}"
    for unit in UNITS:
        props = found["units"][unit]
        assert (props["ActiveState"], props["SubState"]) == ("active", "running"), f"{unit}: {props}\n{journal}"
        assert props["NRestarts"] == "0", f"{unit} restarted: {props}\n{journal}"
        assert props["User"] == "appliance"
        assert props["NoNewPrivileges"] == "yes"
        assert props["ProtectSystem"] == "strict"
        assert props["PrivateTmp"] == "yes"
        assert props["CapabilityBoundingSet"] == ""
        assert props["ReadWritePaths"].split() == ["/srv/appliance"]
    assert "Overall exposure level" in found["security"]


def test_monitor_timer_started_and_its_service_sandboxed_in_nspawn(
    booted: dict[str, Any], converged: Converged
) -> None:
    """The monitor's timer is started at boot (active, waiting for its first run) and its oneshot service runs
    `appliance monitor run --once` as the appliance user under the same sandbox as the other units."""
    timer = booted["units"]["appliance-monitor.timer"]
    assert (timer["ActiveState"], timer["SubState"]) == ("active", "waiting"), timer
    service = (converged.root / "etc/systemd/system/appliance-monitor.service").read_text()
    for line in (
        "Type=oneshot",
        "User=appliance",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
        "ReadWritePaths=/srv/appliance",
    ):
        assert line in service.splitlines(), line
    assert "monitor run --once" in service and "Restart=" not in service and "[Install]" not in service


def test_redis_runs_with_the_roles_drop_in_in_nspawn(booted: dict[str, Any]) -> None:
    """In the same boot, Debian's redis-server unit runs the role's configuration through the role's drop-in: active
    without a restart, as redis, its configuration directory not writable (ReadWritePaths only the data and run
    directories), no core dumps, umask 0077, a private IPC namespace; a TLS client verified against the CA gets
    NOAUTH to a PING without logging in."""
    props = booted["units"][REDIS_UNIT]
    journal = booted["redis_journal"]
    assert (props["ActiveState"], props["SubState"]) == ("active", "running"), f"{props}\n{journal}"
    assert props["NRestarts"] == "0", f"{props}\n{journal}"
    assert props["User"] == "redis"
    assert "/etc/appliance-redis/redis.conf" in props["ExecStart"]
    assert sorted(props["ReadWritePaths"].split()) == ["-/run/redis", "-/var/lib/redis"], props["ReadWritePaths"]
    assert (props["UMask"], props["LimitCORE"], props["PrivateIPC"]) == ("0077", "0", "yes"), props
    assert (props["ProtectSystem"], props["CapabilityBoundingSet"]) == ("strict", ""), props
    assert booted["redis_answer"].startswith("-NOAUTH"), f"{booted['redis_answer']}\n{journal}"
    assert not booted["redis_without_certificate"].startswith(("-", "+")), booted["redis_without_certificate"]


def test_gateway_processes_share_their_state_in_redis_in_nspawn(booted: dict[str, Any]) -> None:
    """The scale-out branch of the appliance role (appliance_state_store: redis, two gateway processes, the
    client certificate for Redis's mutual TLS) runs as the role set it up: the gateway unit's main process has two
    worker processes, and every answer to /readyz (which pings the shared store over rediss:// with the certificate)
    is 200 with the state check true."""
    journal = booted["journal"][-6000:]
    ready = booted["answers"]["ready"]
    assert ready["status"] == 200, f"{ready}\n{journal}"
    assert json.loads(ready["body"])["checks"]["state"] is True, ready
    assert booted["ready_again"] == [200] * 8, f"{booted['ready_again']}\n{journal}"
    assert booted["gateway_workers"] == 2, f"{booted['gateway_workers']} worker processes\n{journal}"
