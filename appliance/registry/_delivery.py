"""Wait until each replica's list copy has reached its host, by the receipt the provisioned push leaves.

The registry host writes a replica's copy of a signed list at its ``list_path``; on another host the replica sees
it only once a push (the ansible ``publish_sync`` role: a systemd path unit per replica runs rsync over SSH) has
delivered it. After each push the push rewrites the replica's ``sync_receipt``: ``{"delivered": true|false,
"list_sha256", "signature_sha256"}``. A copy counts as delivered when a receipt written after the copy names
exactly its bytes and says delivered; one the push reports failed, or no receipt within the deadline, is a
``failed`` replica, never asked to load a list it does not have. The receipt is no trust anchor: the replica's
host checks the list's signature itself (``appliance serve-launch``, the engine's reload).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from appliance.serving import ReplicaReload

__all__ = ["PendingDelivery", "await_deliveries"]

_POLL_S = 0.2
_MAX_RECEIPT_BYTES = 4096


@dataclass(frozen=True)
class PendingDelivery:
    """A replica's list copy just written on this host, which a push must deliver to the replica's host."""

    replica: str
    kind: str
    receipt: Path
    data: bytes
    signature: bytes
    written_ns: int  # the copy's signature mtime: a receipt older than it is about an earlier copy

    def state(self) -> bool | None:
        """True: delivered; False: the push failed for this copy; None: no receipt about this copy yet."""
        try:
            info = self.receipt.stat()
            if info.st_mtime_ns < self.written_ns or info.st_size > _MAX_RECEIPT_BYTES:
                return None
            receipt = json.loads(self.receipt.read_bytes())
        except (OSError, ValueError):  # absent, or replaced while read: look again
            return None
        if not isinstance(receipt, dict):
            return None
        about_this_copy = (
            receipt.get("list_sha256") == hashlib.sha256(self.data).hexdigest()
            and receipt.get("signature_sha256") == hashlib.sha256(self.signature).hexdigest()
        )
        if not about_this_copy:
            return None
        return receipt.get("delivered") is True


def await_deliveries(pending: Sequence[PendingDelivery], timeout_s: float) -> list[ReplicaReload]:
    """Wait (at most ``timeout_s`` for all together) until each copy is delivered; those that are not, as failed,
    in the order of ``pending``."""
    deadline = time.monotonic() + timeout_s
    waiting = list(pending)
    failed: dict[tuple[str, str], ReplicaReload] = {}
    while waiting:
        still: list[PendingDelivery] = []
        for delivery in waiting:
            state = delivery.state()
            if state is False:
                failed[delivery.kind, delivery.replica] = _failed(delivery, "the push to its host failed")
            elif state is None:
                still.append(delivery)
        waiting = still
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(_POLL_S)
    for delivery in waiting:
        failed[delivery.kind, delivery.replica] = _failed(delivery, f"no delivery to its host within {timeout_s:g} s")
    return [failed[d.kind, d.replica] for d in pending if (d.kind, d.replica) in failed]


def _failed(delivery: PendingDelivery, why: str) -> ReplicaReload:
    return ReplicaReload(delivery.replica, delivery.kind, "failed", f"its list did not reach it: {why}")
