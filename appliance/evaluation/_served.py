"""Scoring through a serving Backend: the same figures as ``score_model``, measured on what is really served.

A local model is scored from token ids; a backend takes text. Each record is encoded exactly as training and the
local evaluator do (``appliance.training.encode``: chat template, long prompts losing their middle, response + EOS),
those ids are decoded to text and sent, and the backend's answer says which tokens it received:

- loss: prompt + response is sent with ``decoder_input_details`` (TGI's prefill log-probabilities, which the
  embedded engine gives too) and one new token; the record's loss is the mean negative log-probability of the
  response tokens, the same number ``record_losses`` computes. The prefill ids must equal the evaluator's ids. A
  backend that refuses the request (prompt + response over its input limit) measures no loss for that record.
- exact match: the (truncated) prompt is sent for a greedy answer of at most ``max_answer_tokens + 2`` tokens; the
  backend's prompt token count must equal the evaluator's.

A record the backend tokenised or truncated differently (another tokenizer, a special token added, its own input
limit) is **not comparable**: it gets no score and is counted in ``mismatched``. A backend that gives no prefill
details (vLLM's completions) yields no loss (``loss_measured`` 0), only exact match.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from appliance.errors import BackendValidation
from appliance.evaluation._metrics import exact_match
from appliance.evaluation._service import EvalOptions, ModelScores
from appliance.protocols import Backend, GenerationParams
from appliance.training.data import Record, encode

__all__ = ["ServedScores", "score_served"]

_CONCURRENCY = 4  # requests in flight per scored adapter (the backend batches them)


@dataclass(frozen=True)
class ServedScores:
    """Per-record figures measured through a backend, and how many records it received differently."""

    scores: ModelScores  # loss NaN / match None where not measured
    mismatched: int  # records whose tokens the backend did not receive as the evaluator scored them
    loss_measured: int  # records with a loss (0 when the backend gives no prefill details)

    @property
    def comparable(self) -> bool:
        """Whether every record reached the backend exactly as the evaluator scored it."""
        return self.mismatched == 0


def _prefill_ids_and_logprobs(details: Any) -> tuple[list[int], list[float | None]] | None:
    prefill = details.get("prefill") if isinstance(details, dict) else None
    if not isinstance(prefill, list) or not prefill:
        return None
    ids = [int(p.get("id", -1)) for p in prefill]
    logprobs = [p.get("logprob") for p in prefill]
    return ids, [float(x) if isinstance(x, int | float) else None for x in logprobs]


async def _loss(
    backend: Backend, adapter: str | None, tokenizer: Any, ids: list[int], prompt_len: int
) -> tuple[float, bool, bool]:
    """(loss, measured, mismatched) of one record through the backend."""
    text = tokenizer.decode(ids, skip_special_tokens=False)
    params = GenerationParams(max_new_tokens=1, details=True, extra={"decoder_input_details": True})
    try:
        gen = await backend.generate(adapter, text, params)
    except BackendValidation:  # over its input limit, or a backend that refuses the details: no loss measured;
        return math.nan, False, False  # the greedy-answer request then says whether the prompt is comparable
    parsed = _prefill_ids_and_logprobs(gen.details)
    if parsed is None:
        return math.nan, False, gen.prompt_tokens != len(ids)
    served, logprobs = parsed
    if served != ids:
        return math.nan, False, True
    targets = [logprobs[i] for i in range(prompt_len, len(ids))]
    if not targets:  # the response was truncated away entirely (as record_losses: nothing to score)
        return math.nan, True, False
    if any(t is None for t in targets):
        return math.nan, False, True
    return -sum(t for t in targets if t is not None) / len(targets), True, False


async def _answer(
    backend: Backend, adapter: str | None, tokenizer: Any, ids: list[int], prompt_len: int, max_new: int
) -> str | None:
    """The greedy answer to the truncated prompt, None when the backend received other tokens."""
    text = tokenizer.decode(ids[:prompt_len], skip_special_tokens=False)
    try:
        gen = await backend.generate(adapter, text, GenerationParams(max_new_tokens=max_new, do_sample=False))
    except BackendValidation:
        return None
    if gen.prompt_tokens != prompt_len:
        return None
    return gen.text


def _short(tokenizer: Any, records: Sequence[Record], limit: int) -> list[bool]:
    return [len(tokenizer(r.response, add_special_tokens=False)["input_ids"]) <= limit for r in records]


async def score_served(
    backend: Backend,
    adapter: str | None,
    tokenizer: Any,
    records: Sequence[Record],
    options: EvalOptions,
    *,
    concurrency: int = _CONCURRENCY,
) -> ServedScores:
    """Loss and exact match of ``adapter`` (a served id; None: the base model) on ``records`` through ``backend``.

    Backend errors other than a validation refusal (unavailable, timeout, overloaded) propagate: a measurement
    that could not be made is not a score.
    """
    encoded = [encode(tokenizer, r, options.max_length) for r in records]
    short = _short(tokenizer, records, options.max_answer_tokens)
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(i: int) -> tuple[float, bool, float | None, bool]:
        ids, prompt_len = encoded[i]
        async with gate:
            loss, measured, mismatch = await _loss(backend, adapter, tokenizer, ids, prompt_len)
            match: float | None = None
            if not measured and not mismatch and not short[i]:  # no loss and no answer would say what it received
                answer_only = await _answer(backend, adapter, tokenizer, ids, prompt_len, 1)
                mismatch = answer_only is None
            if short[i] and not mismatch:
                answer = await _answer(backend, adapter, tokenizer, ids, prompt_len, options.max_answer_tokens + 2)
                if answer is None:
                    mismatch = True
                else:
                    match = float(exact_match(answer, records[i].response))
        return loss, measured, match, mismatch

    results = await asyncio.gather(*(one(i) for i in range(len(records))))
    return ServedScores(
        scores=ModelScores(losses=[r[0] for r in results], matches=[r[2] for r in results]),
        mismatched=sum(1 for r in results if r[3]),
        loss_measured=sum(1 for r in results if r[1] and math.isfinite(r[0])),
    )
