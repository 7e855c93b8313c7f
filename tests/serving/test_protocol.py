"""TGI's HTTP protocol details: validation rules and messages, error bodies, answer shapes, OpenAI routes."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.timeout(300)


def _post(url: str, path: str, body: Any) -> httpx.Response:
    return httpx.post(url + path, json=body, timeout=60)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"temperature": 0}, "`temperature` must be strictly positive"),
        ({"top_p": 1.0}, "`top_p` must be > 0.0 and < 1.0"),
        ({"top_p": 0}, "`top_p` must be > 0.0 and < 1.0"),
        ({"typical_p": 1.5}, "`typical_p` must be > 0.0 and < 1.0"),
        ({"top_k": 0}, "`top_k` must be strictly positive"),
        ({"max_new_tokens": 0}, "`max_new_tokens` must be strictly positive"),
        ({"repetition_penalty": 0}, "`repetition_penalty` must be strictly positive"),
        ({"frequency_penalty": 3}, "`frequency_penalty` must be >= -2.0 and <= 2.0"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "`stop` supports up to 4 stop sequences. Given: 5"),
        ({"top_n_tokens": 9}, "`top_n_tokens` must be >= 0 and <= 5. Given: 9"),
        ({"truncate": 0}, "`truncate` must be strictly positive and less than 256. Given: 0"),
        ({"best_of": 2}, "`best_of` != 1 is not allowed for this endpoint"),
        ({"max_new_tokens": 510}, "`inputs` tokens + `max_new_tokens` must be <= 512."),
        ({"adapter_id": "unknown-v1"}, "adapter 'unknown-v1' is not loaded"),
        ({"max_new_tokens": "many"}, "Failed to deserialize the JSON body"),
    ],
)
def test_invalid_parameters_get_tgi_validation_errors(
    engine_url: str, parameters: dict[str, Any], message: str
) -> None:
    """Each bad parameter is a 422 ``{"error", "error_type": "validation"}`` with TGI's message."""
    response = _post(engine_url, "/generate", {"inputs": "the patient was", "parameters": parameters})
    assert response.status_code == 422
    body = response.json()
    assert set(body) == {"error", "error_type"} and body["error_type"] == "validation"
    assert body["error"].startswith(message)


def test_empty_and_too_long_inputs(engine_url: str) -> None:
    """Empty inputs and inputs over max_input_tokens are refused with TGI's messages."""
    empty = _post(engine_url, "/generate", {"inputs": "", "parameters": {}})
    assert empty.status_code == 422 and empty.json()["error"] == "`inputs` cannot be empty"
    long = _post(engine_url, "/generate", {"inputs": "a b " * 200, "parameters": {"max_new_tokens": 1}})
    assert long.status_code == 422 and long.json()["error"].startswith("`inputs` must have less than 256 tokens")
    truncated = _post(
        engine_url, "/generate", {"inputs": "a b " * 200, "parameters": {"max_new_tokens": 1, "truncate": 8}}
    )
    assert truncated.status_code == 200
    assert truncated.headers["x-prompt-tokens"] == "8"


def test_malformed_json_is_a_validation_error(engine_url: str) -> None:
    """A body that is not JSON gets a TGI-shaped 422, not a stack trace."""
    response = httpx.post(engine_url + "/generate", content=b"{not json", timeout=30)
    assert response.status_code == 422
    assert response.json()["error_type"] == "validation"


