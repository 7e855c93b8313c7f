"""The engine's batching: mixed-adapter batches, the bounded queue, cancellation on disconnect."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.serving.conftest import ServerThread

pytestmark = pytest.mark.timeout(300)

PROMPTS = [
    "the patient was",
    "history of present illness: chest pain radiating to the left arm",
    "assessment and plan",
    "blood pressure",
    "discharge summary for a",
    "the",
    "medication list reviewed with the patient and family",
    "follow up in two weeks",
]


def _reference_tokens(base: Path, adapter_dir: Path | None, prompt: str, max_new_tokens: int) -> list[int]:
    """Greedy tokens from plain transformers ``generate`` (with peft for an adapter), one request alone."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    model: Any = AutoModelForCausalLM.from_pretrained(base)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    return [int(t) for t in out[0, ids.shape[1] :]]


async def test_mixed_adapter_batch_matches_one_at_a_time(engine: Any) -> None:
    """Eight concurrent requests over the base model and three adapters give the tokens each gives alone."""
    from appliance.contracts import GenerateParameters

    adapters = [None, "triage-v1", "notes-v1", "coding-v1", "triage-v1", None, "coding-v1", "notes-v1"]
    params = GenerateParameters(max_new_tokens=12)
    jobs = [await engine.prepare(p, params, stream=False, adapter=a) for p, a in zip(PROMPTS, adapters, strict=True)]
    alone = [(await engine.generate(job)).token_ids for job in jobs]
    mixed_before = engine.scheduler.batches_mixed
    together = [f.token_ids for f in await asyncio.gather(*(engine.generate(job) for job in jobs))]
    assert engine.scheduler.batches_mixed > mixed_before  # they really ran as mixed-adapter batches
    assert together == alone
    assert len({tuple(t) for t in alone}) > 1


def test_engine_matches_plain_transformers_generate(
    engine: Any, tiny_model: Path, lora_adapters: dict[str, tuple[Path, str]]
) -> None:
    """The engine's greedy tokens equal transformers' generate on the same model and adapter."""
    from appliance.contracts import GenerateParameters

    async def run(prompt: str, adapter: str | None) -> list[int]:
        job = await engine.prepare(prompt, GenerateParameters(max_new_tokens=10), stream=False, adapter=adapter)
        return list((await engine.generate(job)).token_ids)

    for adapter in (None, "triage-v1"):
        expected = _reference_tokens(tiny_model, lora_adapters[adapter][0] if adapter else None, PROMPTS[1], 10)
        assert asyncio.run(run(PROMPTS[1], adapter)) == expected


@pytest.fixture(scope="module")
def small_engine(tiny_model: Path, lora_adapters: dict[str, tuple[Path, str]]) -> Iterator[Any]:
    """An engine with room for one running and one waiting request, served on loopback."""
    from appliance.serving import AdapterSpec
    from appliance.serving.engine import Engine, Limits, create_app

    path, fingerprint = lora_adapters["triage-v1"]
    eng = Engine.start(
        tiny_model,
        [AdapterSpec(id="triage-v1", path=path, fingerprint=fingerprint)],
        device="cpu",
        limits=Limits(max_input_tokens=256, max_total_tokens=1024),
        max_batch_size=1,
        max_queue=1,
    )
    with ServerThread(create_app(eng)) as server:
        yield eng, server.url
    eng.close()


async def _wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


async def test_full_queue_answers_429_overloaded(small_engine: Any) -> None:
    """With the queue full, /generate answers 429 and /generate_stream an overloaded SSE event; then both work."""
    engine, url = small_engine
    body = {"inputs": "the patient was", "parameters": {"max_new_tokens": 3}}
    engine.scheduler.hold()
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            first = asyncio.create_task(client.post("/generate", json=body))
            await _wait_for(lambda: engine.scheduler.waiting == 1)
            refused = await client.post("/generate", json=body)
            assert refused.status_code == 429
            assert refused.json() == {"error": "Model is overloaded", "error_type": "overloaded"}
            streamed = await client.post("/generate_stream", json=body)
            assert streamed.status_code == 200
            assert 'data:{"error":"Model is overloaded","error_type":"overloaded"}' in streamed.text
            engine.scheduler.release()
            assert (await first).status_code == 200
            assert (await client.post("/generate", json=body)).status_code == 200
    finally:
        engine.scheduler.release()


