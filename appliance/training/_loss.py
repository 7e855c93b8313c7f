"""The per-unit loss: each row's loss depends on that row alone, so per-sample clipping bounds its influence.

Hugging Face's ``outputs.loss`` averages over every token of the batch, which couples a row's gradient to its
batchmates and breaks the sensitivity argument of DP-SGD. Here a row's loss is ``sum_t w_t * CE_t`` with the
weights from :mod:`appliance.training._data` (the mean over the unit's records of each record's mean token loss).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["unit_losses"]


def unit_losses(logits: torch.Tensor, input_ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A loss per row, shape ``[batch]``: token cross-entropies weighted by the unit's target weights."""
    import torch.nn.functional as F

    shifted = logits[:, :-1, :].float()
    targets = input_ids[:, 1:]
    w = weights[:, 1:]
    batch, length, vocab = shifted.shape
    token_loss = F.cross_entropy(shifted.reshape(-1, vocab), targets.reshape(-1), reduction="none")
    return (token_loss.view(batch, length) * w).sum(dim=1)
