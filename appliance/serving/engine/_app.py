"""The engine's ASGI app (Litestar): TGI's HTTP API, its OpenAI-compatible routes, health, info and metrics.

Routes: POST ``/`` (``stream`` selects SSE), ``/generate``, ``/generate_stream``, ``/v1/completions``,
``/v1/chat/completions``, ``/tokenize``; GET ``/info``, ``/health``, ``/metrics``, ``/v1/models``;
POST ``/admin/reload`` (bearer token from settings, else loopback callers only). Errors are TGI's
``{"error", "error_type"}`` with 422 (validation), 424 (generation), 429 (overloaded); on SSE routes they arrive
as an event after the 200, as TGI sends them. A client that disconnects cancels its generation.
"""

from __future__ import annotations

import asyncio
import hmac
import importlib.metadata
import ipaddress
import json
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import structlog
from litestar import Litestar, Request, Response, get, post
from litestar.exceptions import HTTPException
from litestar.response import Stream
from litestar.serialization import encode_json
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from appliance.errors import (
    ApplianceError,
    BackendOverloaded,
    BackendUnavailable,
    BackendValidation,
    IntegrityViolation,
    PermissionDenied,
    Unauthenticated,
    ValidationFailed,
)
from appliance.serving.engine._engine import Engine, Job
from appliance.serving.engine._protocol import (
    ChatRequest,
    CompatGenerateRequest,
    CompletionRequest,
    GenerateRequest,
    check_text,
    error_body,
    openai_finish_reason,
    openai_to_parameters,
    parse,
)
from appliance.serving.engine._scheduler import Finished, TokenOut

log = structlog.get_logger(__name__)


def _version() -> str:
    try:
        return importlib.metadata.version("appliance")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


VERSION = _version()
SYSTEM_FINGERPRINT = f"appliance-{VERSION}-embedded"
# TGI's --payload-limit default (Litestar's own is 10 MB): a larger body is a 413 before it is read, parsed
# and tokenized (10 MB of inputs took ~10 s to tokenize).
MAX_BODY_BYTES = 2_000_000


class _Metrics:
    """TGI-named Prometheus metrics in a registry of this app's own."""

    def __init__(self, engine: Engine) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("tgi_request_count", "Generation requests received", registry=r)
        self.success = Counter("tgi_request_success", "Generation requests that succeeded", registry=r)
        self.failure = Counter("tgi_request_failure", "Generation requests that failed", ["err"], registry=r)
        self.duration = Histogram("tgi_request_duration", "Request duration (s)", registry=r)
        self.generated = Histogram(
            "tgi_request_generated_tokens", "Generated tokens per request", registry=r, buckets=(1, 8, 32, 128, 512)
        )
        self.cancelled = Counter("appliance_engine_disconnects", "Requests whose client went away", registry=r)
        dropped = Gauge("appliance_engine_cancelled_sequences", "Sequences dropped after a disconnect", registry=r)
        dropped.set_function(lambda: engine.scheduler.cancelled_total)
        queue = Gauge("tgi_queue_size", "Requests waiting", registry=r)
        batch = Gauge("tgi_batch_current_size", "Sequences in the running batch", registry=r)
        queue.set_function(lambda: engine.scheduler.waiting)
        batch.set_function(lambda: engine.scheduler.running)
        adapters = Gauge("appliance_engine_adapters_loaded", "LoRA adapters loaded", registry=r)
        adapters.set_function(lambda: len(engine.adapters()))
        mixed = Gauge("appliance_engine_mixed_adapter_steps", "Decode steps that mixed adapters", registry=r)
        mixed.set_function(lambda: engine.scheduler.batches_mixed)


def _error_type(exc: ApplianceError) -> tuple[int, str]:
    if isinstance(exc, BackendValidation | ValidationFailed):
        return 422, "validation"
    if isinstance(exc, BackendOverloaded):
        return 429, "overloaded"
    if isinstance(exc, IntegrityViolation):
        return 409, "integrity"
    if isinstance(exc, Unauthenticated):
        return 401, "unauthenticated"
    if isinstance(exc, PermissionDenied):
        return 403, "forbidden"
    if isinstance(exc, BackendUnavailable):
        return 503, "unhealthy"
    return 424, "generation"


def _error_response(exc: ApplianceError) -> Response[Any]:
    status, kind = _error_type(exc)
    return Response(content=error_body(exc.message, kind), status_code=status, media_type="application/json")


def _sse(payload: Any, *, space: bool = False) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data:{' ' if space else ''}{data}\n\n".encode()


