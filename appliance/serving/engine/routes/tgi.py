"""TGI's generation routes: POST ``/`` (``stream`` selects SSE), ``/generate``, ``/generate_stream``, ``/tokenize``.

Errors on the stream routes arrive as an SSE event after the 200, as TGI sends them.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, Response, post
from litestar.response import Stream
from litestar.serialization import encode_json

from appliance.errors import ApplianceError, BackendValidation
from appliance.serving.engine import _answers as answers
from appliance.serving.engine._protocol import CompatGenerateRequest, GenerateRequest, check_text, parse
from appliance.serving.engine._scheduler import TokenOut
from appliance.serving.engine.routes._common import (
    SSE_HEADERS,
    EngineState,
    EngineStateDep,
    cancel_on_disconnect,
    json_body,
)


async def _generate(
    request: Request[Any, Any, Any], es: EngineState, req: GenerateRequest, *, compat: bool
) -> Response[Any]:
    started = time.perf_counter()
    engine, metrics = es.engine, es.metrics

    async def work() -> Response[Any]:
        special = req.add_special_tokens
        prepare = engine.prepare(req.inputs, req.parameters, stream=False, add_special_tokens=special)
        job = await cancel_on_disconnect(request, prepare, metrics)  # gives back its tokenization place
        fin = await cancel_on_disconnect(request, engine.generate(job), metrics)
        metrics.generated.observe(len(fin.token_ids))
        body: dict[str, Any] = {"generated_text": answers.generated_text(job, fin)}
        if req.parameters.details:
            body["details"] = answers.details(job, fin)
        headers = answers.headers(job, fin, started)
        return Response(content=[body] if compat else body, status_code=200, headers=headers)

    return await es.record(work())


def _generate_stream(es: EngineState, req: GenerateRequest) -> Stream:
    engine, metrics = es.engine, es.metrics

    async def events() -> AsyncIterator[bytes]:
        metrics.requests.inc()
        try:
            job = await engine.prepare(
                req.inputs, req.parameters, stream=True, add_special_tokens=req.add_special_tokens
            )
            with_details = req.parameters.details
            async for item in engine.stream(job):
                if isinstance(item, TokenOut):
                    yield answers.sse(answers.stream_event(job, item, None, with_details=with_details))
                    continue
                last = item.last
                assert last is not None
                metrics.success.inc()
                metrics.generated.observe(len(item.token_ids))
                yield answers.sse(answers.stream_event(job, last, item, with_details=with_details))
        except ApplianceError as exc:
            yield answers.sse(es.failed(exc))

    return Stream(events(), media_type="text/event-stream", headers=SSE_HEADERS)


@post("/", status_code=200)
async def compat_generate(request: Request[Any, Any, Any], engine_state: EngineStateDep) -> Response[Any] | Stream:
    req = parse(CompatGenerateRequest, await json_body(request))
    if req.stream:
        return _generate_stream(engine_state, req)
    return await _generate(request, engine_state, req, compat=True)


@post("/generate", status_code=200)
async def generate(request: Request[Any, Any, Any], engine_state: EngineStateDep) -> Response[Any]:
    return await _generate(request, engine_state, parse(GenerateRequest, await json_body(request)), compat=False)


@post("/generate_stream", status_code=200)
async def generate_stream(request: Request[Any, Any, Any], engine_state: EngineStateDep) -> Stream:
    return _generate_stream(engine_state, parse(GenerateRequest, await json_body(request)))


@post("/tokenize", status_code=200)
async def tokenize(request: Request[Any, Any, Any], engine_state: EngineStateDep) -> Response[bytes]:
    req = parse(GenerateRequest, await json_body(request))
    if not req.inputs:
        raise BackendValidation("`inputs` cannot be empty")
    check_text(req.inputs, "inputs")
    text = req.inputs

    def answer(tokenizer: Any) -> bytes:  # the body too: 2 MB of inputs is ~45 MB of JSON
        enc = tokenizer(text, add_special_tokens=req.add_special_tokens, return_offsets_mapping=True)
        return encode_json(
            [
                {"id": int(i), "text": text[start:stop], "start": int(start), "stop": int(stop)}
                for i, (start, stop) in zip(enc["input_ids"], enc["offset_mapping"], strict=True)
            ]
        )

    body = await engine_state.engine.tokenizers.run(answer)
    return Response(content=body, status_code=200, media_type="application/json")


ROUTES = [compat_generate, generate, generate_stream, tokenize]
