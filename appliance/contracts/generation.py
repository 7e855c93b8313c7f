"""Generation parameters: the one contract every stage uses, its limits, and its conversions.

Shapes:
- ``GenerationParams``: what a caller hands a ``Backend`` (never an adapter: the backend's caller chooses it).
- ``GenerateParameters``: TGI's ``parameters`` object as it travels on the wire (unknown fields ignored, as TGI's
  serde does); the embedded engine checks it with TGI's own rules and messages (``serving/engine/_protocol.py``).
- ``SamplingParams``: the engine's per-request sampling shape.
- ``ApiLimits`` (``API_LIMITS``): the bounds of the gateway's public API (its OpenAPI schema).

Conversions (each written once, here):
- ``GenerationParams.from_tgi(fields)`` / ``.from_openai(...)``: a gateway request body -> ``GenerationParams``
- ``GenerationParams.tgi_parameters(adapter)``: -> TGI's wire ``parameters`` (TGI client, embedded engine)
- ``GenerationParams.openai_parameters()``: -> OpenAI/vLLM ``/v1/completions`` fields
- ``GenerateParameters.from_openai(...)``: OpenAI fields -> TGI parameters (TGI's mapping; the engine's ``/v1``)
- ``GenerateParameters.sampling()``: -> ``SamplingParams``

Imports nothing from the stages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True)
class ApiLimits:
    """What the gateway's API accepts (pydantic bounds of its bodies; a value outside them is a 422)."""

    max_new_tokens: int = 4096
    max_temperature: float = 100  # TGI body; the OpenAI body's temperature is 0..openai_max_temperature
    openai_max_temperature: float = 2
    max_top_k: int = 10_000
    max_repetition_penalty: float = 100
    max_abs_frequency_penalty: float = 2
    max_stop_sequences: int = 4
    max_seed: int = 2**63 - 1
    max_truncate: int = 1_000_000
    max_top_n_tokens: int = 10
    max_top_logprobs: int = 10


API_LIMITS = ApiLimits()

# GenerationParams' own fields that a TGI body names alike; further TGI parameters travel in ``extra``
_NAMED = ("max_new_tokens", "temperature", "top_p", "top_k", "repetition_penalty", "seed", "do_sample", "details")
_NAMED_TAIL = ("return_full_text", "truncate")
_EXTRA_VALUES = ("typical_p", "frequency_penalty", "top_n_tokens")  # passed on when set
_EXTRA_FLAGS = ("watermark", "decoder_input_details")  # passed on when true


@dataclass(frozen=True)
class GenerationParams:
    """TGI's generation parameters (``adapter_id`` is never here: the caller of the backend chooses it)."""

    max_new_tokens: int = 64
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    do_sample: bool = False
    details: bool = False
    return_full_text: bool = False
    truncate: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)  # any further TGI parameter, passed through

    @classmethod
    def from_tgi(cls, fields: Mapping[str, Any]) -> GenerationParams:
        """From TGI-named fields (the gateway's inference body, already bounded); absent ones keep defaults."""
        extra: dict[str, Any] = {n: fields[n] for n in _EXTRA_VALUES if fields.get(n) is not None}
        extra.update({n: True for n in _EXTRA_FLAGS if fields.get(n)})
        named = {n: fields[n] for n in (*_NAMED, *_NAMED_TAIL) if n in fields}
        return cls(**named, stop=list(fields.get("stop") or []), extra=extra)

    @classmethod
    def from_openai(
        cls,
        *,
        max_tokens: int,
        temperature: float | None,
        top_p: float | None,
        stop: list[str] | str | None,
        seed: int | None,
        logprobs: bool,
    ) -> GenerationParams:
        """From an OpenAI body: temperature 0 (or none) is greedy, top_p 1 is no top-p, at most 4 stops."""
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        sample = bool(temperature)
        return cls(
            max_new_tokens=max_tokens,
            temperature=temperature if sample else None,
            top_p=top_p if top_p is not None and top_p < 1 else None,
            stop=stops[: API_LIMITS.max_stop_sequences],
            seed=seed,
            do_sample=sample,
            details=logprobs,
        )

    def tgi_parameters(self, adapter: str | None, *, details: bool = True) -> dict[str, Any]:
        """TGI's ``parameters`` object; ``adapter_id`` is set from ``adapter`` only, never from ``extra``."""
        body: dict[str, Any] = {k: v for k, v in self.extra.items() if k != "adapter_id"}
        body.update(
            max_new_tokens=self.max_new_tokens,
            do_sample=self.do_sample,
            details=details,
            return_full_text=self.return_full_text,
            stop=list(self.stop),
        )
        for name in ("temperature", "top_p", "top_k", "repetition_penalty", "seed", "truncate"):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        body["adapter_id"] = adapter
        return body

    def openai_parameters(self) -> dict[str, Any]:
        """The OpenAI/vLLM completion fields for the same parameters (greedy is temperature 0)."""
        body: dict[str, Any] = {k: v for k, v in self.extra.items() if k not in ("model", "adapter_id")}
        body["max_tokens"] = self.max_new_tokens
        sampling = self.do_sample or self.temperature is not None or self.top_p is not None
        body["temperature"] = (self.temperature if self.temperature is not None else 1.0) if sampling else 0.0
        for name in ("top_p", "top_k", "repetition_penalty", "seed"):
            value = getattr(self, name)
            if value is not None:
                body[name] = value
        if self.stop:
            body["stop"] = list(self.stop)
        if self.details:
            body["logprobs"] = 1
        if self.truncate is not None:
            body["truncate_prompt_tokens"] = self.truncate
        return body


