"""Scoring through a serving Backend agrees with the local evaluator, and refuses to compare what it cannot."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path
from typing import Any

import pytest

from appliance.evaluation import EvalOptions, model_figures, score_model, score_served
from appliance.training import Record

RECORDS = [
    Record("Triage: classify the urgency of this note as low, medium or high.\n\nSpO2 88%.", "high"),
    Record("Coding: give the ICD-10 chapter of the primary diagnosis.\n\nasthma", "J00-J99"),
    Record("Summarise this note.\n\nA long note " + "with words " * 40, "A summary " * 12),
]


def _local(tiny_model: Path, adapter_dir: Path, options: EvalOptions) -> Any:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(adapter_dir)).eval()
    return tokenizer, score_model(model, tokenizer, RECORDS, options, torch.device("cpu"))


def test_served_scores_equal_the_local_evaluator(
    tiny_model: Path,
    engine_url: str,
    lora_adapters: dict[str, tuple[Path, str]],
) -> None:
    """Per-record losses and exact matches through the engine's HTTP API equal the local evaluator's (the long
    prompt loses its middle the same way on both sides)."""
    from appliance.serving import EmbeddedBackend

    options = EvalOptions(max_length=48)
    tokenizer, local = _local(tiny_model, lora_adapters["triage-v1"][0], options)
    backend = EmbeddedBackend(engine_url)

    async def run() -> Any:
        try:
            return await score_served(backend, "triage-v1", tokenizer, RECORDS, options)
        finally:
            await backend.aclose()

    served = asyncio.run(run())
    assert served.comparable and served.mismatched == 0 and served.loss_measured == 3
    for a, b in zip(served.scores.losses, local.losses, strict=True):
        assert a == pytest.approx(b, abs=2e-3)
    assert served.scores.matches == local.matches
    figures = model_figures(served.scores, options)
    assert figures["loss"] == pytest.approx(sum(local.losses) / 3, abs=2e-3)


def test_a_backend_that_receives_other_tokens_is_not_comparable(
    tiny_model: Path,
    engine_url: str,
) -> None:
    """A prompt the backend tokenises differently (here: it adds special tokens the evaluator did not score) and a
    record over the backend's input limit get no score: counted as mismatched, never as a low or high score."""
    from transformers import AutoTokenizer

    from appliance.serving import EmbeddedBackend

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    backend = EmbeddedBackend(engine_url)
    long_record = Record("Summarise.\n\n" + "word " * 400, "fine")

    class ShiftedTokenizer:
        """The evaluator's view with one extra leading token the served text does not carry."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def __call__(self, text: str, **kw: Any) -> Any:
            out = self.inner(text, **kw)
            return {"input_ids": [self.inner.bos_token_id, *out["input_ids"]]}

        def apply_chat_template(self, *a: Any, **kw: Any) -> Any:
            return self.inner.apply_chat_template(*a, **kw)

        def decode(self, ids: list[int], **kw: Any) -> str:
            return str(self.inner.decode(ids[1:], **kw))

    async def run() -> Any:
        try:
            shifted = await score_served(
                backend, None, ShiftedTokenizer(tokenizer), RECORDS[:1], EvalOptions(max_length=64)
            )
            too_long = await score_served(backend, None, tokenizer, [long_record], EvalOptions(max_length=1024))
            return shifted, too_long
        finally:
            await backend.aclose()

    shifted, too_long = asyncio.run(run())
    for result in (shifted, too_long):
        assert not result.comparable and result.mismatched == 1
        assert math.isnan(result.scores.losses[0]) and result.scores.matches == [None]
