"""Base vs adapter on a prepared split: loss, perplexity and exact match, each with a bootstrap 95% interval.

The report (``appliance eval --json``, ``metadata.json["evaluation"]``, the ledger and the registry keep the same
object)::

    {"n": 60, "split": "eval", "exact_match_n": 48,
     "base":    {"loss": .., "loss_ci": [lo, hi], "perplexity": .., "perplexity_ci": [..],
                 "exact_match": .., "exact_match_ci": [..]},
     "adapter": {...},
     "delta":   {"loss": .., "loss_ci": [..], "perplexity": .., "exact_match": .., "exact_match_ci": [..]},
     "bootstrap": {"resamples": 1000, "seed": 0, "level": 0.95}}

``loss`` is the mean over records of each record's mean token loss of the reference response (what training
minimises), ``perplexity`` is ``exp(loss)``. Exact match is scored on the records whose reference answer is at
most ``max_answer_tokens`` tokens (short answers; longer free text is scored by loss only) and is ``None`` when
there are none. ``delta`` is adapter minus base, bootstrapped paired; ``adapter`` and ``delta`` only with an
adapter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.errors import NotFound, ValidationFailed
from appliance.evaluation._metrics import RESAMPLES, SEED, Estimate, bootstrap, exact_match
from appliance.evaluation._score import greedy_answers, record_losses
from appliance.models import adapter_and_base
from appliance.training.data import Record, read_prepared

__all__ = ["EvalOptions", "ModelScores", "evaluate_dirs", "evaluate_pair", "model_figures", "report", "score_model"]

_DIGITS = 6  # stored figures are rounded, so that the report reads the same everywhere it is kept


@dataclass(frozen=True)
class EvalOptions:
    """How to score: the training window, the batch, which answers count as short, the bootstrap."""

    max_length: int = 256  # tokens per record, as in training (the prompt is truncated the same way)
    batch_size: int = 8  # records per forward pass
    max_answer_tokens: int = 16  # references up to this many tokens are scored by exact match
    resamples: int = RESAMPLES
    seed: int = SEED


@dataclass(frozen=True)
class ModelScores:
    """One model's per-record figures: loss (nats) of every record, exact match (0/1) of the short ones."""

    losses: list[float]
    matches: list[float | None]  # None: the reference is free text, not scored by exact match


def _short(tokenizer: Any, records: Sequence[Record], limit: int) -> list[bool]:
    return [len(tokenizer(r.response, add_special_tokens=False)["input_ids"]) <= limit for r in records]


def score_model(
    model: Any, tokenizer: Any, records: Sequence[Record], options: EvalOptions, device: Any
) -> ModelScores:
    """Loss of every record and the exact match of the greedy answer of every short-answer record."""
    losses = record_losses(
        model, tokenizer, records, max_length=options.max_length, batch_size=options.batch_size, device=device
    )
    short = _short(tokenizer, records, options.max_answer_tokens)
    scored = [r for r, s in zip(records, short, strict=True) if s]
    answers = iter(
        greedy_answers(
            model,
            tokenizer,
            scored,
            max_length=options.max_length,
            max_new_tokens=options.max_answer_tokens + 2,
            batch_size=options.batch_size,
            device=device,
        )
        if scored
        else []
    )
    matches: list[float | None] = [
        float(exact_match(next(answers), r.response)) if s else None for r, s in zip(records, short, strict=True)
    ]
    return ModelScores(losses, matches)


def _r(x: float) -> float:
    return round(x, _DIGITS)


def _interval(e: Estimate, transform: Any = None) -> list[float]:
    f = transform or (lambda v: v)
    return [_r(f(e.low)), _r(f(e.high))]


def _exp(x: float) -> float:
    return math.exp(min(x, 50.0))


def _model_figures(scores: ModelScores, options: EvalOptions) -> dict[str, Any]:
    losses = [x for x in scores.losses if math.isfinite(x)]
    loss = bootstrap(losses, resamples=options.resamples, seed=options.seed)
    figures: dict[str, Any] = {
        "loss": _r(loss.mean),
        "loss_ci": _interval(loss),
        "perplexity": _r(_exp(loss.mean)),
        "perplexity_ci": _interval(loss, _exp),
    }
    return figures | _match_figures(scores, options)


