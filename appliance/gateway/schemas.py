"""Request and response bodies of the API (pydantic; they are also the OpenAPI schema).

``adapter_id`` is deliberately absent: the gateway chooses the backend adapter itself. Unknown fields are refused.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from appliance.protocols import GenerationParams

MAX_PROMPT_CHARS = 32_768
LOGPROB_FIELDS = ("details", "decoder_input_details", "top_n_tokens")


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InferenceParameters(_Body):
    """TGI's generation parameters (a subset; no adapter_id)."""

    max_new_tokens: int = Field(default=64, ge=1, le=4096)
    temperature: float | None = Field(default=None, gt=0, le=100)
    top_p: float | None = Field(default=None, gt=0, lt=1)
    top_k: int | None = Field(default=None, gt=0, le=10_000)
    typical_p: float | None = Field(default=None, gt=0, lt=1)
    repetition_penalty: float | None = Field(default=None, gt=0, le=100)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    stop: list[str] = Field(default_factory=list, max_length=4)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    do_sample: bool = False
    return_full_text: bool = False
    truncate: int | None = Field(default=None, ge=1, le=1_000_000)
    watermark: bool = False
    details: bool = False
    decoder_input_details: bool = False
    top_n_tokens: int | None = Field(default=None, ge=1, le=10)

    def wants_logprobs(self) -> bool:
        return bool(self.details or self.decoder_input_details or self.top_n_tokens)

    def to_params(self) -> GenerationParams:
        extra: dict[str, Any] = {}
        for name in ("typical_p", "frequency_penalty", "top_n_tokens"):
            value = getattr(self, name)
            if value is not None:
                extra[name] = value
        if self.watermark:
            extra["watermark"] = True
        if self.decoder_input_details:
            extra["decoder_input_details"] = True
        return GenerationParams(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            repetition_penalty=self.repetition_penalty,
            stop=list(self.stop),
            seed=self.seed,
            do_sample=self.do_sample,
            details=self.details,
            return_full_text=self.return_full_text,
            truncate=self.truncate,
            extra=extra,
        )


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
    max_tokens: int = Field(default=64, ge=1, le=4096)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: list[str] | str | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stream: bool = False
    logprobs: bool | int | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=10)
    user: str | None = Field(default=None, max_length=128)

    def wants_logprobs(self) -> bool:
        return bool(self.logprobs) or bool(self.top_logprobs)

    def to_params(self) -> GenerationParams:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        sample = bool(self.temperature)
        return GenerationParams(
            max_new_tokens=self.max_tokens,
            temperature=self.temperature if sample else None,
            top_p=self.top_p if self.top_p is not None and self.top_p < 1 else None,
            stop=stops[:4],
            seed=self.seed,
            do_sample=sample,
            details=self.wants_logprobs(),
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
