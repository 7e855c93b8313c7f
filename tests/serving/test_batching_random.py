"""Randomised continuous batching: every request in a busy, mixed batch gets what it gets when it runs alone.

Requests of random lengths, adapters, stops, ``max_new_tokens`` of 1-4 (many finish on their first token, in any
row of their prefill group), streams and cancellations are sent at once to an engine whose batch is smaller than
the number in flight, so groups are prefilled, merged into a running batch and shrunk as rows finish or leave.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.engines import EngineProcess
from tests.serving.conftest import ADAPTER_IDS, free_port, pin_publication_keys

pytestmark = pytest.mark.timeout(300)

NOTE = (
    "the patient was admitted with chest pain radiating to the left arm history of present illness assessment and "
    "plan blood pressure discharge summary medication list reviewed with family follow up in two weeks fever cough "
    "denies nausea vomiting abdominal tenderness normal sinus rhythm"
)
WORDS = NOTE.split()
NEVER = "\u2603never-generated\u2603"  # a stop sequence no output contains


@dataclass
class Case:
    """One request: what it asks for, and how the test treats it."""

    prompt: str
    adapter: str | None
    max_new_tokens: int
    stop: list[str] = field(default_factory=list)
    stream: bool = False
    cancel_after_s: float | None = None  # cancelled this long after it was sent (None: never)


@dataclass(frozen=True)
class Outcome:
    token_ids: tuple[int, ...]
    text: str
    finish_reason: str


@pytest.fixture(scope="module")
def batch_engine(tiny_model: Path, lora_adapters: dict[str, tuple[Path, str]]) -> Iterator[Any]:
    """An engine with a small batch (4) and a long queue, so that many requests in flight batch in groups."""
    from appliance.serving import AdapterSpec
    from appliance.serving.engine import Engine, Limits

    specs = [AdapterSpec(id=aid, path=p, fingerprint=fp) for aid, (p, fp) in lora_adapters.items()]
    eng = Engine.start(
        tiny_model,
        specs,
        device="cpu",
        limits=Limits(max_input_tokens=256, max_total_tokens=512),
        max_batch_size=4,
        max_queue=256,
    )
    yield eng
    eng.close()


async def _run(engine: Any, case: Case) -> Outcome:
    from appliance.contracts import GenerateParameters

    params = GenerateParameters(max_new_tokens=case.max_new_tokens, stop=case.stop, details=True)
    job = await engine.prepare(case.prompt, params, stream=case.stream, adapter=case.adapter)
    if not case.stream:
        done = await engine.generate(job)
        return Outcome(tuple(done.token_ids), done.text, done.finish_reason)
    streamed: list[int] = []
    async for item in engine.stream(job):
        if hasattr(item, "finish_reason"):
            assert tuple(streamed) == tuple(item.token_ids[:-1])  # the stream carried every token before the last
            return Outcome(tuple(item.token_ids), item.text, item.finish_reason)
        streamed.append(item.id)
    raise AssertionError("stream ended without its final answer")


def _prompt(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.choice([1, 2, 3, 5, 8, 13, 21, 34])))


async def _draw_cases(engine: Any, rng: random.Random, count: int) -> list[Case]:
    """Random requests; their stops are cut from what each prompt generates alone, so many stop at once."""
    from appliance.contracts import GenerateParameters

    cases: list[Case] = []
    for _ in range(count):
        case = Case(_prompt(rng), rng.choice([None, *ADAPTER_IDS]), rng.choice([1, 1, 2, 3, 4]))
        probe = await engine.prepare(
            case.prompt, GenerateParameters(max_new_tokens=4), stream=False, adapter=case.adapter
        )
        pieces = [t.text for t in (await engine.generate(probe)).tokens]
        roll = rng.random()
        if roll < 0.35 and any(pieces):  # stops on the first token that shows text (often the first one)
            case.stop = [next(p for p in pieces if p)]
        elif roll < 0.5 and any(pieces):  # stops within a token, or on a later one
            piece = rng.choice([p for p in pieces if p])
            case.stop = [NEVER, piece[: rng.randint(1, len(piece))]]
        elif roll < 0.6:
            case.stop = [NEVER]
        case.stream = rng.random() < 0.3
        if rng.random() < 0.15:
            case.cancel_after_s = rng.choice([0.0, 0.002, 0.01, 0.03])
        cases.append(case)
    return cases


async def _together(engine: Any, cases: list[Case]) -> list[Outcome | None]:
    """All at once; a cancelled request gives None (or its outcome, if it finished before the cancel)."""
    tasks = [asyncio.create_task(_run(engine, c)) for c in cases]

    async def cancel(task: asyncio.Task[Outcome], delay: float) -> None:
        await asyncio.sleep(delay)
        task.cancel()

    cancels = [cancel(t, c.cancel_after_s) for t, c in zip(tasks, cases, strict=True) if c.cancel_after_s is not None]
    await asyncio.gather(*cancels)
    results = await asyncio.gather(*tasks, return_exceptions=True)
    out: list[Outcome | None] = []
    for case, result in zip(cases, results, strict=True):
        if isinstance(result, asyncio.CancelledError) and case.cancel_after_s is not None:
            out.append(None)
        elif isinstance(result, BaseException):
            raise AssertionError(f"a request failed in the batch: {result!r}") from result
        else:
            out.append(result)
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_random_batches_match_each_request_run_alone(batch_engine: Any, seed: int) -> None:
    """Random mixed requests in flight together give the tokens, text and finish reason each gives alone."""
    rng = random.Random(seed)
    cases = await _draw_cases(batch_engine, rng, 40)
    # the tiny random model seldom picks its own EOS: one token it often picks first ends sequences here too
    runner = batch_engine.runner
    eos_before = runner.eos_ids
    open_ended = [replace(c, stop=[], stream=False, max_new_tokens=1) for c in cases if c.max_new_tokens > 1]
    firsts = [(await _run(batch_engine, c)).token_ids[0] for c in open_ended]
    runner.eos_ids = eos_before | {max(set(firsts), key=firsts.count)}
    try:
        alone = [await _run(batch_engine, replace(c, cancel_after_s=None)) for c in cases]
        first_token_ends = [i for i, o in enumerate(alone) if len(o.token_ids) == 1]
        assert {o.finish_reason for o in alone} == {"length", "eos_token", "stop_sequence"}
        assert len(first_token_ends) >= len(cases) // 3  # many rows finish in their prefill, in any position
        before = batch_engine.scheduler.batches_mixed
        together = await _together(batch_engine, cases)
    finally:
        runner.eos_ids = eos_before
    assert batch_engine.scheduler.batches_mixed > before  # the adapters really shared decode steps
    for i, (case, got, want) in enumerate(zip(cases, together, alone, strict=True)):
        if got is None:
            continue
        assert got == want, f"request {i} ({case}) differs from running it alone"
    assert sum(o is not None for o in together) >= len(cases) // 2


@pytest.fixture(scope="module")
def engine_process(tiny_model: Path, adapter_list: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`appliance serve` in its own process (batch 4, queue 64) on a loopback port."""
    pinned = pin_publication_keys(tmp_path_factory.mktemp("engine-keys") / "publication-keys.json")
    engine = EngineProcess(
        tiny_model,
        tmp_path_factory.mktemp("engine-var"),
        free_port(),
        adapters=adapter_list,
        env={"APPLIANCE_SERVING__PUBLICATION_PUBLIC_KEYS": str(pinned)},  # the list is signed by the test registry
        args=["--max-batch-size", "4", "--max-queue", "64"],
    )
    try:
        engine.start()
        engine.wait_healthy(120)
        yield engine.url
    finally:
        engine.stop()


