"""The appliance role's appliance-train-gpus on a GPU node, rendered by Ansible for the hospital inventory and run:
it counts the GPUs, refuses a torch without CUDA/NCCL (the real CPU torch here), and otherwise starts `appliance
train --nproc-per-node N` on the VLAN interface (nvidia-smi and the appliance are recorders: no GPU runs here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ansible._render import Template, render

pytestmark = [pytest.mark.ansible]

RECORDER = """#!{python}
import json, os, sys
with open(os.environ["RECORD"], "w") as f:
    json.dump({{"argv": sys.argv[1:], "ifname": os.environ.get("NCCL_SOCKET_IFNAME")}}, f)
"""
NVIDIA_SMI = """#!/bin/sh
echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0)"
echo "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-1)"
"""


def _render(out: Path, venv: Path, **variables: object) -> Path:
    """gpu1's appliance-train-gpus (executable), rendered for the hospital inventory."""
    script = Template("appliance/templates/appliance-train-gpus.j2", "appliance-train-gpus", mode="0700")
    extra = {"appliance_venv": str(venv), "network_vlan_interface": "vlan42", **variables}
    render("inventories/hospital/hosts.yml", "gpu1", out, ["appliance"], [script], extra, skip_always=True)
    return out / "gpu1.appliance-train-gpus"


def _tool(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


def test_train_gpus_counts_the_gpus_and_refuses_a_torch_without_cuda(tmp_path: Path) -> None:
    """One rank per GPU nvidia-smi lists, on the VLAN interface; a CPU-only torch stops it (69) before any rank."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    script = _render(tmp_path, venv)
    tools = tmp_path / "tools"
    tools.mkdir()
    _tool(tools / "nvidia-smi", NVIDIA_SMI)
    _tool(venv / "bin" / "appliance", RECORDER.format(python=sys.executable))
    record = tmp_path / "record.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env |= {"PATH": f"{tools}:{env.get('PATH', '/usr/bin:/bin')}", "RECORD": str(record)}
    args = ["--dataset", "/srv/appliance/prepared/x", "--base", "/srv/appliance/models/base", "--out", "o"]

    (venv / "bin" / "python").symlink_to(sys.executable)  # the real torch here: a CPU build, no NCCL
    refused = subprocess.run([str(script), *args], env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 69 and "--cuda-torch" in refused.stderr and not record.exists()

    (venv / "bin" / "python").unlink()
    _tool(venv / "bin" / "python", "#!/bin/sh\nexit 0\n")  # stands in for a CUDA torch with NCCL
    started = subprocess.run([str(script), *args, "--resume"], env=env, capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    recorded = json.loads(record.read_text())
    assert recorded["argv"] == ["train", "--nproc-per-node", "2", *args, "--resume"]
    assert recorded["ifname"] == "vlan42"

    _tool(tools / "nvidia-smi", "#!/bin/sh\nexit 9\n")  # no driver, no GPU
    record.unlink()
    none = subprocess.run([str(script), *args], env=env, capture_output=True, text=True, timeout=60)
    assert none.returncode == 69 and "no GPU" in none.stderr and not record.exists()


def test_train_gpus_on_several_nodes_uses_the_ports_the_ruleset_opens(tmp_path: Path) -> None:
    """With --nnodes > 1 the rendezvous port is the one the ruleset opens between the GPU nodes (added when not
    given, another refused with 64), and a host whose ephemeral ports (where NCCL/gloo listen) reach outside the
    opened range is refused with 69, both before any rank starts."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    port_range = tmp_path / "ip_local_port_range"
    port_range.write_text("32768\t60999\n")  # Linux's default, what the network role opens by default
    script = _render(tmp_path, venv, appliance_training_port_range_file=str(port_range))
    tools = tmp_path / "tools"
    tools.mkdir()
    _tool(tools / "nvidia-smi", NVIDIA_SMI)
    _tool(venv / "bin" / "appliance", RECORDER.format(python=sys.executable))
    _tool(venv / "bin" / "python", "#!/bin/sh\nexit 0\n")  # stands in for a CUDA torch with NCCL
    record = tmp_path / "record.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env |= {"PATH": f"{tools}:{env.get('PATH', '/usr/bin:/bin')}", "RECORD": str(record)}
    nodes = ["--dataset", "d", "--out", "o", "--nnodes", "2", "--node-rank", "1", "--master-addr", "10.42.0.31"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        record.unlink(missing_ok=True)
        return subprocess.run([str(script), *args], env=env, capture_output=True, text=True, timeout=60)

    started = run(*nodes)
    assert started.returncode == 0, started.stderr
    assert json.loads(record.read_text())["argv"] == [
        "train",
        "--nproc-per-node",
        "2",
        *nodes,
        "--master-port",
        "29400",
    ]
    assert run(*nodes, "--master-port=29400").returncode == 0  # the opened port, given: kept as given
    assert json.loads(record.read_text())["argv"][-1] == "--master-port=29400"

    other = run(*nodes, "--master-port", "29500")
    assert other.returncode == 64 and "opens 29400" in other.stderr and not record.exists()

    port_range.write_text("1024\t65000\n")  # a host whose ephemeral ports reach outside the opened range
    wide = run(*nodes)
    assert wide.returncode == 69 and "32768-60999" in wide.stderr and not record.exists()
    single = run("--dataset", "d", "--out", "o")  # one node: no port between nodes, no check
    assert single.returncode == 0, single.stderr
