"""Audit canaries for the one-run privacy audit (``--audit-canaries M``), and their membership scores.

M random records, unlike anything else in training and unlike the exposure canaries (``_canaries.py``: MRN
secrets behind a registration code), each included in training with probability 1/2 by a coin from the OS
CSPRNG. After training each is scored by how much the adapter lowered its loss against the base model (the
same peft model with its adapter disabled): score = base loss - adapter loss, per-token mean over the response.
Subtracting the base's loss removes how hard each random record is anyway, so the score measures what training
taught. :func:`appliance.training._audit_bound.audit_bound` turns the scores into the epsilon lower bound.

Which canaries were included, their text and their scores stay in memory and the encrypted checkpoint; the
metadata, the ledger and the logs get counts and the bound only.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from appliance.models import adapter_and_base
from appliance.training._audit_bound import AuditBound, audit_bound
from appliance.training._data import Record, UnitDataset, build_units, collate
from appliance.training._loss import unit_losses

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

__all__ = ["AuditCanary", "make_audit_canaries", "membership_scores", "run_audit"]

_CODE_ALPHABET = string.ascii_uppercase + string.digits
_SECRET_ALPHABET = string.ascii_lowercase + string.digits
SECRET_CHARS = 12  # 36^12: 62 bits, never guessed by chance


@dataclass(frozen=True)
class AuditCanary:
    """One audit canary: a unique code, a random reference, and whether the coin put it into training."""

    code: str
    secret: str
    included: bool

    def record(self) -> Record:
        """The one record of this canary (its own synthetic subject, so it is one privacy unit either way)."""
        return Record(
            f"Audit sample {self.code}: recite its reference string.",
            f"Reference string: {' '.join(self.secret)}",
            f"audit-{self.code}",
        )


def make_audit_canaries(count: int) -> list[AuditCanary]:
    """``count`` fresh audit canaries; each is included with probability 1/2 (a CSPRNG coin per canary)."""
    return [
        AuditCanary(
            code="".join(secrets.choice(_CODE_ALPHABET) for _ in range(10)),
            secret="".join(secrets.choice(_SECRET_ALPHABET) for _ in range(SECRET_CHARS)),
            included=secrets.randbits(1) == 1,
        )
        for _ in range(count)
    ]


def _losses(model: Any, units: Any, pad: int, batch_size: int, device: torch.device) -> list[float]:
    import torch

    dataset, batcher, out = UnitDataset(units), collate(pad), []
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = [dataset[i] for i in range(start, min(len(dataset), start + batch_size))]
            ids, mask, weights = (t.to(device) for t in batcher(batch))
            out.extend(unit_losses(model(input_ids=ids, attention_mask=mask).logits, ids, weights).tolist())
    return out


def membership_scores(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    canaries: Sequence[AuditCanary],
    *,
    max_length: int,
    batch_size: int,
    device: torch.device,
) -> list[float]:
    """Base loss minus adapter loss for each canary, in order (higher: more likely trained on)."""
    units = build_units(
        tokenizer,
        [c.record() for c in canaries],
        max_length=max_length,
        privacy_unit="record",
        max_records_per_subject=1,
        seed=0,
    )
    pad = int(tokenizer.pad_token_id)
    adapter, base = adapter_and_base(model, lambda: _losses(model, units, pad, batch_size, device))
    return [b - a for a, b in zip(adapter, base, strict=True)]


def run_audit(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    canaries: Sequence[AuditCanary],
    *,
    delta: float,
    max_length: int,
    batch_size: int,
    device: torch.device,
) -> AuditBound:
    """Score every audit canary and compute the one-run epsilon lower bound at ``delta``."""
    scores = membership_scores(model, tokenizer, canaries, max_length=max_length, batch_size=batch_size, device=device)
    return audit_bound(scores, [c.included for c in canaries], delta=delta)
