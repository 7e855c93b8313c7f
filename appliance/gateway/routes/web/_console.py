"""The analyst console: the page and its streamed generation."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from litestar import Request, get, post
from litestar.params import JSONBody
from litestar.response import Stream

from appliance.errors import ApplianceError, ValidationFailed
from appliance.gateway.routes._access import api, page
from appliance.gateway.routes._common import CtxDep, GatewayDep, error_body, trace_headers
from appliance.gateway.routes.web._pages import render
from appliance.gateway.schemas import MAX_PROMPT_CHARS, InferenceParameters


@get("/console", include_in_schema=False, opt=page("console"))
async def console(request: Request[Any, Any, Any], ctx: CtxDep, gw: GatewayDep) -> Any:
    adapters = await gw.visible_adapters(ctx)
    options = []
    for a in sorted(adapters, key=lambda a: (a.name, a.version)):
        options.append(
            {
                "value": f"{a.name}@{a.version}",
                "label": f"{a.name} v{a.version}" + (" (production)" if a.is_production else ""),
            }
        )
    return render(request, "console.html", ctx, adapters=options, max_chars=MAX_PROMPT_CHARS)


@post("/console/generate", include_in_schema=False, status_code=200, opt=api("console"))  # session + CSRF header
async def console_generate(ctx: CtxDep, gw: GatewayDep, data: JSONBody[dict[str, Any]]) -> Any:
    """The console's streamed answer: ``{"model": "name@version", "prompt": str}`` -> SSE ``{"text": ...}`` events."""
    model, prompt = str(data.get("model", "")), data.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip() or len(prompt) > MAX_PROMPT_CHARS:
        raise ValidationFailed(f"write a prompt of 1 to {MAX_PROMPT_CHARS} characters")
    max_new = data.get("max_new_tokens", 128)
    if not isinstance(max_new, int) or not 1 <= max_new <= 1024:
        raise ValidationFailed("max_new_tokens must be 1-1024")
    name, _, version = model.partition("@")
    admitted = await gw.admit(ctx, name, version or "production", prompt, wants_logprobs=False)
    events = await gw.open_stream(admitted, InferenceParameters(max_new_tokens=max_new).to_params())

    async def body() -> AsyncIterator[bytes]:
        async for ev in events:
            if isinstance(ev, ApplianceError):
                yield b"data:" + json.dumps(error_body(ev)).encode() + b"\n\n"
                return
            payload = {"text": ev.text, "done": ev.final is not None}
            yield b"data:" + json.dumps(payload).encode() + b"\n\n"

    return Stream(
        body(),
        media_type="text/event-stream",
        headers={**trace_headers(admitted.audit_id, admitted.ref), "Cache-Control": "no-store"},
    )
