"""The generation-parameter contract: its conversions, its limits, and that it stands on the ground floor."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import ValidationError

from appliance.contracts import API_LIMITS, GenerateParameters, GenerationParams, SamplingParams
from appliance.gateway.schemas import CompletionRequest, InferenceParameters

CONTRACTS = Path(__file__).resolve().parents[2] / "appliance" / "contracts"


def test_contracts_import_no_stage() -> None:
    """Every module of appliance.contracts imports only the standard library, pydantic and appliance.contracts."""
    for path in sorted(CONTRACTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                if name.startswith("appliance"):
                    assert name.startswith("appliance.contracts"), f"{path.name} imports {name}"


def test_gateway_body_to_tgi_wire() -> None:
    """A gateway TGI body becomes the named parameters plus the further TGI ones; the adapter comes only from
    the caller, never from ``extra``."""
    body = InferenceParameters(
        max_new_tokens=7, temperature=0.5, top_k=3, typical_p=0.9, stop=["\n"], decoder_input_details=True
    )
    params = body.to_params()
    assert params == GenerationParams(
        max_new_tokens=7,
        temperature=0.5,
        top_k=3,
        stop=["\n"],
        extra={"typical_p": 0.9, "decoder_input_details": True},
    )
    smuggled = GenerationParams(max_new_tokens=2, extra={"adapter_id": "other-v1", "typical_p": 0.5})
    wire = smuggled.tgi_parameters("triage-v1", details=False)
    assert wire == {
        "typical_p": 0.5,
        "max_new_tokens": 2,
        "do_sample": False,
        "details": False,
        "return_full_text": False,
        "stop": [],
        "adapter_id": "triage-v1",
    }
    assert params.tgi_parameters(None)["temperature"] == 0.5
    assert params.tgi_parameters(None)["adapter_id"] is None


def test_openai_shapes() -> None:
    """OpenAI bodies: temperature 0 is greedy, top_p 1 is none, at most the API's stop sequences; and back to
    OpenAI/vLLM fields with greedy as temperature 0."""
    greedy = CompletionRequest(model="triage@1", prompt="x", temperature=0, top_p=1, stop=list("abcdef")).to_params()
    assert (greedy.do_sample, greedy.temperature, greedy.top_p) == (False, None, None)
    assert greedy.stop == list("abcd")
    assert len(greedy.stop) == API_LIMITS.max_stop_sequences
    assert greedy.openai_parameters() == {"max_tokens": 64, "temperature": 0.0, "stop": list("abcd")}
    sampled = GenerationParams(max_new_tokens=3, top_p=0.9, details=True, truncate=8, extra={"model": "x"})
    assert sampled.openai_parameters() == {
        "max_tokens": 3,
        "temperature": 1.0,
        "top_p": 0.9,
        "logprobs": 1,
        "truncate_prompt_tokens": 8,
    }


def test_engine_mapping_and_sampling_shape() -> None:
    """TGI's OpenAI mapping (temperature 0 greedy, presence penalty as repetition penalty) and the sampling shape."""
    p = GenerateParameters.from_openai(
        max_tokens=5,
        temperature=0.0,
        top_p=None,
        seed=1,
        stop="x",
        frequency_penalty=None,
        repetition_penalty=None,
        presence_penalty=0.5,
        logprobs=True,
        top_logprobs=2,
    )
    assert (p.do_sample, p.temperature, p.repetition_penalty, p.stop, p.top_n_tokens) == (False, None, 1.25, ["x"], 2)
    assert p.sampling() == SamplingParams(repetition_penalty=1.25, seed=1, top_n_tokens=2)
    assert not p.sampling().sampling
    assert GenerateParameters(top_k=4).sampling().sampling


@pytest.mark.parametrize(
    "field,value",
    [
        ("max_new_tokens", API_LIMITS.max_new_tokens + 1),
        ("top_k", API_LIMITS.max_top_k + 1),
        ("seed", API_LIMITS.max_seed + 1),
        ("top_n_tokens", API_LIMITS.max_top_n_tokens + 1),
        ("stop", ["s"] * (API_LIMITS.max_stop_sequences + 1)),
    ],
)
def test_gateway_bounds_are_the_contracts(field: str, value: object) -> None:
    """The gateway's body refuses a value just past the contract's limit."""
    with pytest.raises(ValidationError):
        InferenceParameters.model_validate({field: value})