def _token_json(tok: TokenOut) -> dict[str, Any]:
    return {"id": tok.id, "text": tok.text, "logprob": tok.logprob, "special": tok.special}


def _top_json(tok: TokenOut) -> list[dict[str, Any]]:
    return [{"id": i, "text": t, "logprob": lp, "special": sp} for i, t, lp, sp in tok.top]


def _generated_text(job: Job, fin: Finished) -> str:
    return job.inputs + fin.text if job.return_full_text else fin.text


def _details(job: Job, fin: Finished) -> dict[str, Any]:
    details: dict[str, Any] = {
        "finish_reason": fin.finish_reason,
        "generated_tokens": len(fin.token_ids),
        "seed": fin.seed,
        "prefill": [{"id": i, "text": t, "logprob": lp} for i, t, lp in fin.prefill],
        "tokens": [_token_json(t) for t in fin.tokens],
    }
    if job.top_n_tokens:
        details["top_tokens"] = [_top_json(t) for t in fin.tokens]
    return details


def _headers(job: Job, fin: Finished | None, started: float) -> dict[str, str]:
    headers = {"x-compute-type": "embedded", "x-prompt-tokens": str(len(job.input_ids))}
    if fin is not None:
        total = time.perf_counter() - started
        headers.update(
            {
                "x-generated-tokens": str(len(fin.token_ids)),
                "x-total-time": str(int(total * 1000)),
                "x-queue-time": str(int(fin.queue_time_s * 1000)),
                "x-inference-time": str(int(fin.inference_time_s * 1000)),
                "x-time-per-token": str(int(fin.inference_time_s * 1000 / max(len(fin.token_ids), 1))),
            }
        )
    return headers


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def _json_body(request: Request[Any, Any, Any]) -> Any:
    try:  # NaN and Infinity are not JSON (serde refuses them; json.loads would not)
        return json.loads(await request.body(), parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than Python's stack
        raise BackendValidation("Failed to parse the request body as JSON") from exc


async def _until_disconnect(request: Request[Any, Any, Any]) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _cancel_on_disconnect(request: Request[Any, Any, Any], work: Awaitable[Any], metrics: _Metrics) -> Any:
    """Await ``work``; if the client disconnects first, cancel it (which cancels the generation)."""
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            return task.result()
        task.cancel()
        metrics.cancelled.inc()
        log.info("engine.client_disconnected")
        raise asyncio.CancelledError
    finally:
        watcher.cancel()


async def _all_or_none(works: list[Awaitable[Finished]]) -> list[Finished]:
    """``asyncio.gather``, except that when one fails the others are cancelled (gather lets them run on)."""
    tasks = [asyncio.ensure_future(w) for w in works]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def create_app(engine: Engine, *, admin_token: str | None = None, install_sighup: bool = False) -> Litestar:
    """The ASGI app serving ``engine``."""
    metrics = _Metrics(engine)

    async def _record(coro: Awaitable[Any]) -> Any:
        started = time.perf_counter()
        metrics.requests.inc()
        try:
            result = await coro
        except ApplianceError as exc:
            metrics.failure.labels(err=_error_type(exc)[1]).inc()
            raise
        metrics.success.inc()
        metrics.duration.observe(time.perf_counter() - started)
        return result

    # --- TGI routes ------------------------------------------------------------------------------------------
    async def _generate(request: Request[Any, Any, Any], req: GenerateRequest, *, compat: bool) -> Response[Any]:
        started = time.perf_counter()

        async def work() -> Response[Any]:
            special = req.add_special_tokens
            prepare = engine.prepare(req.inputs, req.parameters, stream=False, add_special_tokens=special)
            job = await _cancel_on_disconnect(request, prepare, metrics)  # gives back its tokenization place
            fin = await _cancel_on_disconnect(request, engine.generate(job), metrics)
            metrics.generated.observe(len(fin.token_ids))
            body: dict[str, Any] = {"generated_text": _generated_text(job, fin)}
            if req.parameters.details:
                body["details"] = _details(job, fin)
            return Response(content=[body] if compat else body, status_code=200, headers=_headers(job, fin, started))

        return await _record(work())

    def _generate_stream(req: GenerateRequest) -> Stream:
        async def events() -> AsyncIterator[bytes]:
            metrics.requests.inc()
            try:
                job = await engine.prepare(
                    req.inputs, req.parameters, stream=True, add_special_tokens=req.add_special_tokens
                )
                async for item in engine.stream(job):
                    if isinstance(item, TokenOut):
                        event: dict[str, Any] = {"index": item.index + 1, "token": _token_json(item)}
                        if job.top_n_tokens:
                            event["top_tokens"] = _top_json(item)
                        event.update(generated_text=None, details=None)
                        yield _sse(event)
                        continue
                    last = item.last
                    assert last is not None
                    event = {"index": last.index + 1, "token": _token_json(last)}
                    if job.top_n_tokens:
                        event["top_tokens"] = _top_json(last)
                    event["generated_text"] = _generated_text(job, item)
                    event["details"] = (
                        {
                            "finish_reason": item.finish_reason,
                            "generated_tokens": len(item.token_ids),
                            "seed": item.seed,
                            "input_length": item.input_length,
                        }
                        if req.parameters.details
                        else None
                    )
                    metrics.success.inc()
                    metrics.generated.observe(len(item.token_ids))
                    yield _sse(event)
            except ApplianceError as exc:
                kind = _error_type(exc)[1]
                metrics.failure.labels(err=kind).inc()
                yield _sse(error_body(exc.message, kind))

        return Stream(events(), media_type="text/event-stream", headers={"x-accel-buffering": "no"})

    @post("/", status_code=200)
    async def compat_generate(request: Request[Any, Any, Any]) -> Response[Any] | Stream:
        req = parse(CompatGenerateRequest, await _json_body(request))
        if req.stream:
            return _generate_stream(req)
        return await _generate(request, req, compat=True)

    @post("/generate", status_code=200)
    async def generate(request: Request[Any, Any, Any]) -> Response[Any]:
        return await _generate(request, parse(GenerateRequest, await _json_body(request)), compat=False)

    @post("/generate_stream", status_code=200)
    async def generate_stream(request: Request[Any, Any, Any]) -> Stream:
        return _generate_stream(parse(GenerateRequest, await _json_body(request)))

    # --- OpenAI-compatible routes ----------------------------------------------------------------------------
    def _adapter_for_model(model: str | None) -> str | None:
        if model in (None, "", "tgi", engine.model_id):
            return None
        return engine.resolve_adapter(model)

    def _openai_stream(
        jobs: list[Job], chunk: Callable[[int, str, str | None, TokenOut | None], dict[str, Any]], usage: bool
    ) -> Stream:
        async def events() -> AsyncIterator[bytes]:
            metrics.requests.inc()
            prompt_tokens = sum(len(j.input_ids) for j in jobs)
            completion_tokens = 0
            try:
                for index, job in enumerate(jobs):
                    async for item in engine.stream(job):
                        if isinstance(item, TokenOut):
                            yield _sse(chunk(index, item.text, None, item), space=True)
                        else:
                            last = item.last
                            text = last.text if last is not None and not last.special else ""
                            completion_tokens += len(item.token_ids)
                            yield _sse(chunk(index, text, openai_finish_reason(item.finish_reason), last), space=True)
                if usage:
                    final = chunk(0, "", None, None)
                    final["choices"] = []
                    final["usage"] = {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    }
                    yield _sse(final, space=True)
                metrics.success.inc()
            except ApplianceError as exc:
                kind = _error_type(exc)[1]
                metrics.failure.labels(err=kind).inc()
                yield _sse(error_body(exc.message, kind), space=True)
                return
            yield _sse("[DONE]", space=True)

        return Stream(events(), media_type="text/event-stream", headers={"x-accel-buffering": "no"})

    @post("/v1/completions", status_code=200)
    async def completions(request: Request[Any, Any, Any]) -> Response[Any] | Stream:
        req: CompletionRequest = parse(CompletionRequest, await _json_body(request))
        adapter = _adapter_for_model(req.model)
        prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
        if not prompts:
            raise BackendValidation("`prompt` cannot be empty")
        if len(prompts) > engine.limits.max_client_batch_size:
            raise BackendValidation(
                f"Number of prompts must be <= {engine.limits.max_client_batch_size}. Given: {len(prompts)}"
            )
        params = openai_to_parameters(
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            seed=req.seed,
            stop=req.stop,
            frequency_penalty=req.frequency_penalty,
            repetition_penalty=req.repetition_penalty,
            presence_penalty=req.presence_penalty,
            logprobs=bool(req.logprobs),
            top_logprobs=req.logprobs,
            truncate=req.truncate_prompt_tokens,
        )
        jobs = [
            await _cancel_on_disconnect(request, engine.prepare(p, params, stream=req.stream, adapter=adapter), metrics)
            for p in prompts
        ]
        created = int(time.time())
        model = req.model or engine.model_id

        if req.stream:

            def chunk(index: int, text: str, finish: str | None, tok: TokenOut | None) -> dict[str, Any]:
                choice: dict[str, Any] = {"index": index, "text": text, "logprobs": None, "finish_reason": finish}
                if req.logprobs and tok is not None:
                    choice["logprobs"] = {"tokens": [tok.text], "token_logprobs": [tok.logprob]}
                return {
                    "id": "",
                    "object": "text_completion",
                    "created": created,
                    "model": model,
                    "system_fingerprint": SYSTEM_FINGERPRINT,
                    "choices": [choice],
                }

            return _openai_stream(jobs, chunk, bool(req.stream_options and req.stream_options.include_usage))

        async def work() -> Response[Any]:
            results: list[Finished] = await _cancel_on_disconnect(
                request, _all_or_none([engine.generate(j) for j in jobs]), metrics
            )
            choices = []
            for index, (job, fin) in enumerate(zip(jobs, results, strict=True)):
                text = (job.inputs if req.echo else "") + fin.text
                choice: dict[str, Any] = {
                    "index": index,
                    "text": text,
                    "logprobs": None,
                    "finish_reason": openai_finish_reason(fin.finish_reason),
                    "stop_reason": _stop_reason(job, fin),
                }
                if req.logprobs:
                    choice["logprobs"] = {
                        "tokens": [t.text for t in fin.tokens],
                        "token_logprobs": [t.logprob for t in fin.tokens],
                        "top_logprobs": [{tt: lp for _, tt, lp, _ in t.top} for t in fin.tokens],
                    }
                choices.append(choice)
            prompt_tokens = sum(len(j.input_ids) for j in jobs)
            completion_tokens = sum(len(f.token_ids) for f in results)
            return Response(
                content={
                    "id": "",
                    "object": "text_completion",
                    "created": created,
                    "model": model,
                    "system_fingerprint": SYSTEM_FINGERPRINT,
                    "choices": choices,
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    },
                },
                status_code=200,
            )

        return await _record(work())

    @post("/v1/chat/completions", status_code=200)
    async def chat_completions(request: Request[Any, Any, Any]) -> Response[Any] | Stream:
        req: ChatRequest = parse(ChatRequest, await _json_body(request))
        adapter = _adapter_for_model(req.model)
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
        params = openai_to_parameters(
            max_tokens=req.max_completion_tokens or req.max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            seed=req.seed,
            stop=req.stop,
            frequency_penalty=req.frequency_penalty,
            repetition_penalty=req.repetition_penalty,
            presence_penalty=req.presence_penalty,
            logprobs=bool(req.logprobs),
            top_logprobs=req.top_logprobs,
        )
        prepare = engine.prepare(str(prompt), params, stream=req.stream, add_special_tokens=False, adapter=adapter)
        job = await _cancel_on_disconnect(request, prepare, metrics)  # gives back its tokenization place
        created = int(time.time())
        model = req.model or engine.model_id

        def logprobs_of(tokens: list[TokenOut]) -> dict[str, Any] | None:
            if not req.logprobs:
                return None
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

        if req.stream:

            def chunk(index: int, text: str, finish: str | None, tok: TokenOut | None) -> dict[str, Any]:
                return {
                    "id": "",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "system_fingerprint": SYSTEM_FINGERPRINT,
                    "choices": [
                        {
                            "index": index,
                            "delta": {"role": "assistant", "content": text, "tool_calls": None},
                            "logprobs": logprobs_of([tok]) if tok is not None else None,
                            "finish_reason": finish,
                        }
                    ],
                    "usage": None,
                }

            return _openai_stream([job], chunk, bool(req.stream_options and req.stream_options.include_usage))

        async def work() -> Response[Any]:
            fin: Finished = await _cancel_on_disconnect(request, engine.generate(job), metrics)
            metrics.generated.observe(len(fin.token_ids))
            prompt_tokens, completion_tokens = len(job.input_ids), len(fin.token_ids)
            return Response(
                content={
                    "id": "",
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "system_fingerprint": SYSTEM_FINGERPRINT,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": fin.text},
                            "logprobs": logprobs_of(fin.tokens),
                            "finish_reason": openai_finish_reason(fin.finish_reason),
                        }
                    ],
                    "usage": {
                        "prompt_tokens": prompt_tokens,
                        "completion_tokens": completion_tokens,
                        "total_tokens": prompt_tokens + completion_tokens,
                    },
                },
                status_code=200,
            )

        return await _record(work())

    @post("/tokenize", status_code=200)
    async def tokenize(request: Request[Any, Any, Any]) -> Response[bytes]:
        req = parse(GenerateRequest, await _json_body(request))
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

        body = await engine.tokenizers.run(answer)
        return Response(content=body, status_code=200, media_type="application/json")

    # --- information -----------------------------------------------------------------------------------------
    @get("/info", sync_to_thread=False)
    def info() -> dict[str, Any]:
        limits = engine.limits
        return {
            "model_id": engine.model_id,
            "model_sha": None,
            "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": engine.scheduler.max_queue + engine.scheduler.max_batch_size,
            "max_best_of": limits.max_best_of,
            "max_stop_sequences": limits.max_stop_sequences,
            "max_input_tokens": limits.max_input_tokens,
            "max_total_tokens": limits.max_total_tokens,
            "validation_workers": engine.tokenizers.workers,
            "max_client_batch_size": limits.max_client_batch_size,
            "router": "appliance-embedded-engine",
            "version": VERSION,
            "sha": None,
            "docker_label": None,
            "adapters": [{"id": a, "fingerprint": f} for a, f in sorted(engine.fingerprints().items())],
        }

    @get("/health", sync_to_thread=False)
    def health() -> Response[Any]:
        if engine.healthy():
            return Response(content=b"", status_code=200)
        return _error_response(BackendUnavailable("unhealthy"))

    @get("/v1/models", sync_to_thread=False)
    def models() -> dict[str, Any]:
        created = 0
        base = {
            "id": engine.model_id,
            "object": "model",
            "created": created,
            "owned_by": "appliance",
            "root": engine.model_id,
            "parent": None,
        }
        fingerprints = engine.fingerprints()  # what each adapter was loaded with: the gateway routes on it
        data = [base] + [
            {
                "id": a,
                "object": "model",
                "created": created,
                "owned_by": "appliance",
                "root": a,
                "parent": engine.model_id,
                "fingerprint": fingerprints.get(a),
            }
            for a in sorted(engine.adapters())
        ]
        return {"object": "list", "data": data}

    @get("/metrics", sync_to_thread=False)
    def prometheus() -> Response[bytes]:
        return Response(content=generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST, status_code=200)

    @post("/admin/reload", status_code=200)
    async def admin_reload(request: Request[Any, Any, Any]) -> dict[str, Any]:
        if admin_token is not None:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {admin_token}".encode()):
                raise Unauthenticated("a valid admin bearer token is required")
        elif not _is_loopback(request.client.host if request.client else None):
            raise PermissionDenied("reload is allowed from loopback only when no admin token is configured")
        return await engine.reload()

    # --- errors and lifecycle ---------------------------------------------------------------------------------
    def on_appliance_error(_: Request[Any, Any, Any], exc: ApplianceError) -> Response[Any]:
        return _error_response(exc)

    def on_http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
        kind = "validation" if exc.status_code in (400, 422) else "http"
        return Response(content=error_body(str(exc.detail), kind), status_code=exc.status_code)

    def on_unexpected(_: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
        log.error("engine.unexpected_error", error=type(exc).__name__)
        return Response(content=error_body("internal error", "generation"), status_code=500)

    pending: set[asyncio.Task[None]] = set()

    def on_startup() -> None:
        if not install_sighup:
            return
        loop = asyncio.get_running_loop()

        def reload_on_signal() -> None:
            async def run() -> None:
                try:
                    await engine.reload()
                except ApplianceError as exc:
                    log.error("engine.reload_failed", code=exc.code, reason=exc.message)

            task = loop.create_task(run())
            pending.add(task)
            task.add_done_callback(pending.discard)

        try:
            loop.add_signal_handler(signal.SIGHUP, reload_on_signal)
        except (NotImplementedError, RuntimeError, ValueError):
            log.warning("engine.sighup_unavailable")

    return Litestar(
        route_handlers=[
            compat_generate,
            generate,
            generate_stream,
            completions,
            chat_completions,
            tokenize,
            info,
            health,
            models,
            prometheus,
            admin_reload,
        ],
        exception_handlers={
            ApplianceError: on_appliance_error,
            HTTPException: on_http_error,
            Exception: on_unexpected,
        },
        on_startup=[on_startup],
        openapi_config=None,
        request_max_body_size=MAX_BODY_BYTES,
        debug=False,
    )


def _stop_reason(job: Job, fin: Finished) -> str | None:
    if fin.finish_reason != "stop_sequence":
        return None
    for stop in job.stop:
        if stop in fin.text:
            return stop
    return None
