"""LUKS volumes made by the luks role on loop devices: LUKS2, argon2id, two keyslots, passphrases that work."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.ansible.conftest import Converged

pytestmark = [pytest.mark.ansible, pytest.mark.slow]

PASSPHRASES = {"models": "molecule-models-passphrase-0001", "audit": "molecule-audit-passphrase-00001"}
RECOVERY = {"models": "molecule-models-recovery-00001", "audit": "molecule-audit-recovery-000001"}


def _test_passphrase(device: str, passphrase: str, slot: int | None = None) -> int:
    args = ["cryptsetup", "open", "--test-passphrase", "--key-file", "-", device]
    if slot is not None:
        args[3:3] = ["--key-slot", str(slot)]
    return subprocess.run(args, input=passphrase.encode(), capture_output=True, timeout=60).returncode


@pytest.mark.parametrize("volume", ["models", "audit"])
def test_luks2_argon2id_with_two_keyslots(converged: Converged, volume: str) -> None:
    """The header is LUKS2 with aes-xts-plain64, keyslots 0 and 1 use argon2id, and the label names the volume."""
    dump = subprocess.run(
        ["cryptsetup", "luksDump", converged.loops[volume]], check=True, capture_output=True, text=True
    ).stdout
    assert "Version:       \t2" in dump
    assert f"appliance-{volume}" in dump
    assert "cipher: aes-xts-plain64" in dump
    keyslots = dump.split("Keyslots:")[1].split("Tokens:")[0]
    assert "  0: luks2" in keyslots and "  1: luks2" in keyslots and "  2: luks2" not in keyslots
    assert keyslots.count("PBKDF:      argon2id") == 2


@pytest.mark.parametrize("volume", ["models", "audit"])
def test_passphrases_open_their_keyslots_and_nothing_else_does(converged: Converged, volume: str) -> None:
    """The primary passphrase opens slot 0, the recovery one slot 1, a wrong one nothing."""
    device = converged.loops[volume]
    assert _test_passphrase(device, PASSPHRASES[volume], slot=0) == 0
    assert _test_passphrase(device, RECOVERY[volume], slot=1) == 0
    assert _test_passphrase(device, RECOVERY[volume], slot=0) != 0
    assert _test_passphrase(device, "not-the-passphrase-at-all-0000") != 0


def test_crypttab_and_fstab_name_the_volumes(converged: Converged) -> None:
    """crypttab maps luks-<name> to the container's UUID (noauto: Vault-sourced), fstab mounts it nodev,noexec."""
    crypttab = (converged.root / "etc/crypttab").read_text()
    fstab = (converged.root / "etc/fstab").read_text()
    for volume, device in converged.loops.items():
        uuid = subprocess.run(["cryptsetup", "luksUUID", device], check=True, capture_output=True, text=True)
        assert f"luks-{volume} UUID={uuid.stdout.strip()} none luks,discard,noauto" in crypttab
        assert f"/dev/mapper/luks-{volume} " in fstab
    assert "nodev,nosuid,noexec" in fstab


def test_open_the_volume(converged: Converged) -> None:
    """cryptsetup open maps the volume with its passphrase (needs device-mapper)."""
    if not os.path.exists("/dev/mapper/control"):
        pytest.skip("no device-mapper in this kernel (/dev/mapper/control is missing): cryptsetup open cannot map")
    if "device-mapper" not in Path("/proc/devices").read_text():
        pytest.skip("no device-mapper in this kernel (/dev/mapper/control exists but /proc/devices lists no dm)")
    device = converged.loops["models"]
    name = f"appliance-test-{os.getpid()}"
    opened = subprocess.run(
        ["cryptsetup", "open", "--key-file", "-", device, name],
        input=PASSPHRASES["models"].encode(),
        capture_output=True,
        timeout=60,
    )
    try:
        assert opened.returncode == 0, opened.stderr
        assert os.path.exists(f"/dev/mapper/{name}")
    finally:
        subprocess.run(["cryptsetup", "close", name], check=False)
