"""Crash safety: SIGKILL under load loses no acknowledged record; a torn tail is cut, kept aside and recorded."""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

from appliance.audit import open_audit_log
from appliance.audit._sinks.files import FileStore
from appliance.audit._verify import verify_chain
from appliance.config import Settings
from appliance.keys import AUDIT_SIGNING, LocalKeyService
from tests.audit._tamper import read_lines, write_lines
from tests.audit.conftest import make_event

REPO = Path(__file__).resolve().parents[2]


def _stored(settings: Settings) -> dict[int, dict[str, object]]:
    store = FileStore(settings.audit_dir)
    return {r["seq"]: r for _, data in store.read("node-1") for r in map(json.loads, data.splitlines())}


def _run_and_kill(data_dir: Path, rng: random.Random) -> dict[int, str]:
    """Start a writer process, let it acknowledge records for a random time, SIGKILL it; its acknowledged seqs."""
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.audit._crash_child", str(data_dir)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert child.stdout is not None
    acked: dict[int, str] = {}
    buffer = b""
    deadline: float | None = None
    while True:
        ready, _, _ = select.select([child.stdout], [], [], 0.01)
        if ready:
            chunk = os.read(child.stdout.fileno(), 65536)
            if not chunk:
                break
            buffer += chunk
            if deadline is None:
                deadline = time.monotonic() + rng.uniform(0.0, 0.4)
        if deadline is not None and time.monotonic() >= deadline:
            child.send_signal(signal.SIGKILL)
            break
        assert child.poll() is None, "the writer process died on its own"
    child.wait()
    buffer += child.stdout.read()  # acknowledgements already in the pipe when it died
    child.stdout.close()
    for line in buffer.split(b"\n"):
        parts = line.split()
        if len(parts) == 2:  # a line cut by the kill is not an acknowledgement the parent saw
            acked[int(parts[0])] = parts[1].decode()
    return acked


def test_sigkill_under_load_loses_no_acknowledged_record(settings: Settings, keys: LocalKeyService) -> None:
    """Twelve times: 32 concurrent writers, SIGKILL at a random moment; every acknowledged record survives."""
    rng = random.Random(4)
    keys.public_keys(AUDIT_SIGNING)  # create the keys before the children race for the keystore
    all_acked: dict[int, str] = {}
    for _ in range(12):
        acked = _run_and_kill(settings.data_dir, rng)
        assert acked, "the child acknowledged nothing before the kill"
        all_acked.update(acked)
        stored = _stored(settings)
        missing = [seq for seq, digest in acked.items() if stored.get(seq, {}).get("hash") != digest]
        assert not missing, f"acknowledged but lost: {missing[:10]}"
    writer = open_audit_log(settings, keys)  # recovers whatever the last kill left
    writer.close_sync()
    store = FileStore(settings.audit_dir)
    report = verify_chain("node-1", store.read("node-1"), public_keys=keys.public_keys(AUDIT_SIGNING))
    assert report.ok, [str(p) for p in report.problems[:5]]
    stored = _stored(settings)
    assert all(stored[seq]["hash"] == digest for seq, digest in all_acked.items())
    assert len(all_acked) > 100


def test_torn_tail_is_cut_kept_and_recorded(settings: Settings, keys: LocalKeyService) -> None:
    """A half-written last record is cut on open, kept aside as .torn-1, and an audit.recovered event says so."""
    writer = open_audit_log(settings, keys)
    receipts = [writer.record_sync(make_event()) for _ in range(5)]
    writer.close_sync()
    segment = FileStore(settings.audit_dir).segments("node-1")[-1][1]
    whole = segment.stat().st_size
    torn = b'{"seq":99,"prev_hash":"' + b"a" * 40  # a record cut mid-write (power loss)
    with segment.open("ab") as handle:
        handle.write(torn)
    writer = open_audit_log(settings, keys)
    writer.close_sync()
    kept = segment.with_name(segment.name + ".torn-1")
    assert kept.read_bytes() == torn
    records = list(_stored(settings).values())
    recovered = [r for r in records if r["type"] == "audit.recovered"]
    assert len(recovered) == 1 and recovered[0]["details"]["truncated_bytes"] == len(torn)
    assert segment.read_bytes()[whole : whole + 1] == b"{" and torn not in segment.read_bytes()
    stored = _stored(settings)
    assert all(stored[r.seq]["hash"] == r.record_hash for r in receipts)
    report = verify_chain(
        "node-1", FileStore(settings.audit_dir).read("node-1"), public_keys=keys.public_keys(AUDIT_SIGNING)
    )
    assert report.ok, report.problems


