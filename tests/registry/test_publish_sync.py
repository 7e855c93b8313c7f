"""A publication reaches replicas on other hosts through the provisioned push, and the registry's report says so
truthfully: the ansible publish_sync role's push script (rendered by Ansible for gw1 of the hospital inventory)
run as its path unit would run it, with the real rsync, and the real rrsync as the node's forced command (ssh
replaced by a stand-in that runs that forced command); the registry asks a replica to load only once the push's
receipt says its copy arrived, and reports a replica the push did not reach as failed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from appliance.config import load_settings
from appliance.registry import reach_replicas
from tests.ansible._render import Template, render
from tests.conftest import REPO_ROOT
from tests.registry.conftest import APPROVERS, OPERATOR, RecordingAudit, RunFactory

pytestmark = [pytest.mark.ansible, pytest.mark.slow]

NODES = {"gpu1": "10.42.0.31", "gpu2": "10.42.0.32", "gpu3": "10.42.0.33"}
# ssh as the push calls it (rsync -e "ssh -i KEY -p PORT -o ..." -l USER HOST COMMAND...): runs the node's forced
# command, rrsync write-only (symlinks munged) in that node's serving directory, SSH_ORIGINAL_COMMAND as sshd sets it
SSH = """#!{python}
import os, sys
args, i = sys.argv[1:], 0
while i < len(args) and args[i].startswith("-"):
    i += 2 if args[i] in ("-i", "-p", "-o", "-l", "-F") else 1
host, command = args[i].split("@")[-1], " ".join(args[i + 1:])
nodes = dict(item.split("=", 1) for item in os.environ["NODE_SERVING"].split(","))
if host not in nodes:
    sys.exit(f"ssh: connect to host {{host}} port 2222: Connection refused")
os.environ["SSH_ORIGINAL_COMMAND"] = command
os.execv("/usr/bin/rrsync", ["rrsync", "-wo", "-munge", nodes[host]])
"""


@dataclass
class Push:
    """gw1's rendered push script and the nodes' serving directories it reaches (gpu3's host is down)."""

    script: Path
    receipts: Path
    nodes: dict[str, Path]
    env: dict[str, str]

    def run(self, node: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(self.script), node], env=self.env, capture_output=True, text=True, timeout=120
        )


@pytest.fixture
def push(data_dir: Path, tmp_path: Path) -> Push:
    if shutil.which("rsync") is None or not Path("/usr/bin/rrsync").is_file():
        pytest.fail("rsync (with rrsync) is missing: run scripts/system-deps.sh (make system-deps)")
    out = tmp_path / "rendered"
    out.mkdir()
    home = tmp_path / "sync-home"
    variables = {"publish_sync_data_dir": str(data_dir.resolve()), "publish_sync_home": str(home)}
    render(
        "inventories/hospital/hosts.yml",
        "gw1",
        out,
        ["publish_sync"],
        [Template("publish_sync/templates/push.sh.j2", "push")],
        variables,
    )
    (home / "receipts").mkdir(parents=True)
    nodes = {}
    for node in ("gpu1", "gpu2"):  # what the role creates on a node: two directories the push may write
        nodes[node] = tmp_path / node / "serving"
        (nodes[node] / "adapters").mkdir(parents=True)
        (nodes[node] / "replicas" / node).mkdir(parents=True)
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "ssh").write_text(SSH.format(python=sys.executable))
    (tools / "ssh").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env |= {"PATH": f"{tools}:{env.get('PATH', '/usr/bin:/bin')}"}
    env["NODE_SERVING"] = ",".join(f"{NODES[n]}={path}" for n, path in nodes.items())
    return Push(out / "gw1.push", home / "receipts", nodes, env)


class PathUnits:
    """Stands in for gw1's appliance-sync@<node>.path units: runs the push for a node each time the registry
    rewrites the signature of that node's list copy (PathChanged), one push at a time per node."""

    def __init__(self, push: Push, serving: Path, watched: list[str]) -> None:
        self.push, self.serving, self.watched = push, serving, watched
        self.runs: dict[str, list[subprocess.CompletedProcess[str]]] = {n: [] for n in watched}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _stamp(self, node: str) -> int | None:
        try:
            return (self.serving / "replicas" / node / "lora_modules.json.sig").stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def _watch(self) -> None:
        seen = {n: self._stamp(n) for n in self.watched}
        while not self._stop.wait(0.05):
            for node in self.watched:
                stamp = self._stamp(node)
                if stamp != seen[node]:
                    seen[node] = stamp
                    self.runs[node].append(self.push.run(node))

    def __enter__(self) -> PathUnits:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _settings(data_dir: Path, push: Push, timeout_s: float) -> Any:
    replicas = [
        {
            "url": f"http://{address}:8080",
            "name": node,
            "list_path": str(data_dir.resolve() / "serving" / "replicas" / node / "lora_modules.json"),
            "sync_receipt": str(push.receipts / f"{node}.json"),
        }
        for node, address in NODES.items()
    ]
    serving = {"backend": "vllm", "sync_timeout_s": timeout_s, "replicas": replicas}
    return load_settings(data_dir=data_dir, policies_dir=REPO_ROOT / "policies", serving=serving)


