"""The embedded engine against the official TGI clients: ``text-generation`` and ``huggingface_hub``."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.timeout(300)


def test_text_generation_client_generate(engine_url: str) -> None:
    """text_generation.Client.generate parses the answer of POST / (details forced on by the client)."""
    from text_generation import Client

    response = Client(engine_url, timeout=60).generate("the patient was", max_new_tokens=6, seed=1)
    assert response.details.generated_tokens == 6
    assert len(response.details.tokens) == 6
    assert response.details.finish_reason.value == "length"
    assert response.generated_text == "".join(t.text for t in response.details.tokens if not t.special)


def test_text_generation_client_generate_stream(engine_url: str) -> None:
    """text_generation.Client.generate_stream parses every SSE event; only the last carries the text."""
    from text_generation import Client

    events = list(Client(engine_url, timeout=60).generate_stream("the patient was", max_new_tokens=5))
    assert len(events) == 5
    assert all(e.generated_text is None for e in events[:-1])
    assert events[-1].generated_text is not None and events[-1].details is not None
    assert events[-1].details.generated_tokens == 5
    assert [e.token.id for e in events] == [e.token.id for e in events]  # parsed ids


async def test_text_generation_async_client(engine_url: str) -> None:
    """text_generation.AsyncClient generate and generate_stream agree token for token (greedy)."""
    from text_generation import AsyncClient

    client = AsyncClient(engine_url, timeout=60)
    whole = await client.generate("history of present illness", max_new_tokens=7, stop_sequences=["zzzz"])
    streamed = [e async for e in client.generate_stream("history of present illness", max_new_tokens=7)]
    assert [t.id for t in whole.details.tokens] == [e.token.id for e in streamed]
    assert streamed[-1].generated_text == whole.generated_text


def test_text_generation_client_sampling_options(engine_url: str) -> None:
    """Sampling parameters the client validates itself are accepted and the seed is reported back."""
    from text_generation import Client

    client = Client(engine_url, timeout=60)
    kwargs = {"max_new_tokens": 5, "do_sample": True, "temperature": 0.8, "top_k": 20, "top_p": 0.9, "seed": 7}
    first = client.generate("the patient was", **kwargs, repetition_penalty=1.2, top_n_tokens=2)
    second = client.generate("the patient was", **kwargs, repetition_penalty=1.2, top_n_tokens=2)
    assert first.details.seed == 7
    assert first.generated_text == second.generated_text  # same seed, same tokens
    assert first.details.top_tokens is not None and len(first.details.top_tokens[0]) == 2


def test_text_generation_client_validation_error(engine_url: str) -> None:
    """A TGI validation error reaches the official client as its ValidationError."""
    from text_generation import Client
    from text_generation.errors import ValidationError

    with pytest.raises(ValidationError, match="max_new_tokens"):
        Client(engine_url, timeout=60).generate("x " * 300, max_new_tokens=400)


def test_inference_client_text_generation_with_adapter(engine_url: str) -> None:
    """huggingface_hub.InferenceClient.text_generation routes adapter_id and returns details."""
    from huggingface_hub import InferenceClient

    client = InferenceClient(base_url=engine_url, timeout=60)
    base = client.text_generation("the patient was", max_new_tokens=8, details=True)
    adapted = client.text_generation("the patient was", max_new_tokens=8, details=True, adapter_id="triage-v1")
    assert base.details is not None and adapted.details is not None
    assert [t.id for t in base.details.tokens] != [t.id for t in adapted.details.tokens]
    plain = client.text_generation("the patient was", max_new_tokens=8, adapter_id="triage-v1")
    assert plain == adapted.generated_text


def test_inference_client_streaming(engine_url: str) -> None:
    """InferenceClient.text_generation(stream=True) yields token texts and detailed events."""
    from huggingface_hub import InferenceClient

    client = InferenceClient(base_url=engine_url, timeout=60)
    texts = list(client.text_generation("the patient was", max_new_tokens=6, stream=True, adapter_id="notes-v1"))
    detailed = list(
        client.text_generation("the patient was", max_new_tokens=6, stream=True, details=True, adapter_id="notes-v1")
    )
    assert len(texts) == 6 and len(detailed) == 6
    assert detailed[-1].generated_text == "".join(texts)


def test_inference_client_chat_completion(engine_url: str) -> None:
    """InferenceClient.chat_completion, plain and streamed, with ``model`` selecting the adapter."""
    from huggingface_hub import InferenceClient

    client = InferenceClient(base_url=engine_url, timeout=60)
    messages = [{"role": "user", "content": "Summarise the note."}]
    out = client.chat_completion(messages, max_tokens=6, model="coding-v1")
    assert out.choices[0].finish_reason == "length"
    assert out.usage.completion_tokens == 6
    chunks = list(client.chat_completion(messages, max_tokens=6, model="coding-v1", stream=True))
    assert chunks[-1].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == out.choices[0].message.content


def test_inference_client_unknown_adapter_is_an_error(engine_url: str) -> None:
    """An unknown adapter_id is refused as a TGI validation error, never answered by the base model."""
    from huggingface_hub import InferenceClient
    from huggingface_hub.errors import ValidationError

    client = InferenceClient(base_url=engine_url, timeout=60)
    with pytest.raises(ValidationError, match="not-published-v9"):
        client.text_generation("the patient was", max_new_tokens=4, adapter_id="not-published-v9")
