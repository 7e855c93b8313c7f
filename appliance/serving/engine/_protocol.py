"""TGI's request and response shapes (router/src/lib.rs) and its validation rules (router/src/validation.rs).

The ``parameters`` object itself, and its OpenAI mapping, are the contract's (``appliance.contracts.generation``).

Unknown fields are ignored as TGI's serde models do. Validation messages are TGI's own, word for word, so clients
that match on them keep working. One deliberate difference: an unknown ``adapter_id`` is an error (422), never a
silent fall-back to the base model (TGI #2505).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from appliance.contracts import GenerateParameters
from appliance.errors import BackendValidation

DEFAULT_MAX_NEW_TOKENS = 100
MAX_SEED = 2**64 - 1


@dataclass(frozen=True)
class Limits:
    """The engine's validation limits (also reported by ``GET /info``)."""

    max_input_tokens: int = 1024
    max_total_tokens: int = 2048
    max_stop_sequences: int = 4
    max_top_n_tokens: int = 5
    max_best_of: int = 1
    max_client_batch_size: int = 4


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class GenerateRequest(_Lenient):
    inputs: str
    parameters: GenerateParameters = Field(default_factory=GenerateParameters)
    add_special_tokens: bool = True


class CompatGenerateRequest(GenerateRequest):
    """``POST /``: a GenerateRequest with ``stream``."""

    stream: bool = False


class ChatMessage(_Lenient):
    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(str(part.get("text", "")) for part in self.content if part.get("type") == "text")
        return self.content or ""


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatRequest(_Lenient):
    """``/v1/chat/completions`` (OpenAI shape; ``model`` selects the adapter)."""

    model: str | None = None
    messages: list[ChatMessage]
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    n: int | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    stop: list[str] | str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None


class CompletionRequest(_Lenient):
    """``/v1/completions`` (OpenAI shape; ``model`` selects the adapter)."""

    model: str | None = None
    prompt: str | list[str]
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    seed: int | None = None
    stop: list[str] | str | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    echo: bool | None = None
    logprobs: int | None = None
    n: int | None = None
    truncate_prompt_tokens: int | None = None


def parse(model: type[BaseModel], payload: Any) -> Any:
    """The request model of a JSON payload, or a 422 naming the first bad field."""
    try:
        return model.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise BackendValidation(
            f"Failed to deserialize the JSON body into the target type: {where}: {first['msg']}"
        ) from exc


def validate_parameters(p: GenerateParameters, inputs: str, limits: Limits, *, stream: bool) -> None:
    """TGI's checks that need no tokenizer, in TGI's order and with its messages."""
    best_of = p.best_of if p.best_of is not None else 1
    sampling = p.do_sample or any(v is not None for v in (p.temperature, p.top_k, p.top_p, p.typical_p))
    if best_of != 1:
        if stream:
            raise BackendValidation("`best_of` != 1 is not supported when streaming tokens")
        if limits.max_best_of == 1:
            raise BackendValidation("`best_of` != 1 is not allowed for this endpoint")
        if best_of <= 0 or best_of > limits.max_best_of:
            raise BackendValidation(f"`best_of` must be > 0 and <= {limits.max_best_of}. Given: {best_of}")
        if not sampling:
            raise BackendValidation("you must use sampling when `best_of` is > 1")
    if stream and p.decoder_input_details:
        raise BackendValidation("`decoder_input_details` == true is not supported when streaming tokens")
    # written so that NaN fails too (TGI's serde never lets one through)
    if p.temperature is not None and not p.temperature > 0.0:
        raise BackendValidation("`temperature` must be strictly positive")
    if p.repetition_penalty is not None and not p.repetition_penalty > 0.0:
        raise BackendValidation("`repetition_penalty` must be strictly positive")
    if p.frequency_penalty is not None and not -2.0 <= p.frequency_penalty <= 2.0:
        raise BackendValidation("`frequency_penalty` must be >= -2.0 and <= 2.0")
    if p.top_p is not None and not 0.0 < p.top_p < 1.0:
        raise BackendValidation("`top_p` must be > 0.0 and < 1.0")
    if p.typical_p is not None and not 0.0 < p.typical_p < 1.0:
        raise BackendValidation("`typical_p` must be > 0.0 and < 1.0")
    if p.top_k is not None and p.top_k <= 0:
        raise BackendValidation("`top_k` must be strictly positive")
    if p.max_new_tokens is not None and p.max_new_tokens <= 0:
        raise BackendValidation("`max_new_tokens` must be strictly positive")
    if len(p.stop) > limits.max_stop_sequences:
        raise BackendValidation(
            f"`stop` supports up to {limits.max_stop_sequences} stop sequences. Given: {len(p.stop)}"
        )
    if p.seed is not None and p.seed < 0:
        raise BackendValidation("`seed` must be positive")
    if p.seed is not None and p.seed > MAX_SEED:  # TGI's seed is a u64
        raise BackendValidation(f"`seed` must be <= {MAX_SEED}. Given: {p.seed}")
    if p.top_n_tokens is not None and not 0 <= p.top_n_tokens <= limits.max_top_n_tokens:
        raise BackendValidation(
            f"`top_n_tokens` must be >= 0 and <= {limits.max_top_n_tokens}. Given: {p.top_n_tokens}"
        )
    if not inputs:
        raise BackendValidation("`inputs` cannot be empty")
    check_text(inputs, "inputs")
    if p.truncate is not None and not 0 < p.truncate <= limits.max_input_tokens:
        raise BackendValidation(
            f"`truncate` must be strictly positive and less than {limits.max_input_tokens}. Given: {p.truncate}"
        )
    if p.grammar is not None:
        raise BackendValidation("grammar is not supported")
    if p.watermark:
        raise BackendValidation("watermark is not supported by this engine")


def check_text(text: str, where: str) -> None:
    """A 422 for text that is not valid Unicode (a lone surrogate from a JSON escape; serde refuses it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise BackendValidation(
            f"Failed to deserialize the JSON body into the target type: {where}: lone surrogate in string"
        ) from exc


def validate_lengths(input_length: int, max_new_tokens: int | None, limits: Limits) -> int:
    """TGI's token-count checks; returns the effective ``max_new_tokens``."""
    if max_new_tokens is None:
        max_new_tokens = max(1, min(DEFAULT_MAX_NEW_TOKENS, limits.max_total_tokens - input_length))
    if input_length + max_new_tokens > limits.max_total_tokens:
        raise BackendValidation(
            f"`inputs` tokens + `max_new_tokens` must be <= {limits.max_total_tokens}. "
            f"Given: {input_length} `inputs` tokens and {max_new_tokens} `max_new_tokens`"
        )
    if input_length > limits.max_input_tokens:
        raise BackendValidation(f"`inputs` must have less than {limits.max_input_tokens} tokens. Given: {input_length}")
    return max_new_tokens


FinishReason = Literal["length", "eos_token", "stop_sequence"]


def openai_finish_reason(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def error_body(message: str, error_type: str) -> dict[str, str]:
    """TGI's error body."""
    return {"error": message, "error_type": error_type}
