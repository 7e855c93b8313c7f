"""fsync/fdatasync failing with EIO under a real gateway process: no status line before the request record is
durable (503, not 200 and then an error event), and /readyz reports the audit writer unready from the failed sync
until a sync succeeds again.

The fault is real: a tiny LD_PRELOAD library (built here with the system C compiler) makes the process's
``fsync`` and ``fdatasync`` fail with EIO while a flag file exists; the gateway (``_fault_child``: the real audit
writer on segment files, the real local key service, the shipped fake backend) runs under it in its own process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from appliance.audit import verify_store
from appliance.audit._sinks.files import FileStore
from appliance.config import load_settings
from appliance.keys import LocalKeyService
from tests.conftest import REPO_ROOT
from tests.fixtures.oidc import free_port
from tests.fixtures.processes import stop_process
from tests.gateway.conftest import IdP

SHIM_SOURCE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

/* fsync and fdatasync fail with EIO while the file named by $SYNC_FAIL_FLAG exists. */
static int failing(void) {
    const char *flag = getenv("SYNC_FAIL_FLAG");
    return flag != NULL && access(flag, F_OK) == 0;
}

int fdatasync(int fd) {
    if (failing()) { errno = EIO; return -1; }
    return (int)syscall(SYS_fdatasync, fd);
}

int fsync(int fd) {
    if (failing()) { errno = EIO; return -1; }
    return (int)syscall(SYS_fsync, fd);
}
"""
BODY = {"inputs": "a patient note", "parameters": {"max_new_tokens": 3}}
STREAM = "/v1/inference/adapter/triage/production/stream"


@pytest.fixture(scope="module")
def sync_shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The LD_PRELOAD library, compiled with the system C compiler (gcc and libc6-dev: scripts/system-deps.sh)."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.fail("no C compiler (cc or gcc) to build the fsync fault library: apt-get install gcc libc6-dev")
    root = tmp_path_factory.mktemp("shim")
    (root / "failsync.c").write_text(SHIM_SOURCE)
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(root / "failsync.so"), str(root / "failsync.c")],
        check=True,
        capture_output=True,
    )
    return root / "failsync.so"


@dataclass
class FaultyGateway:
    url: str
    flag: Path
    data_dir: Path
    bearer: dict[str, str]

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(self.url + path, json=body, headers=self.bearer, timeout=30)

    def ready(self) -> dict[str, Any]:
        return dict(httpx.get(self.url + "/readyz", timeout=30).json())


@pytest.fixture
def gateway(sync_shim: Path, data_dir: Path, tmp_path: Path, idp: IdP) -> Iterator[FaultyGateway]:
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "access.yaml").write_text((REPO_ROOT / "policies" / "access.yaml").read_text())
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(idp.jwks))
    flag, port = tmp_path / "fail-sync", free_port()
    env = {
        **os.environ,
        "LD_PRELOAD": str(sync_shim),
        "SYNC_FAIL_FLAG": str(flag),
        "PYTHONPATH": str(REPO_ROOT),
    }
    log = (tmp_path / "gateway.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.gateway._fault_child", str(data_dir), str(policies), str(jwks), str(port)],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the gateway did not start:\n{(tmp_path / 'gateway.log').read_text()[-3000:]}")
            time.sleep(0.1)
        yield FaultyGateway(url, flag, data_dir, {"Authorization": f"Bearer {idp.token()}"})
    finally:
        flag.unlink(missing_ok=True)
        stop_process(proc)
        log.close()


def _events(r: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(p[5:]) for p in r.text.split("\n\n") if p.startswith("data:")]


def test_failing_fsync_is_a_503_before_the_status_line_and_unready_until_a_sync_succeeds(
    gateway: FaultyGateway,
) -> None:
    """While fsync/fdatasync fail with EIO a stream (and a plain request) is a 503 AUDIT_UNAVAILABLE with no event,
    and /readyz says the audit writer is not ready (twice: free space and permissions are fine); once syncs succeed
    again /readyz is ready before any request, streams are served, and the chain verifies."""
    r = gateway.post(STREAM, BODY)
    assert r.status_code == 200 and _events(r)[-1]["generated_text"]
    assert gateway.ready()["checks"]["audit"] is True

    gateway.flag.touch()
    r = gateway.post(STREAM, BODY)
    assert r.status_code == 503 and r.json()["error_type"] == "AUDIT_UNAVAILABLE", r.text
    assert "data:" not in r.text
    r = gateway.post("/v1/inference/adapter/triage/production", BODY)
    assert r.status_code == 503 and r.json()["error_type"] == "AUDIT_UNAVAILABLE"
    for _ in range(2):
        ready = gateway.ready()
        assert ready["ready"] is False and ready["checks"]["audit"] is False, ready

    gateway.flag.unlink()
    ready = gateway.ready()
    assert ready["ready"] is True and ready["checks"]["audit"] is True, ready
    r = gateway.post(STREAM, BODY)
    assert r.status_code == 200 and _events(r)[-1]["generated_text"]

    settings = load_settings(data_dir=gateway.data_dir)
    report = verify_store(
        FileStore(settings.audit_dir), LocalKeyService(settings.keystore_path).public_keys("audit-signing")
    )
    assert report.ok, report.all_problems
