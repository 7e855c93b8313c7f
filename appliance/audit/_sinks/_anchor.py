"""The purge anchor of a chain (``anchor.json`` beside its segments, or a row): what a purge left behind.

Beside the sinks that store it; the retention job (``_retention``) writes it, the sinks and verification read it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from appliance.errors import IntegrityViolation

__all__ = ["Anchor", "read_anchor"]


@dataclass(frozen=True)
class Anchor:
    """The last purged record of a chain: the first remaining record must follow it."""

    writer_id: str
    seq: int
    hash: str
    purged_at: str
    signature: str


def read_anchor(path: Path) -> Anchor | None:
    """The anchor stored at path, None when there is none; ``IntegrityViolation`` when it is unreadable."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(raw)
        return Anchor(
            writer_id=str(data["writer_id"]),
            seq=int(data["seq"]),
            hash=str(data["hash"]),
            purged_at=str(data["purged_at"]),
            signature=str(data["signature"]),
        )
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:  # 1e999; nested too deep
        raise IntegrityViolation(f"audit anchor {path.name} is malformed") from exc
