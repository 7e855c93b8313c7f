"""Scoring one model on records: per-record mean token loss of the reference response, and greedy answers.

Both use training's own tokenisation (``appliance.training.data.encode``: the chat template, the prompt truncated the
same way, the response followed by EOS), so a loss here is the loss training minimised and the prompt a model
answers is the prompt it was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from appliance.training.data import Record, encode

__all__ = ["greedy_answers", "record_losses"]


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad if pad is not None else 0)


def record_losses(
    model: Any, tokenizer: Any, records: Sequence[Record], *, max_length: int, batch_size: int, device: Any
) -> list[float]:
    """Per record, the mean cross-entropy (nats) of the response tokens (EOS included) given the prompt."""
    import torch
    import torch.nn.functional as F

    encoded = [encode(tokenizer, r, max_length) for r in records]
    pad = _pad_id(tokenizer)
    losses: list[float] = []
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            chunk = encoded[start : start + batch_size]
            length = max(len(ids) for ids, _ in chunk)
            ids = torch.full((len(chunk), length), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), length), dtype=torch.long)
            for row, (seq, _) in enumerate(chunk):
                ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
                mask[row, : len(seq)] = 1
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            for row, (seq, prompt_len) in enumerate(chunk):
                targets = ids[row, prompt_len : len(seq)].to(device)
                if targets.numel() == 0:  # a response truncated away entirely: nothing to score
                    losses.append(float("nan"))
                    continue
                predicted = logits[row, prompt_len - 1 : len(seq) - 1]
                losses.append(float(F.cross_entropy(predicted, targets, reduction="mean")))
    return losses


def greedy_answers(
    model: Any,
    tokenizer: Any,
    records: Sequence[Record],
    *,
    max_length: int,
    max_new_tokens: int,
    batch_size: int,
    device: Any,
) -> list[str]:
    """Each record's greedy answer to its prompt (left-padded batches, stopped at EOS or ``max_new_tokens``)."""
    import torch

    prompts = [encode(tokenizer, r, max_length) for r in records]
    pad = _pad_id(tokenizer)
    eos = tokenizer.eos_token_id
    answers: list[str] = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            chunk = [ids[:prompt_len] for ids, prompt_len in prompts[start : start + batch_size]]
            length = max(len(p) for p in chunk)
            ids = torch.full((len(chunk), length), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), length), dtype=torch.long)
            for row, seq in enumerate(chunk):
                ids[row, length - len(seq) :] = torch.tensor(seq, dtype=torch.long)
                mask[row, length - len(seq) :] = 1
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=pad,
                eos_token_id=eos,
            )
            for row in range(len(chunk)):
                answers.append(tokenizer.decode(out[row, length:], skip_special_tokens=True))
    return answers
