"""A pushed list copy counts as delivered only by a receipt written after the copy that names exactly its bytes
(``appliance.registry._delivery``); the push with the real rsync is in test_publish_sync.py."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from appliance.registry._delivery import PendingDelivery, await_deliveries

DATA, SIGNATURE = b'[{"name": "triage-v1"}]\n', b'{"signature": "x"}\n'


def _receipt(path: Path, delivered: object, data: bytes = DATA, signature: bytes = SIGNATURE) -> None:
    sha = {"list_sha256": hashlib.sha256(data).hexdigest(), "signature_sha256": hashlib.sha256(signature).hexdigest()}
    path.write_text(json.dumps({"node": "gpu2", "delivered": delivered, **sha}))


def _pending(tmp_path: Path, name: str = "gpu2") -> PendingDelivery:
    """A copy written now: its time is its signature file's mtime, on the file system's clock (as _reach takes it)."""
    signature = tmp_path / f"{name}.sig"
    signature.write_bytes(SIGNATURE)
    return PendingDelivery(name, "vllm", tmp_path / f"{name}.json", DATA, SIGNATURE, signature.stat().st_mtime_ns)


def test_only_a_newer_receipt_naming_these_bytes_counts(tmp_path: Path) -> None:
    """No receipt, an older one, one about other bytes, a malformed or oversized one: not yet; a newer one naming
    these bytes: delivered, or failed when the push says so (only ``true`` is delivered)."""
    receipt = tmp_path / "gpu2.json"
    _receipt(receipt, True)
    old = time.time_ns() - 10**9
    os.utime(receipt, ns=(old, old))
    pending = _pending(tmp_path)
    assert pending.state() is None  # the same bytes, pushed before this copy
    _receipt(receipt, True, data=b"[]\n")
    assert pending.state() is None
    receipt.write_text("{not json")
    assert pending.state() is None
    receipt.write_text(json.dumps({"pad": "x" * 5000}))
    assert pending.state() is None
    _receipt(receipt, "true")
    assert pending.state() is False
    _receipt(receipt, False)
    assert pending.state() is False
    _receipt(receipt, True)
    assert pending.state() is True


def test_await_reports_each_undelivered_copy_in_order_within_one_deadline(tmp_path: Path) -> None:
    """Delivered copies are not reported; a failed push at once, a missing receipt at the deadline, all together
    under one deadline, in the order the copies were written."""
    late, failed, delivered = (_pending(tmp_path, n) for n in ("gpu1", "gpu3", "gpu2"))
    time.sleep(0.01)
    _receipt(tmp_path / "gpu3.json", False)
    _receipt(tmp_path / "gpu2.json", True)
    started = time.monotonic()
    results = await_deliveries([late, failed, delivered], timeout_s=0.6)
    assert 0.6 <= time.monotonic() - started < 2.0
    assert [(r.replica, r.outcome, r.reason) for r in results] == [
        ("gpu1", "failed", "its list did not reach it: no delivery to its host within 0.6 s"),
        ("gpu3", "failed", "its list did not reach it: the push to its host failed"),
    ]
    assert await_deliveries([delivered], timeout_s=30) == []
