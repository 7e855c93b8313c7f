"""What the HTTP clients share: SSE lines, answers into Generation/TokenEvent.

The parameters' wire shapes are the contract's own (``GenerationParams.tgi_parameters``/``.openai_parameters``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

from appliance.errors import BackendError
from appliance.protocols import Generation, TokenEvent

_FINISH = {"length", "eos_token", "stop_sequence"}


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
