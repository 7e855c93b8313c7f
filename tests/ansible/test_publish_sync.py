"""How a publication reaches the GPU nodes, and the ports multi-node training needs, as the roles render them for
the hospital inventory (three GPU nodes, the registry on gw1) and the single-node one (one local engine).

- Every GPU node that is not the registry host gets its list by gw1's push (publish_sync role): the gateway's
  `[[serving.replicas]] list_path` is where the registry writes that node's copy, the path gw1's push reads and
  delivers it to (rrsync confined to the node's serving directory, from gw1's VLAN address only), and the path the
  node's launcher reads and its path unit watches; `sync_receipt` is where the push leaves its receipts.
- The rulesets open the receiving sshd to gw1 only, and the training ports (rendezvous, NCCL/gloo) on each GPU node
  to the other GPU nodes only; loaded in a network namespace, they pass and block exactly that.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.config import ServingSettings
from tests.ansible import _netns as net
from tests.ansible import _rootfs
from tests.ansible._render import Template, render

pytestmark = [pytest.mark.ansible, pytest.mark.slow]

GPUS = {"gpu1": "10.42.0.31", "gpu2": "10.42.0.32", "gpu3": "10.42.0.33"}
GW1 = "10.42.0.22"
SERVING = "/srv/appliance/serving"
TEMPLATES = [
    Template("network/templates/nftables.conf.j2", "nft"),
    Template("appliance/templates/appliance.toml.j2", "toml", when="inventory_hostname in groups['gateway']"),
    Template("publish_sync/templates/push.sh.j2", "push", when="publish_sync_sender | bool"),
    Template("publish_sync/templates/sync.service.j2", "sync.service", when="publish_sync_sender | bool"),
    Template(
        "publish_sync/templates/sync.path.j2",
        "sync.path",
        when="publish_sync_sender | bool",
        vars={"publish_sync_target": "{{ publish_sync_targets | selectattr('name', 'equalto', 'gpu2') | first }}"},
    ),
    Template("publish_sync/templates/sshd_config.j2", "sshd_config", when="publish_sync_receiver | bool"),
    Template(
        "publish_sync/templates/authorized_keys.j2",
        "authorized_keys",
        when="publish_sync_receiver | bool",
        vars={"publish_sync_public_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIRenderOnly appliance-sync@gw1"},
    ),
    Template("tgi/templates/publish.path.j2", "tgi-publish.path", when="inventory_hostname in groups['gpu_nodes']"),
    Template(
        "tgi/templates/service.j2",
        "tgi.service",
        when="inventory_hostname in groups['gpu_nodes']",
        vars={"tgi_unit_style": "service"},
    ),
]
ROLES = ["network", "appliance", "publish_sync", "tgi"]


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hospital")
    render("inventories/hospital/hosts.yml", "all", out, ROLES, TEMPLATES, skip_always=True)
    return out


@pytest.fixture(scope="module")
def single_node(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("single")
    render("inventories/single-node/hosts.yml", "all", out, ROLES, TEMPLATES, skip_always=True)
    return out


def _line(text: str, prefix: str) -> str:
    [line] = [x for x in text.splitlines() if x.startswith(prefix)]
    return line[len(prefix) :]


def test_each_replicas_list_path_is_where_the_push_delivers_and_the_node_reads(hospital: Path) -> None:
    """gw1's settings give each GPU node a list_path and a sync_receipt the settings model accepts; gw1's push reads
    that file and sends it to `replicas/<node>/` under the node's rrsync root, which is the same path on the node;
    the node's launcher reads it and its path unit waits for its signature; gw1's path unit for the node watches it."""
    serving = ServingSettings.model_validate(tomllib.loads((hospital / "gw1.toml").read_text())["serving"])
    replicas = {r.name: r for r in serving.replica_list()}
    assert set(replicas) == set(GPUS)
    push = (hospital / "gw1.push").read_text()
    assert _line(push, "serving=") == SERVING and 'list="$serving/replicas/$node/$list_file"' in push
    assert '"$serving/replicas/$node/" "$remote:replicas/$node/"' in push  # same relative path on the node
    receipts = _line(push, "receipts=")
    for node, address in GPUS.items():
        replica = replicas[node]
        list_path = f"{SERVING}/replicas/{node}/lora_modules.json"
        assert replica.list_path == list_path and replica.url == f"http://{address}:8080"
        assert replica.sync_receipt == f"{receipts}/{node}.json" and receipts.startswith("/var/lib/appliance-sync")
        assert f"  {node}) address={address}; list_file=lora_modules.json ;;" in push
        sshd = (hospital / f"{node}.sshd_config").read_text()
        assert _line(sshd, "ForceCommand ") == f"/usr/bin/rrsync -wo -munge {SERVING}"  # the push's root on the node
        assert _line(sshd, "ListenAddress ") == f"{address}:2222"
        assert _line(sshd, "AllowUsers ") == f"appliance-sync@{GW1}"
        keys = (hospital / f"{node}.authorized_keys").read_text()
        assert f'restrict,from="{GW1}",command="/usr/bin/rrsync -wo -munge {SERVING}" ssh-ed25519 ' in keys
        unit = (hospital / f"{node}.tgi.service").read_text()
        assert f"serve-launch vllm --list {list_path} --" in unit  # the node's server reads the delivered list
        assert _line((hospital / f"{node}.tgi-publish.path").read_text(), "PathChanged=") == list_path + ".sig"
    watched = _line((hospital / "gw1.sync.path").read_text(), "PathChanged=")
    assert watched == f"{replicas['gpu2'].list_path}.sig"  # the registry writes the signature last
    unit = (hospital / "gw1.sync.service").read_text()
    assert "User=appliance-sync" in unit and "TemporaryFileSystem=/srv/appliance:ro" in unit
    assert f"BindReadOnlyPaths={SERVING}" in unit  # of the data directory, only the serving directory is visible
    assert "Restart=on-failure" in unit and "StartLimitIntervalSec=0" in unit  # a node that was down gets it later
    checked = subprocess.run(["bash", "-n", str(hospital / "gw1.push")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr


def test_the_push_units_pass_systemd_analyze(hospital: Path, tmp_path: Path) -> None:
    """gw1's push unit (a template) and gpu2's path unit load in systemd-analyze verify with nothing to say (an
    unknown or misspelt key would be reported); the push script stands at its installed path as /bin/true."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    units = tmp_path / "units"
    units.mkdir()
    service = (hospital / "gw1.sync.service").read_text()
    (units / "appliance-sync@.service").write_text(
        service.replace("/usr/local/libexec/appliance-sync-push", "/bin/true")
    )
    shutil.copy(hospital / "gw1.sync.path", units / "appliance-sync@gpu2.path")
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(units / "appliance-sync@gpu2.path")],  # loads the service
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout + done.stderr == "", done.stdout + done.stderr


