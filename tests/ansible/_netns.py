"""Network namespaces for the firewall tests: create them (skipping where the sandbox cannot), start listeners and
probes in them, delete them at the end. Used by test_network, test_publish_sync and test_publish_sync_ssh."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator

import pytest

__all__ = ["ip", "listening", "namespaces", "ns", "probe", "veth"]

LISTENER = """
import socket, sys, selectors
sel = selectors.DefaultSelector()
for spec in sys.argv[1:]:
    host, port = spec.rsplit(":", 1)
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(port))); s.listen(16); sel.register(s, selectors.EVENT_READ)
print("ready", flush=True)
while True:
    for key, _ in sel.select():
        conn, _ = key.fileobj.accept(); conn.close()
"""
PROBE = """
import socket, sys
src, dst, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(); s.settimeout(1.0); s.bind((src, 0))
try:
    s.connect((dst, port)); print("pass")
except OSError:
    print("blocked")
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def ns(name: str, *args: str) -> None:
    """``ip`` inside namespace ``name``."""
    ip("-n", name, *args)


@contextlib.contextmanager
def namespaces(*names: str) -> Iterator[None]:
    """The namespaces, each with its loopback up; deleted on exit. Skips the test where they cannot be made."""
    created: list[str] = []
    try:
        for name in names:
            try:
                ip("netns", "add", name)
            except subprocess.CalledProcessError as exc:
                pytest.skip(f"cannot create network namespaces here: {exc.stderr.decode().strip()}")
            created.append(name)
            ns(name, "link", "set", "lo", "up")
        yield
    finally:
        for name in created:
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def veth(tag: str, left: str, right: str, name: str = "vlan42") -> None:
    """A veth pair between namespaces ``left`` and ``right``, called ``name`` on both sides."""
    ip("link", "add", tag, "netns", left, "type", "veth", "peer", "name", name, "netns", right)
    ns(left, "link", "set", tag, "name", name)


@contextlib.contextmanager
def listening(name: str, specs: list[str]) -> Iterator[subprocess.Popen[str]]:
    """TCP listeners (``host:port``) in namespace ``name`` that accept and close; stopped on exit."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", name, sys.executable, "-c", LISTENER, *specs], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def probe(name: str, src: str, dst: str, port: int) -> str:
    """ "pass" or "blocked": a TCP connect from ``src`` in namespace ``name`` to ``dst:port``."""
    out = subprocess.run(
        ["ip", "netns", "exec", name, sys.executable, "-c", PROBE, src, dst, str(port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out.stdout.strip() or out.stderr.strip()
