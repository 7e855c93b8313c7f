"""How a subject appears in a prepared dataset: its id's HMAC under the dataset's salt (contracts.md).

Intake writes it for every record and lists it in the manifest; the registry recomputes it to find the datasets,
runs and adapters that saw a subject (lineage, erasure). Both must agree to the bit, so it is built here once.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["subject_digest"]


def subject_digest(salt: bytes, subject_id: str) -> str:
    """HMAC-SHA256(key=salt, subject_id as UTF-8) as hex."""
    return hmac.new(salt, subject_id.encode("utf-8"), hashlib.sha256).hexdigest()
