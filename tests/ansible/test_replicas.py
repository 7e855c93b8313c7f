"""Serving replicas from the inventory: the appliance role's settings list every GPU node as a replica of the
gateway (serving.replicas) and the network role opens each replica's port to the gateway hosts only; the
single-node inventory keeps its one local engine. Rendered with ansible-playbook (no hosts are touched)."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest

from appliance.config import ServingSettings
from tests.ansible._render import Template, render

pytestmark = [pytest.mark.ansible, pytest.mark.slow]

RULESET_AND_SETTINGS = [
    Template("network/templates/nftables.conf.j2", "nft"),
    Template("appliance/templates/appliance.toml.j2", "toml"),
]


def _render(inventory: str, hosts: str, out: Path, *extra: str) -> None:
    """Each host's ruleset and appliance settings (``extra``: NAME=VALUE extra variables)."""
    variables = dict(item.split("=", 1) for item in extra)
    render(inventory, hosts, out, ["network", "appliance"], RULESET_AND_SETTINGS, variables)


def test_hospital_gateway_routes_among_the_three_gpu_nodes(tmp_path: Path) -> None:
    """gw1's settings list gpu1..gpu3 (VLAN address and port) as replicas the settings model accepts; each GPU
    node's ruleset opens its model server port to gw1's VLAN address only, and passes nft -c."""
    _render("inventories/hospital/hosts.yml", "gw1:gpu1:gpu2:gpu3", tmp_path)
    settings = tomllib.loads((tmp_path / "gw1.toml").read_text())
    serving = ServingSettings.model_validate(settings["serving"])
    assert serving.backend == "vllm"
    assert [(r.name, r.url) for r in serving.replica_list()] == [
        ("gpu1", "http://10.42.0.31:8080"),
        ("gpu2", "http://10.42.0.32:8080"),
        ("gpu3", "http://10.42.0.33:8080"),
    ]
    for gpu in ("gpu1", "gpu2", "gpu3"):
        ruleset = (tmp_path / f"{gpu}.nft").read_text()
        assert "set serving_clients { type ipv4_addr; flags interval; elements = { 10.42.0.22/32 }; }" in ruleset
        assert 'iifname "vlan42" tcp dport { 8080 } ip saddr @serving_clients accept' in ruleset
        assert "@vlan_net accept" not in ruleset.split("chain input", 1)[1].split("chain forward", 1)[0]
        checked = subprocess.run(["nft", "-c", "-f", str(tmp_path / f"{gpu}.nft")], capture_output=True, text=True)
        assert checked.returncode == 0, f"{gpu}: {checked.stderr}"
    assert "dport { 8080 }" not in (tmp_path / "gw1.nft").read_text()  # the gateway host serves no model


def test_single_node_keeps_its_one_local_engine(tmp_path: Path) -> None:
    """On the single-node inventory the gateway's one replica is the embedded engine on loopback."""
    _render("inventories/single-node/hosts.yml", "node1", tmp_path)
    serving = ServingSettings.model_validate(tomllib.loads((tmp_path / "node1.toml").read_text())["serving"])
    assert serving.replicas == []
    assert [(r.url, r.kind) for r in serving.replica_list()] == [("http://127.0.0.1:8081", "embedded")]


def test_molecule_ruleset_opens_the_model_server_to_its_gateway_hosts(tmp_path: Path) -> None:
    """The Molecule host's ruleset (what tests/ansible/test_network.py probes) lets 10.42.0.1 and .3 reach the
    model server port, and passes nft -c."""
    _render("molecule/inventory/single-node.yml", "node1", tmp_path, "ansible_connection=local")
    ruleset = (tmp_path / "node1.nft").read_text()
    assert (
        "set serving_clients { type ipv4_addr; flags interval; elements = { 10.42.0.1/32, 10.42.0.3/32 }; }" in ruleset
    )
    assert 'iifname "vlan42" tcp dport { 8080 } ip saddr @serving_clients accept' in ruleset
    checked = subprocess.run(["nft", "-c", "-f", str(tmp_path / "node1.nft")], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
