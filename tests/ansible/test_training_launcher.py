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

from tests.ansible._render import HOST, play, render, template

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


def _render(out: Path, venv: Path) -> Path:
    """The appliance role's multi-GPU training command for gpu1 of the hospital inventory."""
    script = template(
        "Render appliance-train-gpus",
        "appliance/templates/appliance-train-gpus.j2",
        f"{out}/{HOST}.appliance-train-gpus",
        mode="0700",
    )
    rendered = play("Render the appliance role's multi-GPU training command", "gpu_nodes", ["appliance"], [script])
    extra = {"appliance_venv": str(venv), "network_vlan_interface": "vlan42"}
    render(
        "inventories/hospital/hosts.yml", rendered, out, extra=extra, args=["--skip-tags", "always", "--limit", "gpu1"]
    )
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
