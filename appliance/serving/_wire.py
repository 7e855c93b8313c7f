"""What the HTTP clients share: GenerationParams on the wire, SSE lines, answers into Generation/TokenEvent."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from appliance.errors import BackendError
from appliance.protocols import Generation, GenerationParams, TokenEvent

_FINISH = {"length", "eos_token", "stop_sequence"}


def tgi_parameters(params: GenerationParams, adapter: str | None, *, details: bool = True) -> dict[str, Any]:
    """TGI's ``parameters`` object; ``adapter_id`` is set from ``adapter`` only, never from ``extra``."""
    body: dict[str, Any] = {k: v for k, v in params.extra.items() if k != "adapter_id"}
    body.update(
        max_new_tokens=params.max_new_tokens,
        do_sample=params.do_sample,
        details=details,
        return_full_text=params.return_full_text,
        stop=list(params.stop),
    )
    for name in ("temperature", "top_p", "top_k", "repetition_penalty", "seed", "truncate"):
        value = getattr(params, name)
        if value is not None:
            body[name] = value
    body["adapter_id"] = adapter
    return body


def openai_parameters(params: GenerationParams) -> dict[str, Any]:
    """The OpenAI/vLLM completion fields for the same parameters (greedy is temperature 0)."""
    body: dict[str, Any] = {k: v for k, v in params.extra.items() if k not in ("model", "adapter_id")}
    body["max_tokens"] = params.max_new_tokens
    sampling = params.do_sample or params.temperature is not None or params.top_p is not None
    body["temperature"] = (params.temperature if params.temperature is not None else 1.0) if sampling else 0.0
    for name in ("top_p", "top_k", "repetition_penalty", "seed"):
        value = getattr(params, name)
        if value is not None:
            body[name] = value
    if params.stop:
        body["stop"] = list(params.stop)
    if params.details:
        body["logprobs"] = 1
    if params.truncate is not None:
        body["truncate_prompt_tokens"] = params.truncate
    return body


def generation_from_tgi(payload: Mapping[str, Any], headers: Mapping[str, str], want_details: bool) -> Generation:
    """A Generation from TGI's ``/generate`` answer (``details`` requested) and its ``x-*`` headers."""
    details = payload.get("details") or {}
    generated = int(details.get("generated_tokens") or headers.get("x-generated-tokens") or 0)
    prompt = int(headers.get("x-prompt-tokens") or details.get("input_length") or len(details.get("prefill") or []))
    finish = str(details.get("finish_reason") or "length")
    return Generation(
        text=str(payload.get("generated_text", "")),
        generated_tokens=generated,
        prompt_tokens=prompt,
        finish_reason=finish if finish in _FINISH else "length",
        details=details if want_details else None,
    )


async def sse_data(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, Any]]:
    """The JSON payloads of ``data:`` lines, ending at ``[DONE]`` or at the end of the body."""
    async for line in lines:
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        if not data:
            continue
        try:
            parsed = json.loads(data)
        except (ValueError, RecursionError) as exc:  # RecursionError: nested deeper than Python's stack
            raise BackendError("the backend sent a malformed event") from exc
        if isinstance(parsed, dict):
            yield parsed


def token_event_from_tgi(payload: Mapping[str, Any], prompt_tokens: int, want_details: bool) -> TokenEvent:
    """A TokenEvent from one ``/generate_stream`` event (the last carries ``generated_text``)."""
    token = payload.get("token") or {}
    final = None
    if payload.get("generated_text") is not None:
        details = payload.get("details") or {}
        finish = str(details.get("finish_reason") or "length")
        final = Generation(
            text=str(payload["generated_text"]),
            generated_tokens=int(details.get("generated_tokens") or 0),
            prompt_tokens=int(details.get("input_length") or prompt_tokens),
            finish_reason=finish if finish in _FINISH else "length",
            details=details if want_details else None,
        )
    return TokenEvent(
        index=int(payload.get("index", 0)),
        token_id=int(token.get("id", 0)),
        text=str(token.get("text", "")),
        logprob=token.get("logprob"),
        special=bool(token.get("special", False)),
        final=final,
    )
