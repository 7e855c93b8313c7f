"""Async client for vLLM's OpenAI-compatible server: the adapter is chosen by ``model``.

vLLM serves ``--lora-modules`` given at start and, when started with ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``,
loads and unloads adapters at run time (``/v1/load_lora_adapter``, ``/v1/unload_lora_adapter``). An adapter is
routable only if the registry published it to vLLM (``lora_modules.json``); a request for any other adapter is
refused here, before it is sent.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import structlog

from appliance.contracts import GenerationParams
from appliance.errors import BackendError, BackendValidation, ConfigError
from appliance.protocols import Generation, TokenEvent
from appliance.serving._errors import error_for_payload, error_for_response
from appliance.serving._published import AdapterSpec, read_vllm_list
from appliance.serving._routing import current_routing
from appliance.serving._tgi import PublishedList, TGIBackend
from appliance.serving._wire import sse_data

log = structlog.get_logger(__name__)


def _vllm_specs(path: Path) -> list[AdapterSpec]:
    return [AdapterSpec(id=str(e["name"]), path=Path(str(e["path"]))) for e in read_vllm_list(path)]


def _finish_reason(choice: Mapping[str, Any]) -> str:
    if choice.get("finish_reason") == "length":
        return "length"
    if isinstance(choice.get("stop_reason"), str):
        return "stop_sequence"
    return "eos_token"


def _token_logprobs(choice: Mapping[str, Any]) -> list[float | None]:
    logprobs = choice.get("logprobs") or {}
    values = logprobs.get("token_logprobs") if isinstance(logprobs, Mapping) else None
    return list(values) if isinstance(values, list) else []


def _salt(body: dict[str, Any]) -> None:
    """vLLM's ``cache_salt``: the principal's, set by the gateway (``Routing.cache_salt``); one a client passed
    through ``extra`` is dropped, so no caller can pick a salt and probe another tenant's cached prefixes."""
    body.pop("cache_salt", None)
    note = current_routing()
    if note is not None and note.cache_salt:
        body["cache_salt"] = note.cache_salt


class VLLMBackend(TGIBackend):
    """Backend over vLLM's ``/v1/completions`` (``model`` = adapter id, or the base model's name)."""

    name = "vllm"

    def __init__(
        self,
        base_url: str,
        *,
        published_file: Path | None,
        base_model_name: str | None = None,
        allow_runtime_updates: bool = False,
        **kwargs: Any,
    ) -> None:
        self._published_file = published_file
        super().__init__(
            base_url,
            published=PublishedList(published_file, _vllm_specs) if published_file is not None else None,
            **kwargs,
        )
        self._base_model_name = base_model_name
        self._allow_runtime = allow_runtime_updates

    async def generate(self, adapter: str | None, prompt: str, params: GenerationParams) -> Generation:
        await self._check_routable(adapter)
        body = {"model": await self._model_for(adapter), "prompt": prompt, "stream": False}
        body.update(params.openai_parameters())
        _salt(body)
        payload = (await self._post("/v1/completions", body)).json()
        choice = (payload.get("choices") or [{}])[0]
        usage = payload.get("usage") or {}
        details = None
        if params.details:
            details = {"finish_reason": _finish_reason(choice), "token_logprobs": _token_logprobs(choice)}
        return Generation(
            text=str(choice.get("text", "")),
            generated_tokens=int(usage.get("completion_tokens", 0)),
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            finish_reason=_finish_reason(choice),
            details=details,
        )

    async def stream(self, adapter: str | None, prompt: str, params: GenerationParams) -> AsyncIterator[TokenEvent]:
        await self._check_routable(adapter)
        body: dict[str, Any] = {"model": await self._model_for(adapter), "prompt": prompt, "stream": True}
        body.update(params.openai_parameters())
        _salt(body)
        body["stream_options"] = {"include_usage": True}
        async with self._http.stream("POST", "/v1/completions", body) as response:
            if response.status != 200:
                raise error_for_response(response.status, await response.read(), response.headers)
            pending: TokenEvent | None = None
            text: list[str] = []
            finish = "length"
            usage: Mapping[str, Any] = {}
            index = 0
            async for payload in sse_data(response.lines()):
                if payload.get("error") is not None or payload.get("object") == "error":
                    raise error_for_payload(payload)
                if payload.get("usage"):
                    usage = payload["usage"]
                for choice in payload.get("choices") or []:
                    if choice.get("finish_reason"):
                        finish = _finish_reason(choice)
                    piece = str(choice.get("text") or "")
                    if not piece and not choice.get("finish_reason"):
                        continue
                    if pending is not None:
                        yield pending
                    logprobs = _token_logprobs(choice)
                    index += 1
                    text.append(piece)
                    pending = TokenEvent(
                        index=index,
                        token_id=0,
                        text=piece,
                        logprob=logprobs[0] if logprobs else None,
                        special=False,
                    )
            final = Generation(
                text="".join(text),
                generated_tokens=int(usage.get("completion_tokens", index)),
                prompt_tokens=int(usage.get("prompt_tokens", 0)),
                finish_reason=finish,
                details={"finish_reason": finish} if params.details else None,
            )
            last = pending or TokenEvent(index=0, token_id=0, text="", logprob=None, special=False)
            yield TokenEvent(last.index, last.token_id, last.text, last.logprob, last.special, final=final)

    async def adapters(self) -> set[str]:
        served = await self._served_adapters()
        if self._published is None:
            return served
        return served & set(self._published.ids())

    # --- runtime adapter management (only when the server allows it) ----------------------------------------
    async def load_adapter(self, name: str, path: Path) -> None:
        """Load a published adapter into the running vLLM (``VLLM_ALLOW_RUNTIME_LORA_UPDATING``)."""
        self._require_runtime()
        if self._published is not None and name not in self._published.ids():
            raise BackendValidation(f"adapter {name!r} is not published to this backend")
        await self._post("/v1/load_lora_adapter", {"lora_name": name, "lora_path": str(path)})
        log.info("vllm.adapter_loaded", adapter=name)

    async def unload_adapter(self, name: str) -> None:
        """Unload an adapter from the running vLLM."""
        self._require_runtime()
        await self._post("/v1/unload_lora_adapter", {"lora_name": name})
        log.info("vllm.adapter_unloaded", adapter=name)

    async def sync(self) -> tuple[set[str], set[str]]:
        """Make the server's adapters match the published list: (loaded, unloaded)."""
        self._require_runtime()
        published = {str(e["name"]): Path(str(e["path"])) for e in read_vllm_list(self._published_path())}
        served = await self._served_adapters()
        loaded, unloaded = set(), set()
        for name in sorted(served - published.keys()):
            await self.unload_adapter(name)
            unloaded.add(name)
        for name in sorted(published.keys() - served):
            await self.load_adapter(name, published[name])
            loaded.add(name)
        return loaded, unloaded

    def _require_runtime(self) -> None:
        if not self._allow_runtime:
            raise ConfigError("runtime adapter updates are off (serving.allow_runtime_lora_updates = false)")

    def _published_path(self) -> Path:
        if self._published_file is None:
            raise ConfigError("no vLLM adapter list configured")
        return self._published_file

    async def _model_for(self, adapter: str | None) -> str:
        if adapter is not None:
            return adapter
        if self._base_model_name is None:
            bases = [m for m in (await self._get("/v1/models")).json().get("data", []) if m.get("parent") is None]
            if not bases:
                raise BackendError("the backend lists no base model under /v1/models")
            self._base_model_name = str(bases[0]["id"])
        return self._base_model_name


__all__ = ["VLLMBackend"]
