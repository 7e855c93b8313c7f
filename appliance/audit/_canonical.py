"""The record's bytes and its hash: one rule, simple enough to re-implement in any language.

A record is one line of UTF-8 JSON with no insignificant whitespace::

    {"seq":N,"prev_hash":"<64 hex>","writer_id":"..","event_id":"..","time":"..",<event fields>,"hash":"<64 hex>"}

The event fields are the validated event's canonical JSON (keys sorted, compact). The hash is
``SHA-256(line[: line.rindex(b',"hash":"')])``: every byte of the record as written, up to its own hash. The
chain: ``prev_hash`` is the previous record's ``hash`` in the same writer's chain (64 zeros for the first record,
or the purge anchor's hash). Verification never re-serialises JSON; it hashes the stored bytes.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = [
    "GENESIS_HASH",
    "HASH_RULE",
    "build_line",
    "canonical_json",
    "parse_line",
    "split_line",
]

GENESIS_HASH = "0" * 64
HASH_RULE = "sha256(line[:rindex(b',\"hash\":\"')]): every byte before the record's own hash field"

_HASH_TAIL = b',"hash":"'  # 9 bytes, then 64 hex, then '"}'
_TAIL_LEN = len(_HASH_TAIL) + 64 + 2
_HEAD = b'{"seq":'


def canonical_json(value: Any) -> bytes:
    """Compact JSON with sorted keys, UTF-8, no NaN/Infinity: the same value always gives the same bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def build_line(seq: int, prev_hash: str, writer_id: str, event_id: str, time: str, body: bytes) -> tuple[bytes, str]:
    """(the record's line including the newline, its hash) for an event body from ``validate_event``."""
    head = (
        f'{{"seq":{seq},"prev_hash":"{prev_hash}","writer_id":"{writer_id}","event_id":"{event_id}","time":"{time}",'
    ).encode()
    hashed = head + body[1:-1]
    digest = hashlib.sha256(hashed).hexdigest()
    return hashed + b',"hash":"' + digest.encode() + b'"}\n', digest


def split_line(line: bytes) -> tuple[int, str, str, bytes] | None:
    """(seq, prev_hash, stored hash, hashed bytes) of a line without its newline, or None when malformed.

    This is the fast path of verification: fixed offsets, no JSON parsing. A line it accepts still has to match
    its hash; anything it rejects is reported as malformed by the caller.
    """
    if len(line) < _TAIL_LEN + 90 or not line.startswith(_HEAD) or line[-_TAIL_LEN:-66] != _HASH_TAIL:
        return None
    comma = line.find(b",", 7, 30)
    if comma < 0 or line[comma : comma + 14] != b',"prev_hash":"' or line[comma + 78 : comma + 80] != b'",':
        return None
    try:
        seq = int(line[7:comma])
        prev_hash = line[comma + 14 : comma + 78].decode("ascii")
        stored = line[-66:-2].decode("ascii")
    except (ValueError, UnicodeDecodeError):
        return None
    if line[-2:] != b'"}':
        return None
    return seq, prev_hash, stored, line[:-_TAIL_LEN]


def record_hash(hashed: bytes) -> str:
    """The SHA-256 hex of a record's hashed bytes (see :func:`split_line`)."""
    return hashlib.sha256(hashed).hexdigest()


def parse_line(line: bytes) -> dict[str, Any]:
    """The record as a dict (slow path: export, show, filters); ValueError when it is not a JSON object."""
    value = json.loads(line)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value
