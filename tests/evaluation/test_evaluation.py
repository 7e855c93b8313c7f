"""The evaluation: known losses on a tiny model, exact-match normalisation, bootstrap intervals, the CLI report."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from appliance.cli import app
from appliance.evaluation import (
    EvalOptions,
    ModelScores,
    bootstrap,
    evaluate_pair,
    exact_match,
    normalise_answer,
    report,
    score_model,
)
from appliance.models import adapter_and_base
from appliance.training import Record, encode
from tests.training.conftest import write_prepared

RECORDS = [
    Record("Triage: classify the urgency of this note as low, medium or high.\n\nSpO2 88%.", "high"),
    Record("Coding: give the ICD-10 chapter of the primary diagnosis.\n\nasthma", "J00-J99"),
    Record("Summarise this note.\n\nA long note " + "with words " * 10, "A summary " * 12),
]


def _load(tiny_model: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return AutoModelForCausalLM.from_pretrained(tiny_model).eval(), tokenizer


def _direct_loss(model: Any, tokenizer: Any, record: Record, max_length: int) -> float:
    """The mean cross-entropy of the response tokens, computed on one unpadded sequence by hand."""
    import torch

    ids, start = encode(tokenizer, record, max_length)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    nll = [-float(log_probs[t - 1, ids[t]]) for t in range(start, len(ids))]
    return sum(nll) / len(nll)


class TestLoss:
    def test_losses_match_a_direct_computation(self, tiny_model: Path) -> None:
        """Per-record losses (batched, right-padded) equal the hand-computed mean response-token cross-entropy."""
        import torch

        model, tokenizer = _load(tiny_model)
        scores = score_model(model, tokenizer, RECORDS, EvalOptions(max_length=64, batch_size=2), torch.device("cpu"))
        for record, loss in zip(RECORDS, scores.losses, strict=True):
            assert loss == pytest.approx(_direct_loss(model, tokenizer, record, 64), rel=1e-4)
        result = report(scores, None, EvalOptions())
        assert result["base"]["loss"] == pytest.approx(sum(scores.losses) / 3, abs=1e-6)
        assert result["base"]["perplexity"] == pytest.approx(math.exp(result["base"]["loss"]), rel=1e-5)
        assert "adapter" not in result and "delta" not in result

    def test_short_answers_only_are_scored_by_exact_match(self, tiny_model: Path) -> None:
        """The long free-text reference gets no exact-match score; the short ones get 0 or 1."""
        import torch

        model, tokenizer = _load(tiny_model)
        scores = score_model(model, tokenizer, RECORDS, EvalOptions(max_length=64), torch.device("cpu"))
        assert scores.matches[2] is None and all(m in (0.0, 1.0) for m in scores.matches[:2])
        assert report(scores, None, EvalOptions())["exact_match_n"] == 2


class TestPair:
    def test_an_untrained_adapter_is_its_base(self, tiny_model: Path) -> None:
        """A fresh LoRA (B = 0) scores exactly like its base: every delta is 0."""
        import torch
        from peft import LoraConfig, get_peft_model

        model, tokenizer = _load(tiny_model)
        peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        result = evaluate_pair(peft_model, tokenizer, RECORDS, EvalOptions(max_length=64), torch.device("cpu"))
        assert result["delta"]["loss"] == 0.0 and result["delta"]["exact_match"] == 0.0
        assert result["delta"]["loss_ci"] == [0.0, 0.0]
        assert result["adapter"]["loss"] == result["base"]["loss"]

    def test_a_changed_adapter_moves_the_loss(self, tiny_model: Path) -> None:
        """Perturbing the LoRA weights changes the adapter's loss and not the base's (the base is the same model)."""
        import torch
        from peft import LoraConfig, get_peft_model

        model, tokenizer = _load(tiny_model)
        alone = score_model(model, tokenizer, RECORDS, EvalOptions(max_length=64), torch.device("cpu"))
        peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.add_(0.5)
        result = evaluate_pair(peft_model, tokenizer, RECORDS, EvalOptions(max_length=64), torch.device("cpu"))
        assert result["base"]["loss"] == pytest.approx(sum(alone.losses) / 3, abs=1e-6)
        assert result["delta"]["loss"] != 0.0
        assert result["delta"]["loss"] == pytest.approx(result["adapter"]["loss"] - result["base"]["loss"], abs=1e-5)

    def test_both_scores_run_in_eval_mode_and_the_model_is_left_as_it_was(self, tiny_model: Path) -> None:
        """The adapter scores first, then the base; afterwards the model is back in train mode with its adapter on."""
        import torch
        from peft import LoraConfig, get_peft_model

        model, _ = _load(tiny_model)
        peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:
                    p.add_(0.5)
        ids = torch.tensor([[1, 2, 3, 4]])

        def logits() -> tuple[bool, Any]:
            with torch.no_grad():
                return peft_model.training, peft_model(input_ids=ids).logits

        peft_model.train()
        (adapter_mode, adapter), (base_mode, base) = adapter_and_base(peft_model, logits)
        assert not adapter_mode and not base_mode and peft_model.training
        assert not torch.allclose(adapter, base)
        peft_model.eval()
        assert torch.allclose(logits()[1], adapter)


class TestExactMatch:
    @pytest.mark.parametrize(
        ("prediction", "reference"),
        [
            ("High.", "high"),
            ("  in 3\n weeks ", "in 3 weeks"),
            ("ACE  inhibitor.", "ace inhibitor"),
            ("J00-J99", "j00-j99"),
        ],
    )
    def test_case_whitespace_and_a_final_full_stop_do_not_count(self, prediction: str, reference: str) -> None:
        """Answers equal up to case, whitespace runs and one final full stop match."""
        assert exact_match(prediction, reference)

    @pytest.mark.parametrize(
        ("prediction", "reference"), [("high!", "high"), ("medium", "high"), ("in 3 weeks", "in 4 weeks")]
    )
    def test_other_differences_count(self, prediction: str, reference: str) -> None:
        """Any other difference is a miss."""
        assert not exact_match(prediction, reference)

    def test_normalisation(self) -> None:
        """Only one final full stop is dropped; inner full stops stay."""
        assert normalise_answer(" A.B. ") == "a.b"
        assert normalise_answer("x..") == "x."


class TestBootstrap:
    def test_seeded_and_around_the_mean(self) -> None:
        """The same values give the same interval; it contains the mean and lies within the data's range."""
        values = [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0]
        a, b = bootstrap(values), bootstrap(values)
        assert a == b and a.mean == pytest.approx(0.7)
        assert 0.0 <= a.low < a.mean < a.high <= 1.0

    def test_matches_a_numpy_reference(self) -> None:
        """The interval is the 2.5/97.5 percentiles of resampled means from numpy's seeded generator."""
        import numpy as np

        values = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
        rng = np.random.default_rng(7)
        means = np.asarray(values)[rng.integers(0, 8, size=(500, 8))].mean(axis=1)
        low, high = np.percentile(means, [2.5, 97.5])
        e = bootstrap(values, resamples=500, seed=7)
        assert (e.low, e.high) == pytest.approx((low, high))

    def test_constant_values_have_no_width(self) -> None:
        """No spread, no interval; an empty sample is refused."""
        e = bootstrap([2.0] * 5)
        assert (e.low, e.mean, e.high) == (2.0, 2.0, 2.0)
        with pytest.raises(ValueError):
            bootstrap([])

    def test_delta_is_paired(self) -> None:
        """A constant per-record improvement has a zero-width delta interval even when the records vary widely."""
        base = ModelScores([1.0, 5.0, 9.0, 2.0], [0.0, 1.0, 0.0, None])
        adapter = ModelScores([0.5, 4.5, 8.5, 1.5], [1.0, 1.0, 0.0, None])
        result = report(base, adapter, EvalOptions())
        assert result["delta"]["loss"] == pytest.approx(-0.5) and result["delta"]["loss_ci"] == [-0.5, -0.5]
        assert result["delta"]["exact_match"] == pytest.approx(1 / 3, abs=1e-5)
        assert result["base"]["loss_ci"][1] - result["base"]["loss_ci"][0] > 1.0


