"""Request and response bodies of the API (pydantic; they are also the OpenAPI schema).

``adapter_id`` is deliberately absent: the gateway chooses the backend adapter itself. Unknown fields are refused.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from appliance.contracts import API_LIMITS as LIMITS
from appliance.contracts import GenerationParams

MAX_PROMPT_CHARS = 32_768
LOGPROB_FIELDS = ("details", "decoder_input_details", "top_n_tokens")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InferenceParameters(_Body):
    """TGI's generation parameters (a subset; no adapter_id), bounded by ``API_LIMITS``."""

    max_new_tokens: int = Field(default=64, ge=1, le=LIMITS.max_new_tokens)
    temperature: float | None = Field(default=None, gt=0, le=LIMITS.max_temperature)
    top_p: float | None = Field(default=None, gt=0, lt=1)
    top_k: int | None = Field(default=None, gt=0, le=LIMITS.max_top_k)
    typical_p: float | None = Field(default=None, gt=0, lt=1)
    repetition_penalty: float | None = Field(default=None, gt=0, le=LIMITS.max_repetition_penalty)
    frequency_penalty: float | None = Field(
        default=None, ge=-LIMITS.max_abs_frequency_penalty, le=LIMITS.max_abs_frequency_penalty
    )
    stop: list[str] = Field(default_factory=list, max_length=LIMITS.max_stop_sequences)
    seed: int | None = Field(default=None, ge=0, le=LIMITS.max_seed)
    do_sample: bool = False
    return_full_text: bool = False
    truncate: int | None = Field(default=None, ge=1, le=LIMITS.max_truncate)
    watermark: bool = False
    details: bool = False
    decoder_input_details: bool = False
    top_n_tokens: int | None = Field(default=None, ge=1, le=LIMITS.max_top_n_tokens)

    def wants_logprobs(self) -> bool:
        return bool(self.details or self.decoder_input_details or self.top_n_tokens)

    def to_params(self) -> GenerationParams:
        return GenerationParams.from_tgi(self.model_dump())


class InferenceRequest(_Body):
    """``POST /v1/inference/adapter/{name}/{version}``: TGI's body."""

    inputs: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    parameters: InferenceParameters = Field(default_factory=lambda: InferenceParameters())


class InferenceResponse(BaseModel):
    generated_text: str
    details: dict[str, Any] | None = None


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant"]
    content: str = Field(max_length=MAX_PROMPT_CHARS)


class _OpenAICommon(_Body):
    model: str = Field(min_length=3, max_length=80, description="`name@version` (version: number or production)")
    max_tokens: int = Field(default=64, ge=1, le=LIMITS.max_new_tokens)
    temperature: float | None = Field(default=None, ge=0, le=LIMITS.openai_max_temperature)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: list[str] | str | None = None
    seed: int | None = Field(default=None, ge=0, le=LIMITS.max_seed)
    stream: bool = False
    logprobs: bool | int | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=LIMITS.max_top_logprobs)
    user: str | None = Field(default=None, max_length=128)

    def wants_logprobs(self) -> bool:
        return bool(self.logprobs) or bool(self.top_logprobs)

    def to_params(self) -> GenerationParams:
        return GenerationParams.from_openai(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            stop=self.stop,
            seed=self.seed,
            logprobs=self.wants_logprobs(),
        )


class ChatCompletionRequest(_OpenAICommon):
    messages: list[ChatMessage] = Field(min_length=1, max_length=256)


class CompletionRequest(_OpenAICommon):
    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)


def render_chat(messages: list[ChatMessage]) -> str:
    """A plain chat rendering (the backend applies no template through the generate API)."""
    lines = [f"<|{m.role}|>\n{m.content}" for m in messages]
    return "\n".join([*lines, "<|assistant|>\n"])


class ApiKeyCreate(_Body):
    name: str = Field(min_length=1, max_length=64)
    scopes: list[str] = Field(min_length=1, max_length=32)
    ttl_s: int = Field(86_400 * 30, ge=60, le=366 * 86_400)


class BreakGlassCreate(_Body):
    subject: str = Field(min_length=1, max_length=255)
    role: str = Field(min_length=1, max_length=64)
    reason: str = Field(min_length=1, max_length=500)
    duration_s: int = Field(default=3600, ge=60, le=86_400)