def test_the_push_renders_on_the_registry_host_only(hospital: Path, single_node: Path) -> None:
    """The push (script, units) renders for gw1 only and the receiving sshd for the GPU nodes only; on the single
    node neither renders, its engine stays the one local replica and its server reads the registry's own list."""
    assert sorted(p.name for p in hospital.glob("*.push")) == ["gw1.push"]
    assert sorted(p.name for p in hospital.glob("*.sshd_config")) == [f"{n}.sshd_config" for n in sorted(GPUS)]
    assert not list(single_node.glob("*.push")) and not list(single_node.glob("*.sshd_config"))
    assert not list(single_node.glob("*.sync.*")) and not list(single_node.glob("*.authorized_keys"))
    serving = ServingSettings.model_validate(tomllib.loads((single_node / "node1.toml").read_text())["serving"])
    assert serving.replicas == [] and [r.kind for r in serving.replica_list()] == ["embedded"]
    assert "--list /srv/appliance/serving/tgi/lora_adapters.env" in (single_node / "node1.tgi.service").read_text()
    watched = _line((single_node / "node1.tgi-publish.path").read_text(), "PathChanged=")
    assert watched == "/srv/appliance/serving/tgi/lora_adapters.env"
    ruleset = (single_node / "node1.nft").read_text()
    assert "2222" not in ruleset and "@training_peers accept" not in ruleset