def test_cli_json_report(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`appliance eval --json` prints one object; adapter and delta appear only with --adapter."""
    from peft import LoraConfig, get_peft_model

    monkeypatch.setenv("APPLIANCE_DATA_DIR", str(tmp_path / "var"))
    dataset = write_prepared(tmp_path / "prepared", train=8, evals=4)
    model, _ = _load(tiny_model)
    get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"])).save_pretrained(tmp_path / "a")
    runner = CliRunner()
    args = ["eval", "--base", str(tiny_model), "--dataset", str(dataset), "--max-length", "48", "--json"]
    alone = runner.invoke(app, args)
    assert alone.exit_code == 0, alone.output
    result = json.loads(alone.stdout)
    assert result["n"] == 4 and set(result) >= {"n", "base"} and "adapter" not in result and "delta" not in result
    paired = runner.invoke(app, [*args, "--adapter", str(tmp_path / "a"), "--max-records", "2"])
    assert paired.exit_code == 0, paired.output
    result = json.loads(paired.stdout)
    assert result["n"] == 2 and result["delta"]["loss"] == 0.0
    assert set(result["adapter"]) >= {"loss", "perplexity", "exact_match", "loss_ci"}
    table = runner.invoke(app, args[:-1])
    assert table.exit_code == 0 and "perplexity" in table.output and "Summarise" not in table.output
