"""The tgi role's podman-run unit starts the model server through `appliance serve-launch`: its ExecStart, rendered
by Ansible for the hospital (vLLM) and single-node (TGI) inventories, is run as systemd would run it (podman and
vllm replaced by recorders, since no TGI/vLLM image or GPU runs here): a signed list reaches the server (TGI:
LORA_ADAPTERS; vLLM: through the role's launcher script to `vllm serve --enable-lora ... --lora-modules`); an
edited list starts nothing (exit 65)."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ansible._render import Template, render
from tests.serving.conftest import pin_publication_keys, sign_list

pytestmark = [pytest.mark.ansible, pytest.mark.slow]

VENV_APPLIANCE = "/opt/appliance/venv/bin/appliance"
PINNED = "/etc/appliance-serving/publication-keys.json"
IMAGES = {"tgi": "ghcr.io/huggingface/text-generation-inference:3.3.6", "vllm": "docker.io/vllm/vllm-openai:v0.11.0"}
TGI_FILES = [
    Template("tgi/templates/service.j2", "service"),
    Template("tgi/templates/container.j2", "container"),
    Template("tgi/templates/vllm-launch.py.j2", "vllm-launch.py"),
]
# Writes its argv and LORA_ADAPTERS as JSON to $RECORD (stands in for podman and for vllm).
RECORDER = """#!{python}
import json, os, sys
with open(os.environ["RECORD_" + os.path.basename(sys.argv[0]).upper()], "w") as f:
    json.dump({{"argv": sys.argv[1:], "lora_adapters": os.environ.get("LORA_ADAPTERS")}}, f)
