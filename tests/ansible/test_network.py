"""The network role's output: the 802.1Q config as rendered, and the nftables ruleset loaded in network
namespaces and probed. VXLAN stands in for the VLAN (this sandbox's kernel has no 802.1Q); the VXLAN device is
created in an underlay namespace and moved into the host's, so the host's ruleset sees only the VLAN-like link.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.ansible import _netns as net
from tests.ansible.conftest import Converged

pytestmark = [pytest.mark.ansible, pytest.mark.slow]


@pytest.fixture(scope="module")
def netns(converged: Converged, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """host (ruleset), lan (hospital clients + the bastion), gpu (a VLAN peer), wa (the host's VXLAN underlay)."""
    tag = str(os.getpid())
    names = {k: f"ap{k}{tag}" for k in ("host", "lan", "gpu", "wa")}
    with contextlib.ExitStack() as stack:
        stack.enter_context(net.namespaces(*names.values()))
        h, lan, gpu, wa = names["host"], names["lan"], names["gpu"], names["wa"]
        # LAN: host lan0 10.10.0.1 <-> lan eth0 10.10.0.2 (a workstation) and 10.10.0.5 (the bastion)
        net.ip("link", "add", f"l{tag}", "netns", h, "type", "veth", "peer", "name", "eth0", "netns", lan)
        net.ns(h, "link", "set", f"l{tag}", "name", "lan0")
        net.ns(h, "addr", "add", "10.10.0.1/24", "dev", "lan0")
        net.ns(lan, "addr", "add", "10.10.0.2/24", "dev", "eth0")
        net.ns(lan, "addr", "add", "10.10.0.5/24", "dev", "eth0")
        for ns, dev in ((h, "lan0"), (lan, "eth0")):
            net.ns(ns, "link", "set", dev, "up")
        net.ns(lan, "route", "add", "10.42.0.0/24", "via", "10.10.0.1")
        # Underlay wa 192.168.77.1 <-> gpu 192.168.77.2; VXLAN id 42 on top, wa's end moved into host as vlan42.
        net.ip("link", "add", f"u{tag}", "netns", wa, "type", "veth", "peer", "name", "u0", "netns", gpu)
        net.ns(wa, "link", "set", f"u{tag}", "name", "u0")
        net.ns(wa, "addr", "add", "192.168.77.1/24", "dev", "u0")
        net.ns(gpu, "addr", "add", "192.168.77.2/24", "dev", "u0")
        for ns in (wa, gpu):
            net.ns(ns, "link", "set", "u0", "up")
        try:
            net.ns(
                wa,
                "link",
                "add",
                "vlan42",
                "type",
                "vxlan",
                "id",
                "42",
                "local",
                "192.168.77.1",
                "remote",
                "192.168.77.2",
                "dstport",
                "4789",
                "dev",
                "u0",
            )
            net.ns(
                gpu,
                "link",
                "add",
                "vlan42",
                "type",
                "vxlan",
                "id",
                "42",
                "local",
                "192.168.77.2",
                "remote",
                "192.168.77.1",
                "dstport",
                "4789",
                "dev",
                "u0",
            )
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"VXLAN is not available in this kernel: {exc.stderr.decode().strip()}")
        net.ns(wa, "link", "set", "vlan42", "netns", h)
        net.ns(h, "addr", "add", "10.42.0.1/24", "dev", "vlan42")
        net.ns(gpu, "addr", "add", "10.42.0.2/24", "dev", "vlan42")
        net.ns(gpu, "addr", "add", "10.42.0.3/24", "dev", "vlan42")  # a second gateway host (network_redis_clients)
        for ns in (h, gpu):
            net.ns(ns, "link", "set", "vlan42", "up")
        specs = {
            h: ["0.0.0.0:22", "0.0.0.0:8443", "0.0.0.0:8080", "0.0.0.0:8200", "0.0.0.0:6380"],
            lan: ["10.10.0.2:8443", "10.10.0.2:9999"],
            gpu: ["10.42.0.2:8080"],
        }
        for ns, ports in specs.items():
            stack.enter_context(net.listening(ns, ports))
        yield names