def test_the_receiving_sshd_runs_the_rendered_configuration(hospital: Path, tmp_path: Path) -> None:
    """Debian 12's sshd (the cached Debian root, in a private mount namespace) accepts gpu2's rendered configuration
    (sshd -T) and its effective settings are the restrictions: VLAN address only, one user from gw1 only, public
    key only, no PAM, no TTY, no forwarding, rrsync write-only in the serving directory as the only command."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a private mount namespace and chroot need root")
    root = _rootfs.ensure_root(log=tmp_path / "debootstrap.log")
    shutil.copy(hospital / "gpu2.sshd_config", tmp_path / "sshd_config")
    script = (
        f"mount --bind {tmp_path} {root}/mnt && mount -t tmpfs tmpfs {root}/run && mkdir {root}/run/sshd"
        f" && chroot {root} /usr/sbin/sshd -T -f /mnt/sshd_config"
    )
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    effective = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    assert effective["listenaddress"] == f"{GPUS['gpu2']}:2222"
    assert effective["allowusers"] == f"appliance-sync@{GW1}"
    assert effective["forcecommand"] == f"/usr/bin/rrsync -wo -munge {SERVING}"
    assert effective["authorizedkeysfile"] == "/etc/ssh/appliance-sync/authorized_keys"
    assert effective["authenticationmethods"] == "publickey" and effective["passwordauthentication"] == "no"
    assert effective["kbdinteractiveauthentication"] == "no" and effective["permitrootlogin"] == "no"
    assert effective["usepam"] == "no" and effective["permittty"] == "no"
    assert effective["disableforwarding"] == "yes" and effective["allowtcpforwarding"] == "no"
    assert effective["permituserrc"] == "no" and effective["permituserenvironment"] == "no"


def _input_chain(ruleset: str) -> str:
    return ruleset.split("chain input", 1)[1].split("chain forward", 1)[0]


def _elements(ruleset: str, name: str) -> set[str]:
    match = re.search(rf"set {name} {{[^}}]*?(?:elements = {{ ([^}}]*) }};)?\s*}}", ruleset)
    assert match is not None, name
    return set(match.group(1).split(", ")) if match.group(1) else set()


def test_training_ports_open_to_the_other_gpu_nodes_only(hospital: Path) -> None:
    """Each GPU node's ruleset opens the rendezvous port and NCCL/gloo's range on the VLAN to the two other GPU
    nodes, and the receiving sshd to gw1 only; gw1, vault1 and the bastion open neither; every ruleset passes nft -c."""
    rule = 'iifname "vlan42" tcp dport { 29400, 32768-60999 } ip saddr @training_peers accept'
    for node, address in GPUS.items():
        ruleset = (hospital / f"{node}.nft").read_text()
        assert _elements(ruleset, "training_peers") == {f"{a}/32" for n, a in GPUS.items() if n != node}
        assert f"{address}/32" not in _elements(ruleset, "training_peers")
        assert rule in _input_chain(ruleset)
        assert _elements(ruleset, "publish_sync_sources") == {f"{GW1}/32"}
        assert 'iifname "vlan42" tcp dport 2222 ip saddr @publish_sync_sources accept' in _input_chain(ruleset)
    for host in ("gw1", "vault1", "bastion1"):
        ruleset = (hospital / f"{host}.nft").read_text()
        assert "29400" not in ruleset and "@training_peers accept" not in ruleset and "2222" not in ruleset
    for ruleset in hospital.glob("*.nft"):
        checked = subprocess.run(["nft", "-c", "-f", str(ruleset)], capture_output=True, text=True)
        assert checked.returncode == 0, f"{ruleset.name}: {checked.stderr}"


@pytest.fixture
def vlan_pair() -> Iterator[tuple[str, str]]:
    """Two network namespaces on one link named vlan42: `node` (listeners on 2222, 8080, 29400 and 40000) and
    `peers` (the addresses of gpu1, gpu3, gw1 and vault1)."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    tag = str(os.getpid())
    node, peers = f"apsn{tag}", f"apsp{tag}"
    with net.namespaces(node, peers):
        net.veth(f"s{tag}", node, peers)
        net.ns(node, "addr", "add", f"{GPUS['gpu2']}/24", "dev", "vlan42")
        for address in (GPUS["gpu1"], GPUS["gpu3"], GW1, "10.42.0.21"):
            net.ns(peers, "addr", "add", f"{address}/24", "dev", "vlan42")
        for ns in (node, peers):
            net.ns(ns, "link", "set", "vlan42", "up")
        with net.listening(node, ["0.0.0.0:2222", "0.0.0.0:8080", "0.0.0.0:29400", "0.0.0.0:40000"]):
            yield node, peers


def _load(ns: str, ruleset: Path) -> None:
    loaded = subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", str(ruleset)], capture_output=True, text=True)
    assert loaded.returncode == 0, loaded.stderr
    time.sleep(0.2)


def test_loaded_rulesets_pass_training_between_gpu_nodes_only(hospital: Path, vlan_pair: tuple[str, str]) -> None:
    """gpu2's ruleset, loaded: gpu1 and gpu3 reach the rendezvous port and a port of NCCL/gloo's range, gw1 and
    vault1 do not; gw1 reaches the receiving sshd and the model server, the GPU nodes do not reach the sshd. gw1's
    ruleset in its place lets no GPU node reach those ports."""
    node, peers = vlan_pair
    target = GPUS["gpu2"]
    _load(node, hospital / "gpu2.nft")
    expected = {
        (GPUS["gpu1"], 29400): "pass",
        (GPUS["gpu3"], 29400): "pass",
        (GPUS["gpu1"], 40000): "pass",
        (GPUS["gpu3"], 40000): "pass",
        (GW1, 29400): "blocked",
        (GW1, 40000): "blocked",
        ("10.42.0.21", 29400): "blocked",
        ("10.42.0.21", 40000): "blocked",
        (GW1, 2222): "pass",
        (GW1, 8080): "pass",
        (GPUS["gpu1"], 2222): "blocked",
        ("10.42.0.21", 2222): "blocked",
    }
    got = {key: net.probe(peers, key[0], target, key[1]) for key in expected}
    assert got == expected
    _load(node, hospital / "gw1.nft")
    for source in (GPUS["gpu1"], GPUS["gpu3"]):
        assert net.probe(peers, source, target, 29400) == "blocked"
        assert net.probe(peers, source, target, 40000) == "blocked"
