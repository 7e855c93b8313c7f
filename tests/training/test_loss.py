"""The per-unit loss: a row's loss depends on that row alone (the premise of per-sample clipping)."""

from __future__ import annotations

import torch

from appliance.training._loss import unit_losses


def test_row_loss_is_independent_of_batchmates() -> None:
    """A row's loss is the same alone, with other rows, and with extra padding."""
    torch.manual_seed(0)
    vocab = 11
    ids = torch.randint(0, vocab, (3, 7))
    weights = torch.zeros(3, 7)
    weights[:, 3:] = 0.25
    logits = torch.randn(3, 7, vocab)
    batch = unit_losses(logits, ids, weights)
    alone = unit_losses(logits[:1], ids[:1], weights[:1])
    padded_logits = torch.cat([logits[:1], torch.randn(1, 4, vocab)], dim=1)
    padded_ids = torch.cat([ids[:1], torch.zeros(1, 4, dtype=torch.long)], dim=1)
    padded_w = torch.cat([weights[:1], torch.zeros(1, 4)], dim=1)
    assert torch.allclose(batch[0], alone[0])
    assert torch.allclose(unit_losses(padded_logits, padded_ids, padded_w)[0], alone[0])


def test_matches_token_mean_cross_entropy() -> None:
    """With uniform weights over the targets, a row's loss is its mean token cross-entropy."""
    torch.manual_seed(1)
    logits = torch.randn(1, 5, 9)
    ids = torch.randint(0, 9, (1, 5))
    weights = torch.full((1, 5), 0.25)
    expected = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:])
    assert torch.allclose(unit_losses(logits, ids, weights)[0], expected)
