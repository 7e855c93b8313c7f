"""Lineage for GDPR erasure: which datasets, runs and adapters saw a subject, and what DP promised each.

Datasets store only salted digests, ``HMAC-SHA256(key=bytes.fromhex(salt), subject_id)`` (the intake stage's
construction, subject id stripped and UTF-8 encoded), each dataset with its own salt. A lookup recomputes the
digest under every dataset's salt; the raw id is never stored, logged or put in an audit event.

The guarantee per adapter: with ``privacy_unit = "subject"`` the run's (epsilon, delta) bounds what anyone can
learn about the subject. With ``privacy_unit = "record"`` it bounds one record; a subject with k training
records gets only the group-privacy bound (k*epsilon, k*exp((k-1)*epsilon)*delta), which grows fast with k.
"""

from __future__ import annotations

import hashlib
import hmac
import math

__all__ = ["describe", "group_guarantee", "subject_digest"]


def subject_digest(salt_hex: str, subject_id: str) -> str:
    """The digest a dataset with this salt stores for a subject id."""
    return hmac.new(bytes.fromhex(salt_hex), subject_id.strip().encode("utf-8"), hashlib.sha256).hexdigest()


def group_guarantee(epsilon: float, delta: float, records: int) -> tuple[float, float]:
    """(epsilon, delta) for a group of ``records`` records under a per-record (epsilon, delta) guarantee."""
    k = max(1, records)
    try:
        group_delta = k * math.exp((k - 1) * epsilon) * delta
    except OverflowError:
        group_delta = math.inf
    return k * epsilon, min(1.0, group_delta)


def describe(dp_enabled: bool, epsilon: float | None, delta: float | None, unit: str, records: int | None) -> str:
    """A one-line statement of the guarantee that applied to the subject in one run."""
    if not dp_enabled or epsilon is None or delta is None:
        return "no differential privacy: the weights may encode the subject's records; retraining is required"
    if records == 0:
        return "the subject is only in the eval split: the weights were not trained on their records"
    if unit == "subject":
        return f"subject-level ({epsilon:g}, {delta:g})-DP: bounds what the adapter reveals about this subject"
    if records is None:
        return (
            f"record-level ({epsilon:g}, {delta:g})-DP per record; the subject's record count is unknown, so "
            "the per-subject bound is weaker by group privacy"
        )
    if records == 1:
        return f"record-level ({epsilon:g}, {delta:g})-DP; the subject has one training record"
    g_eps, g_delta = group_guarantee(epsilon, delta, records)
    return (
        f"record-level ({epsilon:g}, {delta:g})-DP per record; the subject has {records} training records, so "
        f"only ({g_eps:g}, {g_delta:.3g})-DP holds for the subject (group privacy)"
    )