@dataclass(frozen=True)
class SamplingParams:
    """Validated sampling parameters of one request (the engine's scheduler and token chooser)."""

    do_sample: bool = False
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    typical_p: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    top_n_tokens: int = 0

    @property
    def sampling(self) -> bool:
        """TGI samples when asked to or when any warper is set."""
        warpers = (
            (self.temperature is not None and self.temperature != 1.0)
            or bool(self.top_k)
            or (self.top_p is not None and self.top_p < 1.0)
            or (self.typical_p is not None and self.typical_p < 1.0)
        )
        return self.do_sample or warpers


def stop_list(stop: list[str] | str | None) -> list[str]:
    """OpenAI's ``stop`` (one string or several) as a list."""
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else list(stop)


class GenerateParameters(BaseModel):
    """TGI's ``parameters`` of ``/generate``, ``/generate_stream`` and ``POST /`` (router/src/lib.rs)."""

    model_config = ConfigDict(extra="ignore")

    adapter_id: str | None = None
    best_of: int | None = None
    temperature: float | None = None
    repetition_penalty: float | None = None
    frequency_penalty: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    typical_p: float | None = None
    do_sample: bool = False
    max_new_tokens: int | None = None
    return_full_text: bool | None = None
    stop: list[str] = Field(default_factory=list)
    truncate: int | None = None
    watermark: bool = False
    details: bool = False
    decoder_input_details: bool = False
    seed: int | None = None
    top_n_tokens: int | None = None
    grammar: dict[str, Any] | None = None

    @classmethod
    def from_openai(
        cls,
        *,
        max_tokens: int | None,
        temperature: float | None,
        top_p: float | None,
        top_k: int | None = None,
        seed: int | None,
        stop: list[str] | str | None,
        frequency_penalty: float | None,
        repetition_penalty: float | None,
        presence_penalty: float | None,
        logprobs: bool,
        top_logprobs: int | None = None,
        truncate: int | None = None,
    ) -> GenerateParameters:
        """TGI's mapping of OpenAI fields onto generate parameters (temperature 0 means greedy)."""
        do_sample = True
        if temperature is not None and temperature == 0.0:
            do_sample, temperature = False, None
        if repetition_penalty is None and presence_penalty is not None:
            repetition_penalty = (presence_penalty + 2.0) / 2.0
        return cls(
            max_new_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            stop=stop_list(stop),
            frequency_penalty=frequency_penalty,
            repetition_penalty=repetition_penalty,
            do_sample=do_sample if (temperature is not None or top_p is not None or top_k is not None) else False,
            details=True,
            decoder_input_details=False,
            top_n_tokens=top_logprobs if logprobs else None,
            truncate=truncate,
        )

    def sampling(self) -> SamplingParams:
        """The engine's sampling shape (validated first: ``serving/engine/_protocol.validate_parameters``)."""
        return SamplingParams(
            do_sample=self.do_sample,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            typical_p=self.typical_p,
            repetition_penalty=self.repetition_penalty,
            frequency_penalty=self.frequency_penalty,
            seed=self.seed,
            top_n_tokens=self.top_n_tokens or 0,
        )