@pytest.mark.slow
async def test_concurrent_generate_over_http_all_answer_200(engine_process: str) -> None:
    """200 /generate requests, 24 in flight, max_new_tokens 1-4, mixed adapters: every one 200, as answered alone."""
    rng = random.Random(7)
    bodies = [
        {
            "inputs": _prompt(rng),
            "parameters": {"max_new_tokens": rng.randint(1, 4), "adapter_id": rng.choice(["", *ADAPTER_IDS])},
        }
        for _ in range(24)
    ]
    async with httpx.AsyncClient(base_url=engine_process, timeout=60) as client:
        alone = []
        for body in bodies:
            reply = await client.post("/generate", json=body)
            assert reply.status_code == 200, reply.text
            alone.append(reply.json()["generated_text"])
        gate = asyncio.Semaphore(24)
        order = [rng.randrange(len(bodies)) for _ in range(200)]

        async def send(i: int) -> tuple[int, int, str]:
            async with gate:
                reply = await client.post("/generate", json=bodies[i])
            return i, reply.status_code, reply.text

        answers = await asyncio.gather(*(send(i) for i in order))
    statuses = [status for _, status, _ in answers]
    assert statuses.count(200) == len(order), {s: statuses.count(s) for s in set(statuses)}
    for i, _, text in answers:
        assert httpx.Response(200, content=text).json()["generated_text"] == alone[i]
