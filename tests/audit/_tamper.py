"""What an attacker with write access to the files does: edit, re-hash, re-link, delete, reorder, insert, forge."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.audit._canonical import split_line


def read_lines(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def rehash(line: bytes) -> bytes:
    """The line with its hash recomputed over its (changed) content."""
    parts = split_line(line)
    assert parts is not None
    return parts[3] + b',"hash":"' + hashlib.sha256(parts[3]).hexdigest().encode() + b'"}'


def stored_hash(line: bytes) -> bytes:
    return line[-66:-2]


def relink_from(lines: list[bytes], index: int) -> None:
    """Re-hash lines[index] and fix every later prev_hash and hash, as an attacker rewriting the chain would."""
    lines[index] = rehash(lines[index])
    for i in range(index + 1, len(lines)):
        comma = lines[i].find(b",", 7)
        prev = stored_hash(lines[i - 1])
        lines[i] = rehash(lines[i][: comma + 14] + prev + lines[i][comma + 78 :])


def forged_signature(message: bytes) -> str:
    """A well-formed signature by a key that is not the appliance's."""
    raw = Ed25519PrivateKey.generate().sign(message)
    return "ed25519:v1:" + base64.b64encode(raw).decode()