# (from namespace, source address, destination, port, expected) for the single-node host (gateway+gpu+vault+redis).
MATRIX = [
    ("lan", "10.10.0.2", "10.10.0.1", 8443, "pass"),  # gateway HTTPS from the hospital LAN
    ("lan", "10.10.0.2", "10.10.0.1", 22, "blocked"),  # SSH only from the bastion
    ("lan", "10.10.0.5", "10.10.0.1", 22, "pass"),  # ... which is 10.10.0.5
    ("lan", "10.10.0.2", "10.10.0.1", 8080, "blocked"),  # TGI not on the LAN
    ("lan", "10.10.0.2", "10.10.0.1", 8200, "blocked"),  # Vault not on the LAN
    ("lan", "10.10.0.2", "10.42.0.1", 8080, "blocked"),  # nor through the VLAN address from the LAN side
    ("gpu", "10.42.0.3", "10.42.0.1", 8080, "pass"),  # TGI on the VLAN from a gateway host
    ("gpu", "10.42.0.2", "10.42.0.1", 8080, "blocked"),  # ... but not from another GPU node
    ("gpu", "10.42.0.2", "10.42.0.1", 8200, "pass"),  # Vault on the VLAN
    ("gpu", "10.42.0.2", "10.42.0.1", 22, "blocked"),  # no SSH from the VLAN
    ("gpu", "10.42.0.2", "10.42.0.1", 8443, "blocked"),  # the gateway port is for the LAN interface only
    ("gpu", "10.42.0.3", "10.42.0.1", 6380, "pass"),  # Redis (TLS) from a gateway host on the VLAN
    ("gpu", "10.42.0.2", "10.42.0.1", 6380, "blocked"),  # ... but not from a GPU node
    ("lan", "10.10.0.2", "10.10.0.1", 6380, "blocked"),  # ... nor from the hospital LAN
    ("host", "10.10.0.1", "10.10.0.2", 8443, "pass"),  # egress allow-list: the IdP
    ("host", "10.10.0.1", "10.10.0.2", 9999, "blocked"),  # anything else out is dropped
    ("host", "10.42.0.1", "10.42.0.2", 8080, "pass"),  # the VLAN peers
]


def _run_matrix(names: dict[str, str]) -> dict[tuple[str, str, str, int], str]:
    with ThreadPoolExecutor(max_workers=len(MATRIX)) as pool:
        futures = {
            (ns, src, dst, port): pool.submit(net.probe, names[ns], src, dst, port) for ns, src, dst, port, _ in MATRIX
        }
        return {key: f.result() for key, f in futures.items()}


def test_vlan_config_is_802_1q(converged: Converged) -> None:
    """The .netdev makes vlan42 an 802.1Q VLAN with id 42, the LAN .network carries it, the VLAN has its address."""
    netdir = converged.root / "etc/systemd/network"
    netdev = configparser.ConfigParser()
    netdev.read(netdir / "20-vlan42.netdev")
    assert netdev["NetDev"]["Name"] == "vlan42" and netdev["NetDev"]["Kind"] == "vlan"
    assert netdev["VLAN"]["Id"] == "42"
    lan = (netdir / "10-lan0.network").read_text()
    assert "Name=lan0" in lan and "VLAN=vlan42" in lan and "Address=10.10.0.1/24" in lan
    vlan = (netdir / "20-vlan42.network").read_text()
    assert "Address=10.42.0.1/24" in vlan and "Gateway" not in vlan


def test_ruleset_passes_what_must_pass_and_blocks_the_rest(converged: Converged, netns: dict[str, str]) -> None:
    """Without the ruleset every probe connects; with it, exactly the allowed flows do."""
    before = _run_matrix(netns)
    assert set(before.values()) == {"pass"}, f"the topology itself blocks something: {before}"
    ruleset = converged.root / "etc/nftables.conf"
    loaded = subprocess.run(
        ["ip", "netns", "exec", netns["host"], "nft", "-f", str(ruleset)], capture_output=True, text=True
    )
    assert loaded.returncode == 0, loaded.stderr
    time.sleep(0.2)
    after = _run_matrix(netns)
    expected = {(ns, src, dst, port): want for ns, src, dst, port, want in MATRIX}
    wrong = {k: (after[k], expected[k]) for k in expected if after[k] != expected[k]}
    assert not wrong, f"(got, expected): {wrong}"
    listing = subprocess.run(
        ["ip", "netns", "exec", netns["host"], "nft", "list", "chain", "inet", "appliance", "input"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "policy drop" in listing


def test_ruleset_is_rendered_for_the_host(converged: Converged) -> None:
    """The rendered ruleset drops by default in all three hooks and names the single node's services."""
    text = Path(converged.root / "etc/nftables.conf").read_text()
    assert text.count("policy drop;") == 3
    assert 'iifname "vlan42" tcp dport { 8080 }' in text
    assert 'iifname "lan0" tcp dport 8443' in text