def test_a_replica_is_reported_only_once_the_push_delivered_its_list(
    registry: Any, audit: RecordingAudit, make_run: RunFactory, data_dir: Path, push: Push
) -> None:
    """gpu2's list and adapter reach its serving directory byte for byte and it is reported (vLLM restarting on
    the list change); gpu3's host refuses the push: failed, with the push's failure; gpu1 has no push running and a
    receipt for the same bytes from before the copy: failed after sync_timeout_s, the stale receipt ignored. An
    unpublish pushed the same way removes the adapter from gpu2."""
    registry.add(make_run(ledger_db=registry.ledger_path), "triage", OPERATOR)
    for approver in APPROVERS:
        registry.approve("triage", 1, approver)
    registry.publish("triage", 1, "vllm", OPERATOR)
    source = registry.publisher.list_path("vllm")
    stale = {"delivered": True, "list_sha256": _sha256(source), "signature_sha256": _sha256(Path(f"{source}.sig"))}
    (push.receipts / "gpu1.json").write_text(json.dumps(stale))  # a push of these very bytes, before this copy
    time.sleep(0.05)
    settings = _settings(data_dir, push, timeout_s=3.0)

    with PathUnits(push, data_dir.resolve() / "serving", ["gpu2", "gpu3"]) as units:
        started = time.monotonic()
        report = reach_replicas(
            registry, settings, change="publish", name="triage", version=1, targets=["vllm"], actor=OPERATOR
        )
        waited = time.monotonic() - started
    outcomes = {r.replica: (r.outcome, r.reason or "") for r in report.replicas}
    assert outcomes["gpu2"][0] == "restarting", outcomes
    assert outcomes["gpu3"] == ("failed", "its list did not reach it: the push to its host failed")
    assert outcomes["gpu1"] == ("failed", "its list did not reach it: no delivery to its host within 3 s")
    assert 3.0 <= waited < 30
    assert [r.returncode for r in units.runs["gpu3"]] == [75] and "Connection refused" in units.runs["gpu3"][0].stderr
    assert units.runs["gpu2"][-1].returncode == 0, units.runs["gpu2"][-1].stderr

    node = push.nodes["gpu2"]
    for name in ("lora_modules.json", "lora_modules.json.sig"):
        assert (node / "replicas" / "gpu2" / name).read_bytes() == Path(f"{source.parent}/{name}").read_bytes()
    [served] = json.loads(source.read_text())
    copy = Path(served["path"])
    assert sorted(p.name for p in (node / "adapters" / copy.name).iterdir()) == sorted(p.name for p in copy.iterdir())
    for f in copy.iterdir():
        assert (node / "adapters" / copy.name / f.name).read_bytes() == f.read_bytes()
    event = audit.events[-1]
    assert event["type"] == "registry.reload" and event["details"]["failed"] == 2
    assert event["details"]["failed_replicas"] == "gpu1|gpu3"

    registry.unpublish("triage", 1, OPERATOR, "vllm")
    with PathUnits(push, data_dir.resolve() / "serving", ["gpu2"]):
        report = reach_replicas(
            registry, settings, change="unpublish", name="triage", version=1, targets=["vllm"], actor=OPERATOR
        )
    assert {r.replica: r.outcome for r in report.replicas}["gpu2"] == "restarting"
    assert json.loads((node / "replicas" / "gpu2" / "lora_modules.json").read_text()) == []
    assert not (node / "adapters" / copy.name).exists()  # nothing publishes it any more: removed on the node


def test_the_nodes_forced_command_confines_the_push(push: Push, tmp_path: Path) -> None:
    """What the push key can do on a node is write inside its serving directory: a path outside it and a read
    (pull) of anything are refused by rrsync -wo, nothing lands outside, and a symlink arrives munged."""
    payload = tmp_path / "payload"
    payload.write_text("x")
    ssh = f"{push.env['PATH'].split(':')[0]}/ssh"
    remote = f"appliance-sync@{NODES['gpu2']}"

    def rsync(*args: str) -> subprocess.CompletedProcess[str]:
        command = ["rsync", "-e", f"{ssh} -p 2222", *args]
        return subprocess.run(command, env=push.env, capture_output=True, text=True, timeout=60)

    assert rsync(str(payload), f"{remote}:adapters/").returncode == 0
    assert (push.nodes["gpu2"] / "adapters" / "payload").read_text() == "x"
    assert rsync(str(payload), f"{remote}:../escaped").returncode != 0
    rsync(str(payload), f"{remote}:/tmp/escaped-{os.getpid()}")  # an absolute path is taken below serving/
    assert not Path(f"/tmp/escaped-{os.getpid()}").exists() and not (push.nodes["gpu2"].parent / "escaped").exists()
    (tmp_path / "link").symlink_to("/etc/passwd")
    assert rsync("--links", str(tmp_path / "link"), f"{remote}:adapters/").returncode == 0
    assert os.readlink(push.nodes["gpu2"] / "adapters" / "link").startswith("/rsyncd-munged/")  # points nowhere
    pulled = rsync(f"{remote}:adapters/payload", str(tmp_path / "pulled"))
    assert pulled.returncode != 0 and not (tmp_path / "pulled").exists()