def test_garbage_after_power_loss_is_cut(settings: Settings, keys: LocalKeyService) -> None:
    """Zero bytes and a complete-looking but invalid last line (power loss) are cut; the chain continues."""
    writer = open_audit_log(settings, keys)
    writer.record_sync(make_event())
    writer.close_sync()
    segment = FileStore(settings.audit_dir).segments("node-1")[-1][1]
    with segment.open("ab") as handle:
        handle.write(b"\x00" * 300 + b"\n" + b'{"seq":7,"prev_hash":"x"}\n')
    writer = open_audit_log(settings, keys)
    receipt = writer.record_sync(make_event())
    writer.close_sync()
    assert receipt.seq == 9  # 5 records before the cut; then recovered, start, checkpoint, this one
    report = verify_chain(
        "node-1", FileStore(settings.audit_dir).read("node-1"), public_keys=keys.public_keys(AUDIT_SIGNING)
    )
    assert report.ok, report.problems


def test_crash_between_rotation_and_first_record(settings: Settings, keys: LocalKeyService) -> None:
    """An empty segment left by a crash right after rotation is reused when it is next, removed otherwise."""
    from appliance.audit._sinks.files import segment_name

    settings = settings.model_copy(update={"audit": settings.audit.model_copy(update={"segment_max_records": 4})})
    writer = open_audit_log(settings, keys)
    writer.record_sync(make_event())
    writer.close_sync()  # start, checkpoint, event, stop | checkpoint: seq 1-4 then 5
    store = FileStore(settings.audit_dir)
    head = max(_stored(settings))
    directory = settings.audit_dir / "node-1"
    (directory / segment_name(head + 1)).touch()  # created and fsynced, then the crash
    (directory / segment_name(head + 50)).touch()  # an impossible orphan
    writer = open_audit_log(settings, keys)
    writer.close_sync()
    names = [p.name for _, p in store.segments("node-1")]
    assert segment_name(head + 1) in names and segment_name(head + 50) not in names
    assert (directory / segment_name(head + 1)).stat().st_size > 0
    report = verify_chain("node-1", store.read("node-1"), public_keys=keys.public_keys(AUDIT_SIGNING))
    assert report.ok, report.problems


def test_end_without_stop_is_recorded_on_the_next_start(settings: Settings, keys: LocalKeyService) -> None:
    """A chain that does not end with audit.stop (a crash, or records cut off at a line boundary, which leaves no
    torn bytes) gets an audit.recovered 'resume' record when a writer next takes it: signing the end again on
    start no longer hides the cut; a clean close and reopen records none."""
    for _ in range(2):
        writer = open_audit_log(settings, keys)
        for i in range(15):
            writer.record_sync(make_event(request_id=f"r-{i}"))
        writer.close_sync()
    assert not [r for r in _stored(settings).values() if r["type"] == "audit.recovered"]
    (segment,) = [p for _, p in FileStore(settings.audit_dir).segments("node-1")]
    write_lines(segment, read_lines(segment)[:30])
    writer = open_audit_log(settings, keys)
    writer.close_sync()
    resumed = [r for r in _stored(settings).values() if r["type"] == "audit.recovered"]
    assert [(r["action"], r["details"]) for r in resumed] == [("resume", {"last_seq": 30})]