async def test_disconnect_cancels_generation(small_engine: Any) -> None:
    """A client that goes away (stream closed, or a request that timed out) stops its generation early."""
    engine, url = small_engine
    long = {"inputs": "the patient was", "parameters": {"max_new_tokens": 900}}
    before = engine.scheduler.cancelled_total
    async with (
        httpx.AsyncClient(base_url=url, timeout=30) as client,
        client.stream("POST", "/generate_stream", json=long) as response,
    ):
        async for line in response.aiter_lines():
            if line.startswith("data:"):
                break  # one token is enough; leave
    await _wait_for(lambda: engine.scheduler.cancelled_total > before)
    await _wait_for(lambda: engine.scheduler.running == 0)
    before = engine.scheduler.cancelled_total
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(30, read=0.3)) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.post("/generate", json=long)
    await _wait_for(lambda: engine.scheduler.cancelled_total > before)
    await _wait_for(lambda: engine.scheduler.running == 0)


def test_stacked_lora_path_matches_peft_mixed_batches(engine: Any) -> None:
    """The stacked-weights mixed-batch path gives peft's ``adapter_names=`` logits (same math, one gather)."""
    import torch
    from transformers import DynamicCache

    runner = engine.runner
    adapters = [None, "triage-v1", "notes-v1", "coding-v1"]

    def compare() -> float:
        ids = torch.tensor([runner.tokenizer("the patient was")["input_ids"]] * len(adapters))
        mask = torch.ones_like(ids)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        fast = runner.forward(ids, mask, positions, DynamicCache(), adapters, all_logits=True)
        assert runner._gathered
        runner._gathered = False
        try:
            slow = runner.forward(ids, mask, positions, DynamicCache(), adapters, all_logits=True)
        finally:
            runner._gathered = True
        assert not torch.allclose(fast[0], fast[1])  # the adapters change the logits
        return float((fast - slow).abs().max())

    assert engine.scheduler.control(compare).result(timeout=60) < 1e-4


