"""OpenAI-compatible ``/v1/chat/completions``, ``/v1/completions`` (``model`` = ``name@version``) and ``/v1/models``."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from litestar import Response, get, post
from litestar.params import JSONBody
from litestar.response import Stream

from appliance.errors import ApplianceError, NotFound
from appliance.gateway._service import Ctx, Gateway
from appliance.gateway.routes._access import api
from appliance.gateway.routes._common import FINISH, CtxDep, GatewayDep, error_body, sse, trace_headers
from appliance.gateway.schemas import ChatCompletionRequest, CompletionRequest, render_chat
from appliance.ids import random_uuid

SECURITY: list[dict[str, list[str]]] = [{"bearer": []}]


async def _model_name(gw: Gateway, ctx: Ctx, model: str) -> tuple[str, str]:
    """``name@version`` split; anything else is an audited 404."""
    name, sep, version = model.partition("@")
    if not sep:
        raise await gw.deny(NotFound("model must be 'name@version' (version: a number or 'production')"), ctx=ctx)
    return name, version


async def _complete(gw: Gateway, ctx: Ctx, data: ChatCompletionRequest | CompletionRequest, chat: bool) -> Any:
    name, version = await _model_name(gw, ctx, data.model)
    prompt = render_chat(data.messages) if isinstance(data, ChatCompletionRequest) else data.prompt
    admitted = await gw.admit(ctx, name, version, prompt, wants_logprobs=data.wants_logprobs())
    ref = admitted.ref
    params = data.to_params()
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{random_uuid().hex}"
    created = int(time.time())
    model = f"{ref.name}@{ref.version}"
    headers = trace_headers(admitted.audit_id, ref)
    if not data.stream:
        gen = await gw.generate(admitted, params)
        finish = FINISH.get(gen.finish_reason, "stop")
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if data.wants_logprobs() and gen.details:
            choice["logprobs"] = {"content": list(gen.details.get("tokens", []))}
        if chat:
            choice["message"] = {"role": "assistant", "content": gen.text}
        else:
            choice["text"] = gen.text
        usage = {
            "prompt_tokens": gen.prompt_tokens,
            "completion_tokens": gen.generated_tokens,
            "total_tokens": gen.prompt_tokens + gen.generated_tokens,
        }
        obj = "chat.completion" if chat else "text_completion"
        body = {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice], "usage": usage}
        return Response(body, headers=headers)

    events = await gw.open_stream(admitted, params)
    obj = "chat.completion.chunk" if chat else "text_completion"

    async def body_stream() -> AsyncIterator[bytes]:
        async for ev in events:
            if isinstance(ev, ApplianceError):
                yield sse({"error": error_body(ev)})
                return
            finish = FINISH.get(ev.final.finish_reason, "stop") if ev.final else None
            piece: dict[str, Any] = {"index": 0, "finish_reason": finish}
            if chat:
                piece["delta"] = {"content": ev.text} if ev.index else {"role": "assistant", "content": ev.text}
            else:
                piece["text"] = ev.text
            yield sse({"id": rid, "object": obj, "created": created, "model": model, "choices": [piece]})
        yield b"data: [DONE]\n\n"

    return Stream(body_stream(), media_type="text/event-stream", headers={**headers, "Cache-Control": "no-store"})


@post(
    "/v1/chat/completions",
    summary="OpenAI-compatible chat completion",
    tags=["openai"],
    security=SECURITY,
    status_code=200,
    opt=api("openai"),
)
async def chat_completions(ctx: CtxDep, gw: GatewayDep, data: JSONBody[ChatCompletionRequest]) -> Any:
    return await _complete(gw, ctx, data, chat=True)


@post(
    "/v1/completions",
    summary="OpenAI-compatible completion",
    tags=["openai"],
    security=SECURITY,
    status_code=200,
    opt=api("openai"),
)
async def completions(ctx: CtxDep, gw: GatewayDep, data: JSONBody[CompletionRequest]) -> Any:
    return await _complete(gw, ctx, data, chat=False)


@get("/v1/models", summary="The adapters the caller may use", tags=["openai"], security=SECURITY, opt=api("models"))
async def models(ctx: CtxDep, gw: GatewayDep) -> Response[Any]:
    items = []
    for a in await gw.visible_adapters(ctx):
        items.append(
            {"id": f"{a.name}@{a.version}", "object": "model", "owned_by": "appliance", "fingerprint": a.fingerprint}
        )
        if a.is_production:
            items.append(
                {"id": f"{a.name}@production", "object": "model", "owned_by": "appliance", "fingerprint": a.fingerprint}
            )
    return Response({"object": "list", "data": items}, headers={"X-Audit-Id": "-", "X-Adapter-Fingerprint": "-"})
