"""The vault role's configure step against a real OpenBao dev server (no chroot): it gives each audit writer's
AppRole an identity whose metadata the templated audit-writer policy reads, idempotently, so each writer signs
audit checkpoints only with its own key."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.ansible.conftest import ANSIBLE_DIR, BIN, ansible_env
from tests.fixtures.openbao import OpenBaoServer, _shutdown, start_openbao

pytestmark = [pytest.mark.ansible, pytest.mark.openbao, pytest.mark.slow]  # two ansible runs: ~3 min on 2 cores

hvac = pytest.importorskip("hvac")

PLAY = """\
- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - ansible.builtin.include_role:
        name: vault
        tasks_from: configure
"""


@pytest.fixture(scope="module")
def configured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[OpenBaoServer, list[str]]]:
    """A dev OpenBao configured twice by the role's configure step; the PLAY RECAP lines of both runs."""
    server = start_openbao()
    play = tmp_path_factory.mktemp("vault-configure") / "play.yml"
    play.write_text(PLAY)
    extra = {
        "vault_configure_addr": server.addr,
        "vault_admin_token": server.root_token,
        "vault_tls_enabled": False,
        "vault_flavor": "openbao",
        "vault_tls_dir": "/nonexistent",
        "ansible_python_interpreter": sys.executable,
    }
    env = ansible_env(ANSIBLE_ROLES_PATH=str(ANSIBLE_DIR / "roles"), ANSIBLE_LOCALHOST_WARNING="False")
    recaps = []
    try:
        for _ in range(2):
            run = subprocess.run(
                [str(BIN / "ansible-playbook"), str(play), "-e", json.dumps(extra)],
                env=env,
                capture_output=True,
                text=True,
                timeout=300,
                cwd=Path(play).parent,
            )
            assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
            recaps.append(run.stdout.split("PLAY RECAP", 1)[-1])
        yield server, recaps
    finally:
        _shutdown(server)


def _login(server: OpenBaoServer, role: str) -> object:
    root = server.client()
    role_id = root.auth.approle.read_role_id(role)["data"]["role_id"]
    secret_id = root.auth.approle.generate_secret_id(role)["data"]["secret_id"]
    client = hvac.Client(url=server.addr, timeout=10)
    client.auth.approle.login(role_id=role_id, secret_id=secret_id)
    return client


def test_configure_is_idempotent(configured: tuple[OpenBaoServer, list[str]]) -> None:
    """The second run of the configure step changes nothing (entities and aliases included)."""
    _, recaps = configured
    assert "changed=0" not in recaps[0]
    assert "changed=0" in recaps[1] and "failed=0" in recaps[1]


@pytest.mark.parametrize("writer", ["gateway", "registry", "trainer"])
def test_each_writer_signs_only_with_its_own_key(configured: tuple[OpenBaoServer, list[str]], writer: str) -> None:
    """A writer's AppRole signs with appliance-audit-signing-<writer> and is refused every other writer's key and
    the old shared one."""
    server, _ = configured
    client = _login(server, f"appliance-{writer}")
    transit = client.secrets.transit  # type: ignore[attr-defined]
    assert transit.sign_data(f"appliance-audit-signing-{writer}", "aGVsbG8=")["data"]["signature"].startswith("vault:")
    for other in {"gateway", "registry", "trainer"} - {writer}:
        with pytest.raises(hvac.exceptions.Forbidden):
            transit.sign_data(f"appliance-audit-signing-{other}", "aGVsbG8=")
    with pytest.raises(hvac.exceptions.Forbidden):
        transit.sign_data("appliance-audit-signing", "aGVsbG8=")
