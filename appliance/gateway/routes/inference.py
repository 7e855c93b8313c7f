"""``POST /v1/inference/adapter/{name}/{version}`` (TGI body) and its SSE form ``.../stream``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from litestar import Response, post
from litestar.params import FromPath, JSONBody
from litestar.response import Stream

from appliance.errors import ApplianceError
from appliance.gateway.routes._access import api
from appliance.gateway.routes._common import CtxDep, GatewayDep, error_body, sse, trace_headers
from appliance.gateway.schemas import InferenceRequest, InferenceResponse
from appliance.protocols import TokenEvent

SECURITY: list[dict[str, list[str]]] = [{"bearer": []}]


@post(
    "/v1/inference/adapter/{name:str}/{version:str}",
    summary="Generate with an adapter",
    description="`version` is a number or `production`. The gateway picks the backend adapter; clients cannot.",
    tags=["inference"],
    security=SECURITY,
    status_code=200,
    opt=api("inference"),
)
async def inference(
    ctx: CtxDep, gw: GatewayDep, name: FromPath[str], version: FromPath[str], data: JSONBody[InferenceRequest]
) -> Response[Any]:
    admitted = await gw.admit(ctx, name, version, data.inputs, wants_logprobs=data.parameters.wants_logprobs())
    gen = await gw.generate(admitted, data.parameters.to_params())
    body = InferenceResponse(
        generated_text=gen.text, details=dict(gen.details) if data.parameters.details and gen.details else None
    )
    return Response(body.model_dump(exclude_none=True), headers=trace_headers(admitted.audit_id, admitted.ref))


@post(
    "/v1/inference/adapter/{name:str}/{version:str}/stream",
    summary="Generate with an adapter, streamed (SSE, TGI's /generate_stream events)",
    tags=["inference"],
    security=SECURITY,
    status_code=200,
    opt=api("inference"),
)
async def inference_stream(
    ctx: CtxDep, gw: GatewayDep, name: FromPath[str], version: FromPath[str], data: JSONBody[InferenceRequest]
) -> Stream:
    admitted = await gw.admit(ctx, name, version, data.inputs, wants_logprobs=data.parameters.wants_logprobs())
    logprobs_ok = admitted.decision.logprobs  # the policy's decision this request was admitted under
    events = await gw.open_stream(admitted, data.parameters.to_params())

    async def body() -> AsyncIterator[bytes]:
        async for ev in events:
            if isinstance(ev, ApplianceError):
                yield sse(error_body(ev))
                return
            yield sse(tgi_event(ev, logprobs_ok))

    return Stream(
        body(),
        media_type="text/event-stream",
        headers={**trace_headers(admitted.audit_id, admitted.ref), "Cache-Control": "no-store"},
    )


def tgi_event(ev: TokenEvent, logprobs_ok: bool) -> dict[str, Any]:
    final = ev.final
    return {
        "index": ev.index,
        "token": {
            "id": ev.token_id,
            "text": ev.text,
            "logprob": ev.logprob if logprobs_ok else None,
            "special": ev.special,
        },
        "generated_text": final.text if final else None,
        "details": (
            {"finish_reason": final.finish_reason, "generated_tokens": final.generated_tokens, "seed": None}
            if final
            else None
        ),
    }
