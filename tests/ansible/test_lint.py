"""ansible-lint (production profile) and ansible-playbook --syntax-check over the provisioning code."""

from __future__ import annotations

import subprocess

import pytest

from tests.ansible.conftest import ANSIBLE_DIR, BIN, ansible_env

pytestmark = pytest.mark.ansible


def test_ansible_lint_production_profile_clean() -> None:
    """ansible-lint with the production profile reports no violation in roles, playbooks and molecule files."""
    result = subprocess.run(
        [str(BIN / "ansible-lint"), "--profile", "production", "--nocolor"],
        cwd=ANSIBLE_DIR,
        env=ansible_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "Profile 'production' was required, and it passed" in result.stdout + result.stderr


@pytest.mark.parametrize("inventory", ["inventories/single-node/hosts.yml", "inventories/hospital/hosts.yml"])
def test_site_syntax_check(inventory: str) -> None:
    """site.yml passes --syntax-check against both example inventories, which parse and hold the four groups."""
    env = ansible_env()
    result = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", inventory, "site.yml", "--syntax-check"],
        cwd=ANSIBLE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    graph = subprocess.run(
        [str(BIN / "ansible-inventory"), "-i", inventory, "--graph"],
        cwd=ANSIBLE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    for group in ("@vault:", "@gateway:", "@gpu_nodes:"):
        assert group in graph, graph
