"""The Molecule scenario `single-node`: converge, idempotence, check mode and verify over the chroot connection."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.ansible.conftest import Converged

pytestmark = [pytest.mark.ansible, pytest.mark.slow]


def test_single_node_converge_idempotence_check_verify(converged: Converged) -> None:
    """All four actions succeed: a second converge and a check-mode run report no change, verify passes."""
    out = converged.output()
    assert converged.rc == 0, out[-8000:]
    for action in ("converge", "idempotence", "check", "verify"):
        assert f"[single-node > {action}] Executing" in out, action
    recaps = re.findall(r"node1\s+: ok=(\d+)\s+changed=(\d+)\s+unreachable=0\s+failed=(\d+)", out)
    assert len(recaps) >= 4, recaps  # converge, idempotence, check, verify
    converge, idempotence, check = recaps[0], recaps[1], recaps[2]
    assert int(converge[0]) > 80, "the converge ran too few tasks: roles were skipped"
    assert idempotence[1] == "0" and check[1] == "0", recaps
    assert all(r[2] == "0" for r in recaps)


def test_no_secret_reaches_the_log(converged: Converged) -> None:
    """The test passphrases, the LUKS recovery passphrases, the gateway's Redis password and the TLS key never appear
    in Molecule's output."""
    out = converged.output()
    for secret in (
        "molecule-models-passphrase-0001",
        "molecule-audit-recovery-000001",
        "molecule-redis-password-0000000001",
    ):
        assert secret not in out
    key_pem = Path(converged.env["MOLECULE_GATEWAY_TLS_KEY"]).read_text()
    key_lines = [line for line in key_pem.splitlines() if line and not line.startswith("-----")]
    assert key_lines and not any(line in out for line in key_lines)


def test_nvidia_skips_without_gpu(converged: Converged) -> None:
    """On a host without an NVIDIA GPU the nvidia role says so and installs no driver."""
    assert "has no NVIDIA GPU (no PCI device with vendor 0x10de)" in converged.output()
    assert not (converged.root / "etc/cdi/nvidia.yaml").exists()
    assert not (converged.root / "usr/bin/nvidia-smi").exists()
