"""The appliance role's units: systemd-analyze verify, then a real boot of the converged root with
systemd-nspawn -b (private network, so the host's firewall is untouched), where systemd applies each unit's
sandbox and starts it.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.ansible.conftest import Converged

pytestmark = [pytest.mark.ansible, pytest.mark.slow]

UNITS = ("appliance-gateway.service", "appliance-engine.service")
PROBE = """[Unit]
Description=Record how the appliance units started, then power off (test only)
After=appliance-gateway.service appliance-engine.service multi-user.target

[Service]
Type=oneshot
ExecStartPre=/bin/sleep 3
ExecStart=/bin/sh -c 'systemctl show -p Id,ExecMainCode,ExecMainStatus,NoNewPrivileges,ProtectSystem,PrivateTmp,\
CapabilityBoundingSet,User {units} > /var/tmp/probe.txt; \
systemd-analyze security --no-pager {units} >> /var/tmp/probe-security.txt 2>&1; true'
ExecStartPost=/bin/systemctl poweroff --no-block

[Install]
WantedBy=multi-user.target
"""


def test_units_pass_systemd_analyze_verify(converged: Converged) -> None:
    """systemd-analyze verify accepts both units in the converged root."""
    paths = [f"/etc/systemd/system/{u}" for u in UNITS]
    result = subprocess.run(
        ["chroot", str(converged.root), "systemd-analyze", "verify", "--man=no", *paths],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_units_start_sandboxed_in_nspawn(converged: Converged) -> None:
    """Booted with systemd-nspawn -b, systemd sets up each unit's sandbox and execs it as the appliance user.

    The venv holds the wheel without its dependencies (the offline wheelhouse is GBs), so the programs exit after
    the exec; what this proves is that the sandbox (user, namespaces, ReadWritePaths, capabilities) starts.
    """
    if shutil.which("systemd-nspawn") is None:
        pytest.fail("systemd-nspawn is missing: install systemd-container (scripts/system-deps.sh)")
    root = converged.root
    units = " ".join(UNITS)
    (root / "etc/systemd/system/molecule-probe.service").write_text(PROBE.format(units=units))
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(exist_ok=True)
    link = wants / "molecule-probe.service"
    if not link.exists():
        link.symlink_to("/etc/systemd/system/molecule-probe.service")
    # No network in the container: do not wait two minutes for network-online.target.
    wait_online = root / "etc/systemd/system/systemd-networkd-wait-online.service"
    if not wait_online.is_symlink():
        wait_online.symlink_to("/dev/null")
    boot = subprocess.run(
        ["systemd-nspawn", "--register=no", "--keep-unit", "--private-network", "-q", "-b", "-D", str(root)],
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )
    probe = root / "var/tmp/probe.txt"
    if not probe.exists():
        pytest.fail(f"the container did not reach the probe (rc {boot.returncode}): {boot.stdout[-3000:]}")
    blocks = [b for b in probe.read_text().split("\n\n") if b.strip()]
    shown = {}
    for block in blocks:
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        shown[props["Id"]] = props
    for unit in UNITS:
        props = shown[unit]
        # systemd's own set-up failures (namespaces, capabilities, user, paths) are exit statuses 200-245.
        status = int(props["ExecMainStatus"] or 0)
        assert not 200 <= status <= 245, f"{unit}: systemd could not set up the sandbox (status {status})"
        assert props["User"] == "appliance"
        assert props["NoNewPrivileges"] == "yes"
        assert props["ProtectSystem"] == "strict"
        assert props["PrivateTmp"] == "yes"
        assert props["CapabilityBoundingSet"] == ""
    security = (root / "var/tmp/probe-security.txt").read_text()
    assert "Overall exposure level" in security