async def test_failed_forward_pass_is_a_424_and_the_engine_goes_on(
    small_engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A forward pass that raises fails its request with TGI's 424 generation error; the next request works."""
    engine, url = small_engine
    real = engine.runner.forward
    calls = {"n": 0}

    def failing_once(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.runner, "forward", failing_once)
    body = {"inputs": "the patient was", "parameters": {"max_new_tokens": 3}}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        failed = await client.post("/generate", json=body)
        assert failed.status_code == 424
        assert failed.json() == {"error": "generation failed (RuntimeError)", "error_type": "generation"}
        assert (await client.post("/generate", json=body)).status_code == 200
    assert engine.healthy()


async def test_requests_joining_a_running_batch_keep_their_tokens(engine: Any) -> None:
    """Requests admitted while a batch runs (caches merged, then rows dropped) give the tokens they give alone."""
    from appliance.contracts import GenerateParameters

    specs = [
        (PROMPTS[1], "triage-v1", 40),
        (PROMPTS[5], None, 6),
        (PROMPTS[6], "notes-v1", 20),
        (PROMPTS[3], "coding-v1", 9),
    ]
    jobs = [await engine.prepare(p, GenerateParameters(max_new_tokens=n), stream=False, adapter=a) for p, a, n in specs]
    alone = [(await engine.generate(job)).token_ids for job in jobs]
    first = asyncio.create_task(engine.generate(jobs[0]))
    await _wait_for(lambda: engine.scheduler.running >= 1)
    await asyncio.sleep(0.01)  # a few decode steps in
    assert not first.done()  # the others join a batch that is running
    later = [asyncio.create_task(engine.generate(job)) for job in jobs[1:]]
    results = [(await first).token_ids] + [(await task).token_ids for task in later]
    assert results == alone


async def test_a_tiny_temperature_does_not_fail_the_requests_batched_with_it(engine: Any) -> None:
    """A valid but tiny temperature overflows the scaled logits; that row must not fail its batchmates."""
    from appliance.contracts import GenerateParameters

    good = await engine.prepare(PROMPTS[0], GenerateParameters(max_new_tokens=4), stream=False)
    tiny = await engine.prepare(PROMPTS[2], GenerateParameters(max_new_tokens=4, temperature=1e-45), stream=False)
    engine.scheduler.hold()
    try:
        tasks = [asyncio.create_task(engine.generate(job)) for job in (good, tiny)]
        await _wait_for(lambda: engine.scheduler.waiting == 2)
    finally:
        engine.scheduler.release()
    first, second = await asyncio.gather(*tasks)  # both admitted in one prefill
    assert len(first.token_ids) == 4 and len(second.token_ids) == 4


async def test_a_refused_prompt_of_a_completions_batch_cancels_its_siblings(small_engine: Any) -> None:
    """/v1/completions with several prompts: when one is refused (429), the others stop instead of running on."""
    engine, url = small_engine
    body = {"prompt": ["the patient was", "blood pressure"], "max_tokens": 900}
    before = engine.scheduler.cancelled_total
    engine.scheduler.hold()  # the queue (1) takes the first prompt, the second is refused
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            refused = await client.post("/v1/completions", json=body)
        assert refused.status_code == 429
    finally:
        engine.scheduler.release()
    await _wait_for(lambda: engine.scheduler.cancelled_total > before)  # dropped, not generated for nobody
    await _wait_for(lambda: engine.scheduler.running == 0 and engine.scheduler.waiting == 0)


async def test_an_abandoned_waiting_request_gives_its_queue_place_back(small_engine: Any) -> None:
    """A queued request whose client went away must not keep the next request out with a 429."""
    from appliance.contracts import GenerateParameters

    engine, _url = small_engine
    long = await engine.prepare(PROMPTS[0], GenerateParameters(max_new_tokens=900), stream=False)
    short = await engine.prepare(PROMPTS[3], GenerateParameters(max_new_tokens=2), stream=False)
    running = asyncio.create_task(engine.generate(long))
    try:
        await _wait_for(lambda: engine.scheduler.running == 1)
        abandoned = asyncio.create_task(engine.generate(short))
        await _wait_for(lambda: engine.scheduler.waiting == 1)  # the batch (1) and the queue (1) are full
        abandoned.cancel()
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        admitted = asyncio.create_task(engine.generate(short))  # the abandoned one's place: not a 429
        await asyncio.sleep(0.05)
        assert not admitted.done() or admitted.exception() is None
    finally:
        running.cancel()
    assert len((await admitted).token_ids) == 2


async def test_requests_in_prefill_count_against_the_bound(small_engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """While a request is being prefilled it holds its batch slot: one running + one waiting, the next is a 429."""
    import threading

    from appliance.contracts import GenerateParameters
    from appliance.errors import BackendOverloaded

    engine, _url = small_engine
    real = engine.runner.forward
    entered, go = threading.Event(), threading.Event()

    def slow_prefill(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        go.wait(5)
        return real(*args, **kwargs)

    monkeypatch.setattr(engine.runner, "forward", slow_prefill)
    job = await engine.prepare(PROMPTS[0], GenerateParameters(max_new_tokens=2), stream=False)
    tasks = [asyncio.create_task(engine.generate(job))]
    try:
        await _wait_for(entered.is_set)  # the first is in its prefill (batch of 1 full)
        tasks.append(asyncio.create_task(engine.generate(job)))  # waits (queue of 1)
        await asyncio.sleep(0)
        with pytest.raises(BackendOverloaded):
            await engine.generate(job)
    finally:
        go.set()
    for task in tasks:
        assert len((await task).token_ids) == 2


async def test_tokenizing_a_large_prompt_leaves_the_event_loop_free(engine: Any, engine_url: str) -> None:
    """While a ~1.9 MB prompt is tokenized, /health and short requests answer; concurrent tokenizations all work."""
    big = ("history: chest pain radiating to the left arm, 37.2 C. " * 40_000)[:1_900_000]
    started = time.perf_counter()
    engine.runner.tokenizer(big)
    tokenize_s = time.perf_counter() - started  # what the event loop was blocked for before the fix
    assert tokenize_s > 0.3, tokenize_s
    short = {"inputs": "the patient was", "parameters": {"max_new_tokens": 2}}
    health_s: list[float] = []
    short_s: list[float] = []
    async with httpx.AsyncClient(base_url=engine_url, timeout=120) as client:
        large = asyncio.create_task(
            client.post("/generate", json={"inputs": big, "parameters": {"max_new_tokens": 1, "truncate": 8}})
        )
        while not large.done():
            t0 = time.perf_counter()
            assert (await client.get("/health")).status_code == 200
            health_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            assert (await client.post("/generate", json=short)).status_code == 200
            short_s.append(time.perf_counter() - t0)
        answer = await large
        assert answer.status_code == 200 and answer.headers["x-prompt-tokens"] == "8"
        # before the fix the loop was blocked for tokenize_s: whichever request came during it waited that long
        assert max(health_s) < tokenize_s / 3 and max(short_s) < tokenize_s / 2, (health_s, short_s, tokenize_s)
        assert len(health_s) >= 3, (health_s, tokenize_s)  # the probes overlapped the tokenization

        texts = [f"{PROMPTS[i % len(PROMPTS)]} {i} " * 2_000 for i in range(6)]  # more than the workers
        answers = await asyncio.gather(*(client.post("/tokenize", json={"inputs": t}) for t in texts))
    for text, reply in zip(texts, answers, strict=True):
        assert reply.status_code == 200
        assert [t["id"] for t in reply.json()] == engine.runner.tokenizer(text)["input_ids"]
    from appliance.contracts import GenerateParameters

    params = GenerateParameters(max_new_tokens=1, truncate=4)
    jobs = await asyncio.gather(*(engine.prepare(t, params, stream=False) for t in texts))
    assert [j.input_ids for j in jobs] == [engine.runner.tokenizer(t)["input_ids"][-4:] for t in texts]


async def test_requests_waiting_for_tokenization_count_against_a_bound(small_engine: Any) -> None:
    """Beyond ``validation_workers + max_queue`` large prompts pending tokenization, one more is 429 at once;
    the admitted ones succeed, and every place is given back (done, or the client left while it waited)."""
    engine, url = small_engine
    tokenizers = engine.tokenizers
    big = ("history: chest pain radiating to the left arm, 37.2 C. " * 20_000)[:1_000_000]
    started = time.perf_counter()
    engine.runner.tokenizer(big)
    tokenize_s = time.perf_counter() - started
    assert tokenize_s > 0.2, tokenize_s
    body = {"inputs": big, "parameters": {"max_new_tokens": 1, "truncate": 8}}
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:

        async def timed() -> tuple[int, float, Any]:
            t0 = time.perf_counter()
            reply = await client.post("/generate", json=body)
            return reply.status_code, time.perf_counter() - t0, reply.json()

        replies = await asyncio.gather(*(timed() for _ in range(7)))
        refused = [(took, js) for status, took, js in replies if status == 429]
        assert sorted(status for status, _, _ in replies) == [200] * 3 + [429] * 4, replies
        for took, js in refused:  # refused before any tokenization ended, not after waiting for a worker
            assert took < tokenize_s, (took, tokenize_s)
            assert js == {"error": "Model is overloaded", "error_type": "overloaded"}
        assert tokenizers.bound == tokenizers.workers + engine.scheduler.max_queue == 3
        await _wait_for(lambda: tokenizers.pending == 0)

        # a client that leaves while waiting for a worker gives its place back at once
        gate = threading.Event()
        busy = [asyncio.create_task(tokenizers.run(lambda _tok: gate.wait(30))) for _ in range(tokenizers.workers)]
        try:
            await _wait_for(lambda: tokenizers.pending == tokenizers.workers)
            async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(30, read=0.3)) as impatient:
                with pytest.raises(httpx.ReadTimeout):
                    await impatient.post("/generate", json=body)
            await _wait_for(lambda: tokenizers.pending == tokenizers.workers, timeout=5)
        finally:
            gate.set()
        assert await asyncio.gather(*busy) == [True] * tokenizers.workers
        assert (await client.post("/generate", json=body)).status_code == 200
    await _wait_for(lambda: tokenizers.pending == 0)


async def test_other_routes_give_back_their_tokenization_place_on_disconnect(small_engine: Any) -> None:
    """OpenAI routes and /generate_stream: a client that leaves while waiting for a worker frees its place."""
    engine, url = small_engine
    tokenizers = engine.tokenizers
    gate = threading.Event()
    busy = [asyncio.create_task(tokenizers.run(lambda _tok: gate.wait(30))) for _ in range(tokenizers.workers)]
    try:
        await _wait_for(lambda: tokenizers.pending == tokenizers.workers)
        bodies = {
            "/v1/completions": {"prompt": "the patient was", "max_tokens": 1},
            "/v1/chat/completions": {"messages": [{"role": "user", "content": "the patient was"}], "max_tokens": 1},
            "/generate_stream": {"inputs": "the patient was", "parameters": {"max_new_tokens": 1}},
        }
        async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(30, read=0.3)) as impatient:
            for path, body in bodies.items():
                with pytest.raises(httpx.ReadTimeout):
                    await impatient.post(path, json=body)
                await _wait_for(lambda: tokenizers.pending == tokenizers.workers, timeout=5)
    finally:
        gate.set()
    await asyncio.gather(*busy)
    await _wait_for(lambda: tokenizers.pending == 0)