"""


def _render(inventory: str, out: Path, unit_style: str = "service") -> None:
    """The tgi role's podman-run unit, quadlet and vLLM launcher script for every GPU node; the unit style
    (vars/Debian-12.yml: service) given, without gathering facts."""
    render(inventory, "gpu_nodes", out, ["tgi"], TGI_FILES, {"tgi_unit_style": unit_style}, skip_always=True)


def _exec_start(unit: Path) -> tuple[list[str], dict[str, str]]:
    """ExecStart's argv (continuations joined, %t/%n expanded) and the unit's Environment= assignments."""
    text = unit.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    argv: list[str] = []
    for line in text.splitlines():
        if line.startswith("Environment="):
            env.update(item.partition("=")[::2] for item in line.removeprefix("Environment=").split())
        elif line.startswith("ExecStart="):
            argv = shlex.split(line.removeprefix("ExecStart=").replace("%t", "/run").replace("%n", "x.service"))
    return argv, env


def _adapter(directory: Path, seed: bytes) -> dict[str, str]:
    """Adapter files (any bytes: the launcher checks digests, never parses them) and their signed digests."""
    directory.mkdir(parents=True)
    (directory / "adapter_model.safetensors").write_bytes(seed * 64)
    (directory / "adapter_config.json").write_bytes(b'{"r": 4, "seed": "' + seed + b'"}')
    digest = {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in os.listdir(directory)}
    return {
        "fingerprint": digest["adapter_model.safetensors"],
        "config_sha256": digest["adapter_config.json"],
        "path": str(directory),
    }


def _signed_list(engine: str, path: Path, adapters: dict[str, dict[str, str]]) -> None:
    if engine == "tgi":
        path.write_text("LORA_ADAPTERS=" + ",".join(f"{i}={d['path']}" for i, d in adapters.items()) + "\n")
    else:
        modules = [{"name": i, "path": d["path"], "base_model_name": "base"} for i, d in adapters.items()]
        path.write_text(json.dumps(modules))
    sign_list(path, engine, adapters)


@pytest.mark.parametrize(
    ("inventory", "host", "engine", "listed"),
    [
        ("inventories/hospital/hosts.yml", "gpu1", "vllm", "/srv/appliance/serving/replicas/gpu1/lora_modules.json"),
        ("inventories/single-node/hosts.yml", "node1", "tgi", "/srv/appliance/serving/tgi/lora_adapters.env"),
    ],
    ids=["hospital-vllm", "single-node-tgi"],
)
def test_model_server_starts_only_through_the_launcher(
    inventory: str, host: str, engine: str, listed: str, tmp_path: Path
) -> None:
    """The unit's start command checks the published list first and hands only verified adapters to the server."""
    _render(inventory, tmp_path)
    argv, unit_env = _exec_start(tmp_path / f"{host}.service")
    assert argv[:7] == [VENV_APPLIANCE, "serve-launch", engine, "--list", listed, "--", "/usr/bin/podman"]
    assert unit_env["APPLIANCE_SERVING__PUBLICATION_PUBLIC_KEYS"] == PINNED
    assert "EnvironmentFile=" not in (tmp_path / f"{host}.service").read_text()  # the list reaches it checked only

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("podman", "vllm"):
        (bin_dir / name).write_text(RECORDER.format(python=sys.executable))
        (bin_dir / name).chmod(0o755)
    adapter = _adapter(tmp_path / "adapters" / "triage-v1", b"t")
    published = tmp_path / Path(listed).name
    _signed_list(engine, published, {"triage-v1": adapter})
    env = {k: v for k, v in os.environ.items() if not k.startswith("APPLIANCE_")}
    env |= {k: v for k, v in unit_env.items() if k.startswith("APPLIANCE_")}
    env["APPLIANCE_SERVING__PUBLICATION_PUBLIC_KEYS"] = str(pin_publication_keys(tmp_path / "pinned.json"))
    env |= {"RECORD_PODMAN": str(tmp_path / "podman.json"), "RECORD_VLLM": str(tmp_path / "vllm.json")}
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    # as systemd runs it, the installed venv's appliance being this checkout's, podman the recorder
    command = [sys.executable, "-m", "appliance", *argv[1:4], str(published), "--", str(bin_dir / "podman"), *argv[7:]]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    podman = json.loads((tmp_path / "podman.json").read_text())
    if engine == "tgi":
        assert podman["lora_adapters"] == f"triage-v1={adapter['path']}"
        assert "LORA_ADAPTERS" in podman["argv"]  # --env LORA_ADAPTERS: handed into the container
    else:
        # podman starts python3 on the role's script, which execs vllm serve with the verified modules
        _, *script_args = podman["argv"][podman["argv"].index("/etc/appliance-vllm-launch.py") :]
        assert script_args[:2] == ["--enable-lora", "--lora-modules"]
        subprocess.run(
            [sys.executable, str(tmp_path / f"{host}.vllm-launch.py"), *script_args], env=env, check=True, timeout=60
        )
        vllm = json.loads((tmp_path / "vllm.json").read_text())["argv"]
        assert vllm[:2] == ["serve", "/srv/appliance/models/base"]
        assert "--max-lora-rank" in vllm and vllm[vllm.index("--lora-modules") - 1] == "--enable-lora"
        assert json.loads(vllm[vllm.index("--lora-modules") + 1])["path"] == adapter["path"]
    assert IMAGES[engine] in podman["argv"]  # the rest of the rendered podman command, unchanged

    # the weights swapped under the signed digests: exit 65, podman never runs
    (tmp_path / "podman.json").unlink()
    (Path(adapter["path"]) / "adapter_model.safetensors").write_bytes(b"x" * 64)
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 65 and "INTEGRITY_VIOLATION" in done.stderr, done.stderr
    assert not (tmp_path / "podman.json").exists()


def test_quadlet_checks_the_list_before_the_server_starts(tmp_path: Path) -> None:
    """Where the quadlet owns the start command, the launcher checks the list in ExecStartPre (then runs only
    /bin/true), and TGI's adapters still come from the published list, optional until the first publish."""
    _render("inventories/single-node/hosts.yml", tmp_path, unit_style="quadlet")
    lines = (tmp_path / "node1.container").read_text().splitlines()
    service = lines[lines.index("[Service]") :]
    [pre] = [shlex.split(line.removeprefix("ExecStartPre=")) for line in service if line.startswith("ExecStartPre=")]
    listed = "/srv/appliance/serving/tgi/lora_adapters.env"
    assert pre == [VENV_APPLIANCE, "serve-launch", "tgi", "--list", listed, "--", "/bin/true"]
    assert f"Environment=APPLIANCE_SERVING__PUBLICATION_PUBLIC_KEYS={PINNED}" in service
    assert "EnvironmentFile=-/srv/appliance/serving/tgi/lora_adapters.env" in service
    assert any(line.startswith("PodmanArgs=") and "--env=LORA_ADAPTERS" in line for line in lines)
