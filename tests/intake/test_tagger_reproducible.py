"""The tagger's training notes, and so the shipped CRF weights, do not depend on the interpreter's hash seed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_DIGEST = (
    "import hashlib\n"
    "from appliance.intake._tagger._notes import generate_notes\n"
    "h = hashlib.sha256()\n"
    "for note in generate_notes(300, 20261206, 'train'):\n"
    "    h.update(repr(note).encode())\n"
    "print(h.hexdigest())\n"
)


def _digest(hash_seed: str) -> str:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", _DIGEST], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_training_notes_are_the_same_under_any_hash_seed() -> None:
    """Faker's it_IT city list is built from a set (its order follows PYTHONHASHSEED); the notes must not be."""
    assert _digest("0") == _digest("7") == _digest("123")
