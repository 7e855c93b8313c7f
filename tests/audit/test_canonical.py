"""The record's bytes: one hash rule an independent verifier can apply, and canonical event bodies."""

from __future__ import annotations

import hashlib
import json

from appliance.audit._canonical import GENESIS_HASH, build_line, canonical_json, split_line
from appliance.audit._schema import AuditEvent, validate_event
from tests.audit.conftest import make_event


def test_hash_is_every_byte_before_the_hash_field() -> None:
    """An independent verifier needs only: SHA-256 of the line up to ',"hash":"' equals the stored hash."""
    body = validate_event(make_event())
    line, digest = build_line(7, GENESIS_HASH, "node-1", "e-1", "2026-01-01T00:00:00.000000Z", body)
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    raw = line.rstrip(b"\n")
    assert hashlib.sha256(raw[: raw.rindex(b',"hash":"')]).hexdigest() == digest
    record = json.loads(raw)
    assert list(record)[:5] == ["seq", "prev_hash", "writer_id", "event_id", "time"] and list(record)[-1] == "hash"
    assert record["seq"] == 7 and record["hash"] == digest and record["tokens"] == {"generated": 34, "prompt": 12}
    seq, prev, stored, hashed = split_line(raw) or (0, "", "", b"")
    assert (seq, prev, stored) == (7, GENESIS_HASH, digest) and hashlib.sha256(hashed).hexdigest() == digest


def test_body_is_canonical_json() -> None:
    """The validated body is exactly canonical JSON (sorted keys, compact) of the event, whatever the key order."""
    event = make_event(details={"zeta": 1, "alpha": "x"})
    reordered = dict(reversed(list(event.items())))
    body = validate_event(event)
    assert body == validate_event(reordered)
    assert body == canonical_json(AuditEvent.model_validate(event).model_dump(mode="json"))
    assert body.index(b'"alpha"') < body.index(b'"zeta"')


def test_malformed_lines_are_not_split() -> None:
    """split_line refuses lines that are not records, so the verifier reports them instead of guessing."""
    assert split_line(b"not a record") is None
    assert split_line(b'{"seq":1,"prev_hash":"' + b"0" * 64 + b'"}') is None
