"""Translate a backend's HTTP answers and transport failures into the appliance's BackendError types.

TGI (and the embedded engine) answer errors as ``{"error": str, "error_type": str}`` with 422 (validation),
424 (generation), 429 (overloaded); vLLM answers OpenAI-shaped ``{"error": {"message", "type", "code"}}`` or
``{"object": "error", "message": ...}``. Messages are cut short and never contain prompt text we add ourselves.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

import aiohttp

from appliance.errors import (
    BackendError,
    BackendOverloaded,
    BackendTimeout,
    BackendUnavailable,
    BackendValidation,
)

_MAX_MESSAGE = 300


def _message_of(body: Any, fallback: str) -> str:
    if isinstance(body, Mapping):
        err = body.get("error")
        if isinstance(err, str):
            return err[:_MAX_MESSAGE]
        if isinstance(err, Mapping) and isinstance(err.get("message"), str):
            return str(err["message"])[:_MAX_MESSAGE]
        if isinstance(body.get("message"), str):
            return str(body["message"])[:_MAX_MESSAGE]
        if isinstance(body.get("detail"), str):
            return str(body["detail"])[:_MAX_MESSAGE]
    return fallback


def error_for_payload(payload: Mapping[str, Any], status: int = 200) -> BackendError:
    """The error an error object in a TGI/OpenAI body (or an SSE error event) stands for."""
    message = _message_of(payload, f"backend error (HTTP {status})")
    error_type = payload.get("error_type")
    if error_type is None and isinstance(payload.get("error"), Mapping):
        error_type = payload["error"].get("type")
    if error_type in ("validation", "BadRequestError", "invalid_request_error") or status in (400, 404, 413, 422):
        return BackendValidation(message)
    if error_type == "overloaded" or status == 429:
        return BackendOverloaded(message)
    if error_type == "unhealthy" or status == 503:  # the embedded engine's 503 type, also in SSE events
        return BackendUnavailable(message)
    if status == 504:
        return BackendTimeout(message)
    return BackendError(message)


def error_for_response(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> BackendError:
    """The error a non-2xx HTTP answer stands for (424 generation errors become a plain BackendError)."""
    try:
        payload = json.loads(body) if body else {}
    except (ValueError, RecursionError):
        payload = {}
    if not isinstance(payload, Mapping):
        payload = {}
    error = error_for_payload(payload, status)
    if isinstance(error, BackendOverloaded) and headers is not None:
        retry_after = headers.get("retry-after")
        if retry_after:
            with suppress(ValueError):
                error.retry_after = float(retry_after)
    return error


def transport_error(exc: BaseException, what: str) -> BackendError:
    """BackendUnavailable for connection failures, BackendTimeout for a backend that stopped answering."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return BackendUnavailable(f"{what}: backend not reachable in time")
    if isinstance(exc, TimeoutError):  # aiohttp's read timeouts are TimeoutErrors too
        return BackendTimeout(f"{what}: backend did not answer in time")
    return BackendUnavailable(f"{what}: backend unreachable ({type(exc).__name__})")


@contextmanager
def translate_transport_errors(what: str) -> Iterator[None]:
    """Turn aiohttp transport failures inside the block into our errors, keeping the cause."""
    try:
        yield
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise transport_error(exc, what) from exc


def is_unsent_failure(exc: BaseException) -> bool:
    """True for failures that happened before the request left this process (safe to retry)."""
    return isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)