@pytest.mark.parametrize(
    ("route", "raw", "message"),
    [
        ("/generate", '{"inputs": "x", "parameters": {"temperature": NaN, "max_new_tokens": 2}}', "Failed to parse"),
        ("/generate", '{"inputs": "x", "parameters": {"repetition_penalty": Infinity}}', "Failed to parse"),
        ("/generate", '{"inputs": "x", "parameters": {"do_sample": true, "seed": 18446744073709551616}}', "`seed`"),
        ("/generate", '{"inputs": "the \\ud800 patient", "parameters": {"max_new_tokens": 2}}', "Failed to deser"),
        ("/tokenize", '{"inputs": "the \\ud800 patient"}', "Failed to deserialize"),
        ("/generate", "[" * 50_000 + "]" * 50_000, "Failed to parse"),  # serde's recursion limit is 128
    ],
)
def test_values_tgi_cannot_deserialize_are_422_not_5xx(engine_url: str, route: str, raw: str, message: str) -> None:
    """NaN/Infinity, a seed over u64, lone surrogates and deep nesting are a 422 (TGI's serde refuses them)."""
    response = httpx.post(engine_url + route, content=raw, headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == 422, response.text
    assert response.json()["error_type"] == "validation" and response.json()["error"].startswith(message)


async def test_nan_sampling_values_are_refused_before_the_scheduler(engine: Any) -> None:
    """NaN passes ``<= 0`` checks; it must be refused at validation, not fail a prefill shared with others."""
    from appliance.contracts import GenerateParameters
    from appliance.errors import BackendValidation

    for field in ("temperature", "repetition_penalty"):
        with pytest.raises(BackendValidation, match=f"`{field}` must be strictly positive"):
            await engine.prepare("the patient", GenerateParameters(**{field: float("nan")}), stream=False)


def test_stream_errors_arrive_as_sse_events(engine_url: str) -> None:
    """On /generate_stream a validation error is an SSE event after a 200, as TGI sends it."""
    response = _post(engine_url, "/generate_stream", {"inputs": "x", "parameters": {"top_k": -1}})
    assert response.status_code == 200
    events = [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:")]
    assert events == [{"error": "`top_k` must be strictly positive", "error_type": "validation"}]
    prefill = _post(engine_url, "/generate_stream", {"inputs": "x", "parameters": {"decoder_input_details": True}})
    assert "`decoder_input_details` == true is not supported when streaming tokens" in prefill.text


def test_generate_answer_shape_and_details(engine_url: str) -> None:
    """/generate returns an object; POST / a one-element list; details carry prefill, tokens and top tokens."""
    params = {"max_new_tokens": 4, "details": True, "decoder_input_details": True, "top_n_tokens": 3}
    body = _post(engine_url, "/generate", {"inputs": "the patient was", "parameters": params}).json()
    details = body["details"]
    assert details["finish_reason"] == "length" and details["generated_tokens"] == 4
    assert details["prefill"][0]["logprob"] is None and all(p["logprob"] <= 0 for p in details["prefill"][1:])
    assert len(details["tokens"]) == 4 and all(len(top) == 3 for top in details["top_tokens"])
    assert all(
        top[0]["logprob"] >= t["logprob"] for top, t in zip(details["top_tokens"], details["tokens"], strict=True)
    )
    compat = _post(engine_url, "/", {"inputs": "the patient was", "parameters": {"max_new_tokens": 4}}).json()
    assert isinstance(compat, list) and compat[0]["generated_text"] == body["generated_text"]
    assert "details" not in compat[0]


def test_return_full_text_and_stop_sequences(engine_url: str) -> None:
    """return_full_text prepends the prompt; a stop sequence ends generation with finish_reason stop_sequence."""
    prompt = "the patient was"
    first = _post(engine_url, "/generate", {"inputs": prompt, "parameters": {"max_new_tokens": 6, "details": True}})
    tokens = first.json()["details"]["tokens"]
    stop = next(t["text"] for t in tokens[1:] if t["text"].strip())
    stopped = _post(
        engine_url,
        "/generate",
        {"inputs": prompt, "parameters": {"max_new_tokens": 6, "details": True, "stop": [stop]}},
    ).json()
    assert stopped["details"]["finish_reason"] == "stop_sequence"
    assert stopped["generated_text"].endswith(stop)
    full = _post(
        engine_url, "/generate", {"inputs": prompt, "parameters": {"max_new_tokens": 6, "return_full_text": True}}
    )
    assert full.json()["generated_text"] == prompt + first.json()["generated_text"]


def test_openai_completions_and_models(engine_url: str) -> None:
    """/v1/completions selects the adapter by ``model``; streams end with [DONE]; /v1/models lists adapters."""
    models = httpx.get(engine_url + "/v1/models", timeout=30).json()
    ids = {m["id"]: m["parent"] for m in models["data"]}
    assert ids["triage-v1"] == ids["notes-v1"] == ids["coding-v1"] is not None
    body = {"prompt": "the patient was", "max_tokens": 5, "temperature": 0}
    base = _post(engine_url, "/v1/completions", body).json()
    adapted = _post(engine_url, "/v1/completions", {**body, "model": "triage-v1"}).json()
    assert adapted["model"] == "triage-v1" and adapted["usage"]["completion_tokens"] == 5
    assert adapted["choices"][0]["text"] != base["choices"][0]["text"]
    streamed = _post(engine_url, "/v1/completions", {**body, "model": "triage-v1", "stream": True})
    lines = [line for line in streamed.text.splitlines() if line.startswith("data:")]
    assert lines[-1] == "data: [DONE]"
    text = "".join(json.loads(line[5:])["choices"][0]["text"] for line in lines[:-1])
    assert text == adapted["choices"][0]["text"]
    unknown = _post(engine_url, "/v1/completions", {**body, "model": "nope-v1"})
    assert unknown.status_code == 422 and unknown.json()["error_type"] == "validation"


def test_info_health_metrics(engine_url: str) -> None:
    """/info reports the model and limits, /health is 200, /metrics is Prometheus text with TGI's names."""
    info = httpx.get(engine_url + "/info", timeout=30).json()
    assert info["model_id"] == "tiny" and info["max_total_tokens"] == 512 and info["max_stop_sequences"] == 4
    assert httpx.get(engine_url + "/health", timeout=30).status_code == 200
    metrics = httpx.get(engine_url + "/metrics", timeout=30)
    assert metrics.status_code == 200
    assert "tgi_request_count_total" in metrics.text and "appliance_engine_adapters_loaded 3.0" in metrics.text


def test_tokenize_route(engine_url: str) -> None:
    """/tokenize returns TGI's tokens with character offsets that rebuild the input."""
    tokens = _post(engine_url, "/tokenize", {"inputs": "the patient was"}).json()
    assert tokens and all(set(t) == {"id", "text", "start", "stop"} for t in tokens)
    assert "".join(t["text"] for t in tokens) == "the patient was"
    assert _post(engine_url, "/tokenize", {"inputs": ""}).status_code == 422


def test_a_body_over_tgis_payload_limit_is_refused_unread(engine_url: str) -> None:
    """TGI refuses bodies over 2 MB (--payload-limit) with a 413; the engine must not parse and tokenize them."""
    big = json.dumps({"inputs": "the patient was seen " * 100_000, "parameters": {"max_new_tokens": 1}})
    assert 2_000_000 < len(big) < 2_200_000
    for route in ("/generate", "/tokenize", "/v1/completions"):
        response = httpx.post(engine_url + route, content=big, headers={"content-type": "application/json"}, timeout=60)
        assert response.status_code == 413, (route, response.status_code)
    small = {"inputs": "the patient was seen " * 10, "parameters": {"max_new_tokens": 1}}
    assert _post(engine_url, "/generate", small).status_code == 200


async def test_an_empty_adapter_id_is_the_base_model_only_on_tgis_wire(engine: Any, engine_url: str) -> None:
    """TGI's server reads an absent and an empty ``adapter_id`` alike (the base model): the TGI routes do too.

    Everywhere else an empty id names no adapter: ``resolve_adapter`` and an explicit ``adapter=""`` refuse it.
    """
    from appliance.contracts import GenerateParameters
    from appliance.errors import BackendValidation

    body = {"inputs": "the patient was", "parameters": {"max_new_tokens": 6}}
    base = _post(engine_url, "/generate", body)
    empty = _post(engine_url, "/generate", {**body, "parameters": {"max_new_tokens": 6, "adapter_id": ""}})
    assert base.status_code == empty.status_code == 200 and empty.json() == base.json()
    with pytest.raises(BackendValidation, match="empty adapter id"):
        engine.resolve_adapter("")
    with pytest.raises(BackendValidation, match="empty adapter id"):
        await engine.prepare("the patient was", GenerateParameters(max_new_tokens=6), stream=False, adapter="")
    assert engine.resolve_adapter(None) is None and engine.resolve_adapter("triage-v1") == "triage-v1"


def test_openai_routes_pass_their_own_sampling_fields_to_the_engine(engine_url: str) -> None:
    """Each OpenAI route maps the fields it names its own way: completions' ``logprobs`` count (top tokens keyed by
    text, so equal texts fold), ``top_k`` and ``truncate_prompt_tokens``; chat's ``max_completion_tokens`` and
    ``top_logprobs``."""
    base = {"model": "triage-v1", "seed": 3, "temperature": 0.7}
    done = _post(engine_url, "/v1/completions", {**base, "prompt": "the patient was", "max_tokens": 3, "logprobs": 2})
    assert done.status_code == 200, done.text
    choice = done.json()["choices"][0]
    assert done.json()["usage"]["completion_tokens"] == 3
    assert len(choice["logprobs"]["tokens"]) == 3 and all(0 < len(t) <= 2 for t in choice["logprobs"]["top_logprobs"])
    refused = _post(engine_url, "/v1/completions", {**base, "prompt": "x", "max_tokens": 2, "top_k": 0})
    assert refused.status_code == 422 and "`top_k` must be strictly positive" in refused.text
    long_prompt = "the patient was seen today for a follow-up of a cough " * 3
    cut = _post(
        engine_url, "/v1/completions", {**base, "prompt": long_prompt, "max_tokens": 1, "truncate_prompt_tokens": 4}
    )
    assert cut.status_code == 200, cut.text
    assert cut.json()["usage"]["prompt_tokens"] == 4
    messages = [{"role": "user", "content": "the patient was"}]
    chat = {
        **base,
        "messages": messages,
        "max_tokens": 9,
        "max_completion_tokens": 2,
        "logprobs": True,
        "top_logprobs": 3,
    }
    answer = _post(engine_url, "/v1/chat/completions", chat)
    assert answer.status_code == 200, answer.text
    content = answer.json()["choices"][0]["logprobs"]["content"]
    assert answer.json()["usage"]["completion_tokens"] == 2
    assert len(content) == 2 and all(len(t["top_logprobs"]) == 3 for t in content)
