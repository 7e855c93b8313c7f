"""gw1's push over real SSH to the receiving sshd as the roles render them: Debian 12's sshd (the cached Debian root,
in an overlay so the cache is untouched) runs gpu2's rendered configuration and authorized_keys in gpu2's network
namespace behind gpu2's rendered ruleset; gw1's rendered push script runs with the real ssh and rsync from gw1's
VLAN address. The list and the adapter arrive, the receipt says so; a key the node does not know delivers nothing
and its receipt says the push failed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ansible import _netns as net
from tests.ansible import _rootfs
from tests.ansible._render import Template, render

pytestmark = [pytest.mark.ansible, pytest.mark.slow]

GW1, GPU2 = "10.42.0.22", "10.42.0.32"
RENDERED_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIRenderOnly appliance-sync@gw1"
NODE = """set -e
mount -t overlay overlay -o lowerdir={root},upperdir={upper},workdir={work} {merged}
mount -t tmpfs tmpfs {merged}/run && mkdir -p {merged}/run/sshd
mount --bind /dev {merged}/dev
mount -t proc proc {merged}/proc
cp /usr/bin/rsync /usr/bin/rrsync {merged}/usr/bin/
chroot {merged} useradd --system --shell /bin/sh --home-dir /var/lib/appliance-sync --no-create-home appliance-sync
chroot {merged} usermod -p '*' appliance-sync
mkdir -p {merged}/var/lib/appliance-sync {merged}/etc/ssh/appliance-sync {merged}/srv/appliance/serving/replicas
mkdir -p -m 0750 {merged}/srv/appliance/serving/adapters {merged}/srv/appliance/serving/replicas/gpu2
chroot {merged} chown appliance-sync:appliance-sync /srv/appliance/serving/adapters /srv/appliance/serving/replicas/gpu2
cp {config}/sshd_config {config}/authorized_keys {merged}/etc/ssh/appliance-sync/
chmod 0644 {merged}/etc/ssh/appliance-sync/sshd_config {merged}/etc/ssh/appliance-sync/authorized_keys
exec chroot {merged} /usr/sbin/sshd -D -e -f /etc/ssh/appliance-sync/sshd_config
"""


@dataclass
class Link:
    gw: str  # network namespace with gw1's VLAN address
    upper: Path  # the node's overlay upper directory: what the push wrote there
    push: Path
    key: Path
    receipts: Path
    serving: Path  # gw1's serving directory


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30)
    return path.with_suffix(".pub").read_text().strip()


@pytest.fixture
def link(tmp_path: Path) -> Iterator[Link]:
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("unshare", "ssh", "ssh-keygen", "rsync")):
        pytest.skip("needs root, unshare, ssh, ssh-keygen and rsync")
    root = _rootfs.ensure_root(log=tmp_path / "debootstrap.log")
    home, config, serving = tmp_path / "home", tmp_path / "config", tmp_path / "gw1" / "serving"
    (home / ".ssh").mkdir(parents=True)
    (home / "receipts").mkdir()
    config.mkdir()
    public = _keygen(home / ".ssh" / "id_ed25519")
    gw_vars = {"publish_sync_data_dir": str(serving.parent), "publish_sync_home": str(home)}
    gw_vars["publish_sync_config_dir"] = str(config)
    render(
        "inventories/hospital/hosts.yml",
        "gw1",
        tmp_path,
        ["publish_sync"],
        [Template("publish_sync/templates/push.sh.j2", "push")],
        gw_vars,
        skip_always=True,
    )
    node_templates = [
        Template("publish_sync/templates/sshd_config.j2", "sshd_config"),
        Template(
            "publish_sync/templates/authorized_keys.j2", "authorized_keys", vars={"publish_sync_public_key": public}
        ),
        Template("network/templates/nftables.conf.j2", "nft"),
    ]
    render(
        "inventories/hospital/hosts.yml",
        "gpu2",
        tmp_path,
        ["network", "publish_sync"],
        node_templates,
        skip_always=True,
    )
    shutil.copy(tmp_path / "gpu2.sshd_config", config / "sshd_config")
    shutil.copy(tmp_path / "gpu2.authorized_keys", config / "authorized_keys")
    host_key = (root / "etc/ssh/ssh_host_ed25519_key.pub").read_text().strip()
    (config / "known_hosts").write_text(f"[{GPU2}]:2222 {host_key}\n")
    (serving / "replicas" / "gpu2").mkdir(parents=True)
    (serving / "adapters" / "triage-v1").mkdir(parents=True)
    (serving / "adapters" / "triage-v1" / "adapter_model.safetensors").write_bytes(b"weights" * 100)
    (serving / "replicas" / "gpu2" / "lora_modules.json").write_text('[{"name": "triage-v1"}]\n')
    (serving / "replicas" / "gpu2" / "lora_modules.json.sig").write_text('{"signature": "s"}\n')

    tag = str(os.getpid())
    gw, node = f"apgw{tag}", f"apnd{tag}"
    with net.namespaces(gw, node):
        net.veth(f"g{tag}", gw, node)
        net.ns(gw, "addr", "add", f"{GW1}/24", "dev", "vlan42")
        net.ns(node, "addr", "add", f"{GPU2}/24", "dev", "vlan42")
        for ns in (gw, node):
            net.ns(ns, "link", "set", "vlan42", "up")
        loaded = subprocess.run(
            ["ip", "netns", "exec", node, "nft", "-f", str(tmp_path / "gpu2.nft")], capture_output=True, text=True
        )
        assert loaded.returncode == 0, loaded.stderr
        upper, work, merged = tmp_path / "upper", tmp_path / "work", tmp_path / "merged"
        for d in (upper, work, merged):
            d.mkdir()
        script = NODE.format(root=root, upper=upper, work=work, merged=merged, config=config)
        sshd = subprocess.Popen(
            ["ip", "netns", "exec", node, "unshare", "--mount", "--propagation", "private", "sh", "-c", script],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + 30
            while (
                subprocess.run(
                    ["ip", "netns", "exec", node, "ss", "-Htln", "sport", "= :2222"], capture_output=True, text=True
                ).stdout.strip()
                == ""
            ):
                assert sshd.poll() is None, sshd.stdout.read() if sshd.stdout else "sshd exited"
                assert time.monotonic() < deadline, "sshd did not listen"
                time.sleep(0.2)
            yield Link(gw, upper, tmp_path / "gw1.push", home / ".ssh" / "id_ed25519", home / "receipts", serving)
        finally:
            sshd.kill()
            sshd.wait()


def _push(link: Link) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", link.gw, "bash", str(link.push), "gpu2"], capture_output=True, text=True, timeout=120
    )


def test_the_push_reaches_the_rendered_sshd_and_only_with_its_key(link: Link) -> None:
    """Over real SSH (host key pinned, gw1's address, the ruleset loaded) the list, its signature and the adapter
    arrive in gpu2's serving directory and the receipt names them; with another key nothing more arrives and the
    receipt says the push failed."""
    done = _push(link)
    assert done.returncode == 0, done.stderr
    delivered = link.upper / "srv/appliance/serving"
    for name in ("lora_modules.json", "lora_modules.json.sig"):
        source = link.serving / "replicas" / "gpu2" / name
        assert (delivered / "replicas" / "gpu2" / name).read_bytes() == source.read_bytes()
    adapter = "adapters/triage-v1/adapter_model.safetensors"
    assert (delivered / adapter).read_bytes() == (link.serving / adapter).read_bytes()
    receipt = json.loads((link.receipts / "gpu2.json").read_text())
    listed = link.serving / "replicas" / "gpu2" / "lora_modules.json"
    assert receipt["delivered"] is True and receipt["list_sha256"] == hashlib.sha256(listed.read_bytes()).hexdigest()

    link.key.unlink()
    link.key.with_suffix(".pub").unlink()
    _keygen(link.key)  # a key the node does not know
    listed.write_text("[]\n")
    refused = _push(link)
    assert refused.returncode == 75, refused.stderr
    assert (delivered / "replicas" / "gpu2" / "lora_modules.json").read_text() != "[]\n"
    assert json.loads((link.receipts / "gpu2.json").read_text())["delivered"] is False
