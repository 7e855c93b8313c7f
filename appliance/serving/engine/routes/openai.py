"""The OpenAI-compatible routes: ``/v1/completions`` and ``/v1/chat/completions`` (``model`` picks the adapter).

Every answer and chunk is built by ``_answers.openai_body``; streams end with ``data: [DONE]``, or with an error
event after the 200.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from litestar import Request, Response, post
from litestar.response import Stream

from appliance.contracts import GenerateParameters
from appliance.errors import ApplianceError, BackendValidation
from appliance.serving.engine import _answers as answers
from appliance.serving.engine._engine import Engine, Job
from appliance.serving.engine._protocol import ChatRequest, CompletionRequest, StreamOptions, parse
from appliance.serving.engine._scheduler import Finished, TokenOut
from appliance.serving.engine.routes._common import (
    SSE_HEADERS,
    EngineState,
    EngineStateDep,
    all_or_none,
    cancel_on_disconnect,
    json_body,
)

# (choice index, text, finish reason, the token or None) -> one stream chunk
Chunk = Callable[[int, str, str | None, TokenOut | None], dict[str, Any]]


def _adapter_for_model(engine: Engine, model: str | None) -> str | None:
    if model in (None, "", "tgi", engine.model_id):
        return None
    return engine.resolve_adapter(model)


def _include_usage(options: StreamOptions | None) -> bool:
    return bool(options and options.include_usage)


def _openai_stream(es: EngineState, jobs: list[Job], chunk: Chunk, include_usage: bool) -> Stream:
    async def events() -> AsyncIterator[bytes]:
        es.metrics.requests.inc()
        prompt_tokens = sum(len(j.input_ids) for j in jobs)
        completion_tokens = 0
        try:
            for index, job in enumerate(jobs):
                async for item in es.engine.stream(job):
                    if isinstance(item, TokenOut):
                        yield answers.sse(chunk(index, item.text, None, item), space=True)
                    else:
                        last = item.last
                        text = last.text if last is not None and not last.special else ""
                        completion_tokens += len(item.token_ids)
                        yield answers.sse(chunk(index, text, answers.finish_reason(item), last), space=True)
            if include_usage:
                final = chunk(0, "", None, None)
                final["choices"] = []
                final["usage"] = answers.usage(prompt_tokens, completion_tokens)
                yield answers.sse(final, space=True)
            es.metrics.success.inc()
        except ApplianceError as exc:
            yield answers.sse(es.failed(exc), space=True)
            return
        yield answers.sse("[DONE]", space=True)

    return Stream(events(), media_type="text/event-stream", headers=SSE_HEADERS)


def _completion_logprobs(fin: Finished) -> dict[str, Any]:
    return {
        "tokens": [t.text for t in fin.tokens],
        "token_logprobs": [t.logprob for t in fin.tokens],
        "top_logprobs": [{tt: lp for _, tt, lp, _ in t.top} for t in fin.tokens],
    }


def _chat_logprobs(tokens: list[TokenOut]) -> dict[str, Any]:
    return {
        "content": [
            {
                "token": t.text,
                "logprob": t.logprob,
                "top_logprobs": [{"token": tt, "logprob": lp} for _, tt, lp, _ in t.top],
            }
            for t in tokens
        ]
    }


# the OpenAI sampling fields both routes name alike, passed to ``from_openai`` as they are
_SHARED_SAMPLING = frozenset(
    {"temperature", "top_p", "seed", "stop", "frequency_penalty", "repetition_penalty", "presence_penalty"}
)


def _parameters(
    req: CompletionRequest | ChatRequest,
    *,
    max_tokens: int | None,
    top_logprobs: int | None,
    top_k: int | None = None,
    truncate: int | None = None,
) -> GenerateParameters:
    """The engine's parameters (TGI's mapping, ``from_openai``); the fields each route names its own way are given."""
    shared = req.model_dump(include=set(_SHARED_SAMPLING))
    return GenerateParameters.from_openai(
        max_tokens=max_tokens,
        top_k=top_k,
        logprobs=bool(req.logprobs),
        top_logprobs=top_logprobs,
        truncate=truncate,
        **shared,
    )


@post("/v1/completions", status_code=200)
async def completions(request: Request[Any, Any, Any], engine_state: EngineStateDep) -> Response[Any] | Stream:
    engine, metrics = engine_state.engine, engine_state.metrics
    req: CompletionRequest = parse(CompletionRequest, await json_body(request))
    adapter = _adapter_for_model(engine, req.model)
    prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
    if not prompts:
        raise BackendValidation("`prompt` cannot be empty")
    if len(prompts) > engine.limits.max_client_batch_size:
        raise BackendValidation(
            f"Number of prompts must be <= {engine.limits.max_client_batch_size}. Given: {len(prompts)}"
        )
    params = _parameters(
        req, max_tokens=req.max_tokens, top_logprobs=req.logprobs, top_k=req.top_k, truncate=req.truncate_prompt_tokens
    )
    jobs = [
        await cancel_on_disconnect(request, engine.prepare(p, params, stream=req.stream, adapter=adapter), metrics)
        for p in prompts
    ]
    created = int(time.time())
    model = req.model or engine.model_id

    if req.stream:

        def chunk(index: int, text: str, finish: str | None, tok: TokenOut | None) -> dict[str, Any]:
            choice: dict[str, Any] = {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
            if req.logprobs and tok is not None:
                choice["logprobs"] = {"tokens": [tok.text], "token_logprobs": [tok.logprob]}
            return answers.openai_body("text_completion", created=created, model=model, choices=[choice])

        return _openai_stream(engine_state, jobs, chunk, _include_usage(req.stream_options))

    async def work() -> Response[Any]:
        results: list[Finished] = await cancel_on_disconnect(
            request, all_or_none([engine.generate(j) for j in jobs]), metrics
        )
        choices = [
            {
                "index": index,
                "text": (job.inputs if req.echo else "") + fin.text,
                "logprobs": _completion_logprobs(fin) if req.logprobs else None,
                "finish_reason": answers.finish_reason(fin),
                "stop_reason": answers.stop_reason(job, fin),
            }
            for index, (job, fin) in enumerate(zip(jobs, results, strict=True))
        ]
        used = answers.usage(sum(len(j.input_ids) for j in jobs), sum(len(f.token_ids) for f in results))
        body = answers.openai_body("text_completion", created=created, model=model, choices=choices, usage=used)
        return Response(content=body, status_code=200)

    return await engine_state.record(work())


@post("/v1/chat/completions", status_code=200)
async def chat_completions(request: Request[Any, Any, Any], engine_state: EngineStateDep) -> Response[Any] | Stream:
    engine, metrics = engine_state.engine, engine_state.metrics
    req: ChatRequest = parse(ChatRequest, await json_body(request))
    adapter = _adapter_for_model(engine, req.model)
    if req.tools:
        raise BackendValidation("tools are not supported by this engine")
    if req.n not in (None, 1):
        raise BackendValidation("`n` must be 1")
    messages = [{"role": m.role, "content": m.text()} for m in req.messages]
    if not messages:
        raise BackendValidation("`messages` cannot be empty")
    try:
        prompt = engine.runner.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:
        raise BackendValidation(f"Template error: {type(exc).__name__}") from exc
    params = _parameters(req, max_tokens=req.max_completion_tokens or req.max_tokens, top_logprobs=req.top_logprobs)
    prepare = engine.prepare(str(prompt), params, stream=req.stream, add_special_tokens=False, adapter=adapter)
    job = await cancel_on_disconnect(request, prepare, metrics)  # gives back its tokenization place
    created = int(time.time())
    model = req.model or engine.model_id

    if req.stream:

        def chunk(index: int, text: str, finish: str | None, tok: TokenOut | None) -> dict[str, Any]:
            choice = {
                "index": index,
                "delta": {"role": "assistant", "content": text, "tool_calls": None},
                "logprobs": _chat_logprobs([tok]) if req.logprobs and tok is not None else None,
                "finish_reason": finish,
            }
            kind = "chat.completion.chunk"
            return answers.openai_body(kind, created=created, model=model, choices=[choice], usage=None)

        return _openai_stream(engine_state, [job], chunk, _include_usage(req.stream_options))

    async def work() -> Response[Any]:
        fin: Finished = await cancel_on_disconnect(request, engine.generate(job), metrics)
        metrics.generated.observe(len(fin.token_ids))
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": fin.text},
            "logprobs": _chat_logprobs(fin.tokens) if req.logprobs else None,
            "finish_reason": answers.finish_reason(fin),
        }
        used = answers.usage(len(job.input_ids), len(fin.token_ids))
        body = answers.openai_body("chat.completion", created=created, model=model, choices=[choice], usage=used)
        return Response(content=body, status_code=200)

    return await engine_state.record(work())


ROUTES = [completions, chat_completions]
