"""Fail-closed: a full or read-only file system, or a key service that is down, makes ``record`` fail and nothing
is acknowledged; the appliance cannot open an audit log it cannot write. Real tmpfs and bind mounts, real OpenBao."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from appliance.audit import digest, open_audit_log
from appliance.audit._sinks.files import FileStore
from appliance.audit._verify import verify_chain
from appliance.config import Settings, load_settings
from appliance.errors import AuditUnavailable, KeyUnavailable
from appliance.keys import AUDIT_SIGNING, LocalKeyService
from appliance.protocols import AuditReceipt
from tests.audit.conftest import make_event
from tests.conftest import REPO_ROOT
from tests.fixtures.openbao import OpenBaoServer


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB tmpfs, unmounted after the test (skips where mounting is not allowed)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        _mount("-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mnt))
    except (subprocess.CalledProcessError, FileNotFoundError):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)


def _settings_on(data_dir: Path, **audit: object) -> Settings:
    settings = load_settings(data_dir=data_dir, policies_dir=REPO_ROOT / "policies")
    return settings.model_copy(update={"audit": settings.audit.model_copy(update=audit)})


def _stored_hashes(settings: Settings) -> dict[int, str]:
    """seq -> hash of every whole record on disk (a torn tail not yet cut is skipped)."""
    found = {}
    for _, data in FileStore(settings.audit_dir).read("node-1"):
        for line in data.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            found[record["seq"]] = record["hash"]
    return found


def _assert_acknowledged_present(settings: Settings, receipts: list[AuditReceipt]) -> None:
    stored = _stored_hashes(settings)
    assert all(stored.get(r.seq) == r.record_hash for r in receipts)


def test_full_file_system_fails_closed_and_recovers(small_fs: Path, tmp_path: Path) -> None:
    """On a full tmpfs record raises AuditUnavailable (sync and async); after space is freed the chain goes on."""
    settings = _settings_on(small_fs / "var")
    keys = LocalKeyService(tmp_path / "keystore")
    writer = open_audit_log(settings, keys)
    receipts = [writer.record_sync(make_event())]
    stat = os.statvfs(small_fs)
    filler = small_fs / "filler"
    filler.write_bytes(b"\0" * (stat.f_bavail * stat.f_frsize - 24 * 1024))
    with pytest.raises(AuditUnavailable):
        for _ in range(2000):
            receipts.append(writer.record_sync(make_event()))
    with pytest.raises(AuditUnavailable):
        writer.check_writable()

    async def burst() -> list[object]:
        return await asyncio.gather(*(writer.record(make_event()) for _ in range(50)), return_exceptions=True)

    outcomes = asyncio.run(burst())
    assert all(isinstance(o, AuditUnavailable) for o in outcomes), "a record was acknowledged on a full disk"
    _assert_acknowledged_present(settings, receipts)
    filler.unlink()
    receipts.append(writer.record_sync(make_event()))
    writer.close_sync()
    _assert_acknowledged_present(settings, receipts)
    store = FileStore(settings.audit_dir)
    report = verify_chain("node-1", store.read("node-1"), public_keys=keys.public_keys(AUDIT_SIGNING))
    assert report.ok, [str(p) for p in report.problems]
    assert any(r["type"] == "audit.recovered" for _, d in store.read("node-1") for r in map(json.loads, d.splitlines()))


@pytest.fixture
def bind_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory bind-mounted onto itself, so the test can remount it read-only and back."""
    path = tmp_path / "bind"
    path.mkdir()
    try:
        _mount("--bind", str(path), str(path))
    except (subprocess.CalledProcessError, FileNotFoundError):
        pytest.skip("cannot bind-mount here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def test_read_only_store_refuses_to_open(bind_dir: Path, tmp_path: Path) -> None:
    """open_audit_log on a read-only file system raises AuditUnavailable: the appliance must not start."""
    (bind_dir / "var").mkdir()
    _mount("-o", "remount,bind,ro", str(bind_dir))
    with pytest.raises(AuditUnavailable):
        open_audit_log(_settings_on(bind_dir / "var"), LocalKeyService(tmp_path / "keystore"))


def test_read_only_while_running_fails_closed(bind_dir: Path, tmp_path: Path) -> None:
    """When the store turns read-only, record and the readiness probe fail; back to read-write, recording resumes."""
    settings = _settings_on(bind_dir / "var", segment_max_records=4)
    keys = LocalKeyService(tmp_path / "keystore")
    writer = open_audit_log(settings, keys)
    receipts = [writer.record_sync(make_event()) for _ in range(2)]  # fills the first segment (start, checkpoint)
    _mount("-o", "remount,bind,ro", str(bind_dir))
    try:
        with pytest.raises(AuditUnavailable):
            writer.check_writable()
        with pytest.raises(AuditUnavailable):
            writer.record_sync(make_event())
        with pytest.raises(AuditUnavailable):
            asyncio.run(writer.record(make_event()))
    finally:
        _mount("-o", "remount,bind,rw", str(bind_dir))
    receipts.append(writer.record_sync(make_event()))
    writer.close_sync()
    _assert_acknowledged_present(settings, receipts)
    report = verify_chain(
        "node-1", FileStore(settings.audit_dir).read("node-1"), public_keys=keys.public_keys(AUDIT_SIGNING)
    )
    assert report.ok, report.problems


@pytest.mark.openbao
def test_key_service_down_fails_closed(openbao_private: OpenBaoServer, settings: Settings) -> None:
    """With OpenBao stopped, digests and due checkpoints fail, so record fails; a new log refuses to open."""
    from appliance.keys._vault import VaultKeyService

    keys = VaultKeyService(openbao_private.client())
    settings = settings.model_copy(update={"audit": settings.audit.model_copy(update={"checkpoint_every": 5})})
    writer = open_audit_log(settings, keys)
    prompt_digest = digest(keys, "a prompt")
    receipts = [writer.record_sync(make_event(digests={"prompt": prompt_digest, "output": None}))]
    openbao_private.stop()
    with pytest.raises(KeyUnavailable):
        digest(keys, "another prompt")
    with pytest.raises(AuditUnavailable):
        for _ in range(10):  # the fifth record since the last checkpoint needs a signature
            receipts.append(writer.record_sync(make_event()))
    with pytest.raises(AuditUnavailable):
        open_audit_log(settings, keys, writer_id="node-2")
    writer.close_sync()
    _assert_acknowledged_present(settings, receipts)
    assert len(receipts) < 6
