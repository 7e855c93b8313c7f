"""The Debian bookworm root the Molecule scenarios converge: built once with debootstrap, cached in /var/tmp.

The cache is keyed by a hash of the package list and the suite, so a changed list builds a new root and repeated
runs (and concurrent sessions, through a lock) reuse the same one. Every test run works on a copy.

Beside it, the offline wheelhouse the appliance role installs from (ansible/scripts/wheelhouse.py, what an operator
runs on a connected machine), keyed by pyproject.toml's content.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

SUITE = "bookworm"
CACHE_DIR = Path(os.environ.get("APPLIANCE_ANSIBLE_ROOT_CACHE", "/var/tmp/appliance-ansible-roots"))
REPO = Path(__file__).resolve().parents[2]
WHEELHOUSE_SCRIPT = REPO / "ansible" / "scripts" / "wheelhouse.py"
# Wheelhouses of other pyproject.toml versions unused for this long are removed when a new one is built.
WHEELHOUSE_MAX_IDLE_S = 7 * 86_400

# What the roles install on a real host, preinstalled so that converge needs no network and apt tasks report ok.
PACKAGES = [
    "python3",
    "python3-apt",
    "python3-venv",
    "python3-packaging",
    "python3-cryptography",
    "systemd",
    "systemd-sysv",
    "dbus",
    "libpam-systemd",
    "openssh-server",
    "sudo",
    "auditd",
    "audispd-plugins",
    "chrony",
    "unattended-upgrades",
    "nftables",
    "cryptsetup-bin",
    "cryptsetup",
    "tlog",
    "podman",
    "runc",
    "redis-server",
    "iproute2",
    "ca-certificates",
    "procps",
    "curl",
]


def _mirror() -> str:
    """The Debian mirror this machine's apt uses (sources.list or deb822), else deb.debian.org."""
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            parts = line.split()
            if line.startswith("URIs:") and "security" not in line:
                return parts[1]
            if parts[:1] == ["deb"] and "security" not in line:
                url = next((p for p in parts[1:] if p.startswith("http")), None)
                if url:
                    return url
    return "http://deb.debian.org/debian"


def cache_key() -> str:
    """A short hash of what goes into the root."""
    blob = "\n".join([SUITE, *sorted(PACKAGES), "v1"]).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _missing_packages() -> list[str]:
    return [p for p in ("debootstrap",) if shutil.which(p) is None]


def ensure_root(log: Path | None = None) -> Path:
    """The cached root (built on first use, ~2-4 minutes); never modify it, converge a copy (:func:`copy_root`)."""
    if os.geteuid() != 0:
        raise PermissionError("debootstrap and chroot need root")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    final = CACHE_DIR / f"{SUITE}-{cache_key()}"
    with open(CACHE_DIR / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / ".complete").exists():
            return final
        work = CACHE_DIR / f".build-{cache_key()}"
        shutil.rmtree(work, ignore_errors=True)
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
        try:
            subprocess.run(
                ["debootstrap", "--variant=minbase", "--include=python3,ca-certificates", SUITE, str(work), _mirror()],
                check=True,
                stdout=out,
                stderr=out,
            )
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
            # No daemons start inside the chroot while packages install.
            (work / "usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 101\n")
            (work / "usr/sbin/policy-rc.d").chmod(0o755)
            subprocess.run(
                ["chroot", str(work), "apt-get", "update", "-qq"], check=True, env=env, stdout=out, stderr=out
            )
            subprocess.run(
                ["chroot", str(work), "apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES],
                check=True,
                env=env,
                stdout=out,
                stderr=out,
            )
            subprocess.run(["chroot", str(work), "apt-get", "clean"], check=True, stdout=out, stderr=out)
            (work / "usr/sbin/policy-rc.d").unlink()
            # A machine id and a root password lock, as on an installed host.
            (work / "etc/machine-id").write_text("")
            (work / "etc/hostname").write_text("molecule\n")
            (work / ".complete").write_text(cache_key() + "\n")
            os.rename(work, final)
        finally:
            if log:
                out.close()  # type: ignore[union-attr]
            shutil.rmtree(work, ignore_errors=True)
        return final


def copy_root(src: Path, dest: Path) -> Path:
    """A private copy of the cached root for one test run."""
    subprocess.run(["cp", "-a", "--reflink=auto", str(src), str(dest)], check=True)
    return dest


def wheelhouse_key(pyproject: Path = REPO / "pyproject.toml") -> str:
    """A short hash of pyproject.toml's content (the dependencies) and of the script that downloads them."""
    blob = pyproject.read_bytes() + b"\0" + WHEELHOUSE_SCRIPT.read_bytes() + b"\0v1"
    return hashlib.sha256(blob).hexdigest()[:12]


def ensure_wheelhouse(log: Path | None = None) -> Path:
    """The cached offline wheelhouse of the appliance's runtime dependencies (built on first use).

    Built with ansible/scripts/wheelhouse.py, which takes torch alone first and refuses a CUDA build (this
    machine's pip configuration finds torch==2.13.0+cpu in /opt/wheels). Never modify it: the role copies it.
    """
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    key = wheelhouse_key()
    final = CACHE_DIR / f"wheelhouse-{key}"
    with open(CACHE_DIR / ".wheelhouse.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / "SHA256SUMS").is_file():
            os.utime(final / "SHA256SUMS")  # in use: keeps it from being pruned
            return final
        out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115
        try:
            rc = subprocess.run(
                [sys.executable, str(WHEELHOUSE_SCRIPT), "--out", str(final)],
                stdout=out,
                stderr=out,
                timeout=1800,
            ).returncode
        finally:
            if log:
                out.close()  # type: ignore[union-attr]
        if rc != 0:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            raise RuntimeError(f"{WHEELHOUSE_SCRIPT.name} failed (rc {rc}):\n{tail}")
        for old in CACHE_DIR.glob("wheelhouse-*"):
            sums = old / "SHA256SUMS"
            idle = time.time() - sums.stat().st_mtime if sums.exists() else WHEELHOUSE_MAX_IDLE_S + 1
            if old != final and idle > WHEELHOUSE_MAX_IDLE_S:
                shutil.rmtree(old, ignore_errors=True)
        return final