def model_figures(scores: ModelScores, options: EvalOptions) -> dict[str, Any]:
    """One model's figures (the report's ``base``/``adapter`` object); loss fields None when no record has one
    (a backend that gives no prefill log-probabilities)."""
    if any(math.isfinite(x) for x in scores.losses):
        return _model_figures(scores, options)
    empty = {"loss": None, "loss_ci": None, "perplexity": None, "perplexity_ci": None}
    return empty | _match_figures(scores, options)


def _match_figures(scores: ModelScores, options: EvalOptions) -> dict[str, Any]:
    figures: dict[str, Any] = {"exact_match": None, "exact_match_ci": None}
    matches = [m for m in scores.matches if m is not None]
    if matches:
        em = bootstrap(matches, resamples=options.resamples, seed=options.seed)
        figures |= {"exact_match": _r(em.mean), "exact_match_ci": _interval(em)}
    return figures


def report(base: ModelScores, adapter: ModelScores | None, options: EvalOptions) -> dict[str, Any]:
    """The evaluation report (module docstring) from per-record scores; ``adapter`` None: base only."""
    n = len(base.losses)
    if n == 0:
        raise ValidationFailed("nothing to evaluate: the split has no records")
    out: dict[str, Any] = {
        "n": n,
        "exact_match_n": sum(m is not None for m in base.matches),
        "base": _model_figures(base, options),
        "bootstrap": {"resamples": options.resamples, "seed": options.seed, "level": 0.95},
    }
    if adapter is None:
        return out
    out["adapter"] = _model_figures(adapter, options)
    pairs = [(a - b) for a, b in zip(adapter.losses, base.losses, strict=True) if math.isfinite(a - b)]
    loss = bootstrap(pairs, resamples=options.resamples, seed=options.seed)
    delta: dict[str, Any] = {
        "loss": _r(out["adapter"]["loss"] - out["base"]["loss"]),
        "loss_ci": _interval(loss),
        "perplexity": _r(out["adapter"]["perplexity"] - out["base"]["perplexity"]),
        "exact_match": None,
        "exact_match_ci": None,
    }
    em_pairs = [a - b for a, b in zip(adapter.matches, base.matches, strict=True) if a is not None and b is not None]
    if em_pairs:
        em = bootstrap(em_pairs, resamples=options.resamples, seed=options.seed)
        gain = out["adapter"]["exact_match"] - out["base"]["exact_match"]
        delta |= {"exact_match": _r(gain), "exact_match_ci": _interval(em)}
    out["delta"] = delta
    return out


def evaluate_pair(
    model: Any, tokenizer: Any, records: Sequence[Record], options: EvalOptions, device: Any
) -> dict[str, Any]:
    """Base and adapter side by side from one peft model: the base is the same model with its adapter disabled."""
    adapter, base = adapter_and_base(model, lambda: score_model(model, tokenizer, records, options, device))
    return report(base, adapter, options)


def _load(base: Path, adapter: Path | None, device: Any) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not (base / "config.json").is_file():
        raise NotFound(f"unknown base model: {base} is not a Hugging Face model directory (no config.json)")
    if adapter is not None and not (adapter / "adapter_config.json").is_file():
        raise NotFound(f"unknown adapter: {adapter} has no adapter_config.json")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
        model: Any = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise ValidationFailed(f"base model {base} cannot be loaded: {exc}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device)
    if adapter is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ValidationFailed(f"adapter {adapter} does not fit base model {base}: {exc}") from exc
    model.eval()
    return model, tokenizer


def evaluate_dirs(
    base: Path,
    dataset: Path,
    *,
    adapter: Path | None = None,
    split: str = "eval",
    max_records: int | None = None,
    options: EvalOptions | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """``appliance eval``: load the base (and adapter), read the prepared split (fingerprint verified), score."""
    import torch

    if split not in ("eval", "train"):
        raise ValidationFailed(f"--split must be eval or train, not {split!r}")
    options = options or EvalOptions()
    prepared = read_prepared(dataset)
    records = list(prepared.eval if split == "eval" else prepared.train)[: max_records or None]
    model, tokenizer = _load(base, adapter, torch.device(device))
    if adapter is None:
        result = report(score_model(model, tokenizer, records, options, torch.device(device)), None, options)
    else:
        result = evaluate_pair(model, tokenizer, records, options, torch.device(device))
    return {"split": split, "dataset": prepared.fingerprint, **result}
