"""Choosing the next token: greedy or sampled, with TGI's warpers (temperature, top-k, top-p, typical-p),
repetition and frequency penalties, a per-request seeded generator, and the logprobs TGI reports.

Greedy rows without penalties are decided for the whole batch at once (one argmax, one log-softmax); only rows
that need warpers or penalties are processed one by one.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import torch
from transformers.generation.logits_process import (
    LogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
    TypicalLogitsWarper,
)

from appliance.contracts import SamplingParams


@dataclass(frozen=True)
class Choice:
    """The chosen token, its logprob and (when asked) the ``top_n_tokens`` best alternatives."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()


class TokenChooser:
    """Per-request state for choosing tokens (its generator, penalties and warpers)."""

    def __init__(self, params: SamplingParams, device: torch.device) -> None:
        self.params = params
        self.seed: int | None = None
        self.generator: torch.Generator | None = None
        if params.sampling:
            self.seed = params.seed if params.seed is not None else secrets.randbits(63)
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(self.seed)
        penalties: list[LogitsProcessor] = []
        if params.repetition_penalty is not None and params.repetition_penalty != 1.0:
            penalties.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
        warpers: list[LogitsProcessor] = []
        if params.sampling:
            if params.temperature is not None and params.temperature != 1.0:
                warpers.append(TemperatureLogitsWarper(params.temperature))
            if params.top_k:
                warpers.append(TopKLogitsWarper(params.top_k))
            if params.top_p is not None and params.top_p < 1.0:
                warpers.append(TopPLogitsWarper(params.top_p))
            if params.typical_p is not None and params.typical_p < 1.0:
                warpers.append(TypicalLogitsWarper(params.typical_p))
        self._penalties = penalties
        self._warpers = warpers
        self.simple = not penalties and not warpers and not params.sampling and not params.frequency_penalty

    def choose(self, logits: torch.Tensor, history: torch.Tensor, generated: list[int]) -> Choice:
        """The next token for one row: ``logits`` [V], ``history`` [1, L] (prompt + generated ids)."""
        scores = logits.float().unsqueeze(0)
        for proc in self._penalties:
            scores = _finite(proc(history, scores))
        if self.params.frequency_penalty and generated:
            counts = torch.bincount(torch.tensor(generated, device=scores.device), minlength=scores.shape[-1])
            scores = scores - self.params.frequency_penalty * counts[: scores.shape[-1]].to(scores.dtype)
        for proc in self._warpers:
            scores = _finite(proc(history, scores))
        logprobs = torch.log_softmax(scores, dim=-1)[0]
        if self.params.sampling:
            probs = torch.softmax(scores, dim=-1)[0]
            token = int(torch.multinomial(probs, 1, generator=self.generator).item())
        else:
            token = int(torch.argmax(logprobs).item())
        return Choice(token, float(logprobs[token].item()), _top(logprobs, self.params.top_n_tokens))


def _finite(scores: torch.Tensor) -> torch.Tensor:
    """Scores with +inf clamped (a tiny temperature or penalty overflows them; softmax would give NaN and
    ``multinomial`` would fail every row of the batch); -inf (masked tokens) stays."""
    return torch.nan_to_num(scores, nan=float("-inf"), posinf=torch.finfo(scores.dtype).max, neginf=float("-inf"))


def _top(logprobs: torch.Tensor, n: int) -> tuple[tuple[int, float], ...]:
    if n <= 0:
        return ()
    values, ids = torch.topk(logprobs, n)
    return tuple((int(i), float(v)) for i, v in zip(ids.tolist(), values.tolist(), strict=True))


def choose_batch(
    logits: torch.Tensor, choosers: list[TokenChooser], histories: list[torch.Tensor], generated: list[list[int]]
) -> list[Choice]:
    """The next token of every row of ``logits`` [B, V]; simple greedy rows are decided together."""
    simple = [i for i, c in enumerate(choosers) if c.simple]
    results: list[Choice | None] = [None] * len(choosers)
    if simple:
        rows = logits[simple].float() if len(simple) != len(choosers) else logits.float()
        logprobs = torch.log_softmax(rows, dim=-1)
        best = torch.argmax(rows, dim=-1)  # on the raw logits, exactly as transformers' greedy search
        best_ids = best.tolist()
        best_lps = logprobs.gather(-1, best.unsqueeze(-1)).squeeze(-1).tolist()
        for j, i in enumerate(simple):
            results[i] = Choice(best_ids[j], best_lps[j], _top(logprobs[j], choosers[i].params.top_n_tokens))
    for i, chooser in enumerate(choosers):
        if results[i] is None:
            results[i] = chooser.choose(logits[i], histories[i], generated[i])
    return [r for r in results if r is not None]
