"""The subject digest: one HMAC that intake writes and the registry recomputes."""

from __future__ import annotations

from appliance import intake, registry
from appliance.contracts import subject_digest

SALT = "5a17" * 8


def test_a_known_answer() -> None:
    """HMAC-SHA256 keyed by the salt over the UTF-8 id (the value OpenSSL's HMAC gives for the same key and id)."""
    assert subject_digest(bytes.fromhex(SALT), "P0001") == (
        "13a1744112b43af95d9a4a724ce59438e0a4f4d9879ab47d121c7033b7957fe3"
    )


def test_intake_and_the_registry_agree() -> None:
    """Intake writes the contract's digest; the registry finds it from a hex salt and a typed id (trimmed)."""
    written = intake.subject_digest(bytes.fromhex(SALT), "MRN-7")
    assert written == subject_digest(bytes.fromhex(SALT), "MRN-7")
    assert registry.subject_digest(SALT, "  MRN-7\n") == written
    assert registry.subject_digest(SALT, "MRN-8") != written
