"""Canaries in training: the records inserted, and their exposure under the trained model (Secret Sharer).

The format, the exposure arithmetic and the sealed hand-off of the secrets live in :mod:`appliance.canaries`
(shared with the registry and the monitor's probe). Secrets come from :mod:`secrets` (a CSPRNG), are never logged
and never written in clear: the encrypted checkpoint holds them during a run, the sealed file after it.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from appliance.canaries import SECRET_DIGITS, candidate_pool, exposure, random_secret
from appliance.canaries import Canary as _CanaryFormat
from appliance.training._data import Record, prompt_text

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

__all__ = ["SECRET_DIGITS", "Canary", "exposure", "make_canaries", "measure_exposures"]


@dataclass(frozen=True)
class Canary(_CanaryFormat):
    """A canary as training inserts it (the shared format, plus its training records)."""

    def records(self) -> list[Record]:
        """The records inserted into training: ``repetitions`` copies, all of one synthetic subject."""
        subject = f"canary-{self.code}"
        return [Record(self.instruction, self.response(), subject) for _ in range(self.repetitions)]


def make_canaries(count: int, repetitions: Sequence[int]) -> list[Canary]:
    """``count`` fresh canaries, cycling through the repetition counts."""
    import secrets

    alphabet = string.ascii_uppercase + string.digits
    return [
        Canary(
            code="".join(secrets.choice(alphabet) for _ in range(6)),
            secret=random_secret(),
            repetitions=repetitions[i % len(repetitions)],
        )
        for i in range(count)
    ]


def _scores(
    model: Any, tokenizer: PreTrainedTokenizerBase, canary: _CanaryFormat, secrets_: Sequence[str], device: torch.device
) -> list[float]:
    """Log-perplexity (summed NLL of the response tokens) of each candidate secret in the canary's context."""
    import torch
    import torch.nn.functional as F

    prompt = tokenizer(prompt_text(tokenizer, canary.instruction), add_special_tokens=False)["input_ids"]
    out: list[float] = []
    batch = 32
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for i in range(0, len(secrets_), batch):
        chunk = secrets_[i : i + batch]
        responses = [tokenizer(canary.response(s), add_special_tokens=False)["input_ids"] for s in chunk]
        length = len(prompt) + max(len(r) for r in responses)
        ids = torch.full((len(chunk), length), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, resp in enumerate(responses):
            seq = prompt + resp
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        # logits only where they predict a response token (they all start at the same position)
        keep = torch.arange(len(prompt) - 1, length - 1)
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), logits_to_keep=keep).logits
        targets = ids[:, len(prompt) :].to(device)
        nll = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
        nll = nll * mask[:, len(prompt) :].to(device)
        out.extend(nll.sum(dim=1).tolist())
    return out


def measure_exposures(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    canaries: Sequence[_CanaryFormat],
    *,
    candidates: int,
    device: torch.device,
) -> list[float]:
    """The exposure of each canary under the trained model (one value per canary, in order)."""
    results = []
    for canary in canaries:
        pool = candidate_pool(canary.secret, candidates)
        scores = _scores(model, tokenizer, canary, [canary.secret, *pool], device)
        results.append(exposure(scores[0], scores[1:]))
    return results
