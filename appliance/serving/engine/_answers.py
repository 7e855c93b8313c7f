"""The engine's answer shapes, each built in one place: TGI's bodies, events and ``x-*`` headers, and OpenAI's.

Used by the HTTP routes (``routes/``) and by ``LocalBackend`` (the same details in the same process).
"""

from __future__ import annotations

import json
import time
from typing import Any

from appliance.contracts import package_version
from appliance.serving.engine._engine import Job
from appliance.serving.engine._protocol import openai_finish_reason
from appliance.serving.engine._scheduler import Finished, TokenOut

VERSION = package_version(unknown="0+unknown")
SYSTEM_FINGERPRINT = f"appliance-{VERSION}-embedded"


# --- TGI -----------------------------------------------------------------------------------------------------
def sse(payload: Any, *, space: bool = False) -> bytes:
    """One SSE event (TGI's ``data:{...}``; OpenAI routes put a space after the colon)."""
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data:{' ' if space else ''}{data}\n\n".encode()


def token_json(tok: TokenOut) -> dict[str, Any]:
    return {"id": tok.id, "text": tok.text, "logprob": tok.logprob, "special": tok.special}


def top_json(tok: TokenOut) -> list[dict[str, Any]]:
    return [{"id": i, "text": t, "logprob": lp, "special": sp} for i, t, lp, sp in tok.top]


def generated_text(job: Job, fin: Finished) -> str:
    return job.inputs + fin.text if job.return_full_text else fin.text


def details(job: Job, fin: Finished) -> dict[str, Any]:
    """TGI's ``details`` of a finished ``/generate`` answer."""
    body: dict[str, Any] = {
        "finish_reason": fin.finish_reason,
        "generated_tokens": len(fin.token_ids),
        "seed": fin.seed,
        "prefill": [{"id": i, "text": t, "logprob": lp} for i, t, lp in fin.prefill],
        "tokens": [token_json(t) for t in fin.tokens],
    }
    if job.top_n_tokens:
        body["top_tokens"] = [top_json(t) for t in fin.tokens]
    return body


def stream_event(job: Job, tok: TokenOut, fin: Finished | None, *, with_details: bool) -> dict[str, Any]:
    """One ``/generate_stream`` event; the last (``fin`` given) carries the text and, when asked, the details."""
    event: dict[str, Any] = {"index": tok.index + 1, "token": token_json(tok)}
    if job.top_n_tokens:
        event["top_tokens"] = top_json(tok)
    if fin is None:
        event.update(generated_text=None, details=None)
        return event
    event["generated_text"] = generated_text(job, fin)
    event["details"] = (
        {
            "finish_reason": fin.finish_reason,
            "generated_tokens": len(fin.token_ids),
            "seed": fin.seed,
            "input_length": fin.input_length,
        }
        if with_details
        else None
    )
    return event


def headers(job: Job, fin: Finished | None, started: float) -> dict[str, str]:
    """TGI's ``x-*`` answer headers."""
    out = {"x-compute-type": "embedded", "x-prompt-tokens": str(len(job.input_ids))}
    if fin is not None:
        total = time.perf_counter() - started
        out.update(
            {
                "x-generated-tokens": str(len(fin.token_ids)),
                "x-total-time": str(int(total * 1000)),
                "x-queue-time": str(int(fin.queue_time_s * 1000)),
                "x-inference-time": str(int(fin.inference_time_s * 1000)),
                "x-time-per-token": str(int(fin.inference_time_s * 1000 / max(len(fin.token_ids), 1))),
            }
        )
    return out


# --- OpenAI --------------------------------------------------------------------------------------------------
def openai_body(kind: str, *, created: int, model: str, choices: list[dict[str, Any]], **more: Any) -> dict[str, Any]:
    """Every OpenAI answer and stream chunk (``kind``: ``text_completion``, ``chat.completion[.chunk]``)."""
    return {
        "id": "",
        "object": kind,
        "created": created,
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "choices": choices,
        **more,
    }


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def finish_reason(fin: Finished) -> str:
    return openai_finish_reason(fin.finish_reason)


def stop_reason(job: Job, fin: Finished) -> str | None:
    """The stop sequence that ended a completion (vLLM's ``stop_reason``), if one did."""
    if fin.finish_reason != "stop_sequence":
        return None
    for stop in job.stop:
        if stop in fin.text:
            return stop
    return None
