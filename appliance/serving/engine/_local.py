"""The embedded engine as a Backend in the same process (no HTTP): for a single small node or tools."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from appliance.protocols import Generation, GenerationParams, TokenEvent
from appliance.serving.engine._app import _details, _generated_text
from appliance.serving.engine._engine import Engine, Job
from appliance.serving.engine._protocol import GenerateParameters, parse
from appliance.serving.engine._scheduler import Finished, TokenOut


class LocalBackend:
    """Backend over an Engine in this process; the engine's lifecycle stays with its owner."""

    name = "embedded-local"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def _job(self, adapter: str | None, prompt: str, params: GenerationParams, *, stream: bool) -> Job:
        fields: dict[str, Any] = {k: v for k, v in params.extra.items() if k != "adapter_id"}
        fields.update(
            max_new_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k,
            repetition_penalty=params.repetition_penalty,
            stop=list(params.stop),
            seed=params.seed,
            do_sample=params.do_sample,
            details=params.details,
            return_full_text=params.return_full_text,
            truncate=params.truncate,
        )
        parameters: GenerateParameters = parse(GenerateParameters, fields)
        parameters.adapter_id = None
        return await self.engine.prepare(prompt, parameters, stream=stream, adapter=adapter)

    def _generation(self, job: Job, fin: Finished) -> Generation:
        return Generation(
            text=_generated_text(job, fin),
            generated_tokens=len(fin.token_ids),
            prompt_tokens=fin.input_length,
            finish_reason=fin.finish_reason,
            details=_details(job, fin) if job.details else None,
        )

    async def generate(self, adapter: str | None, prompt: str, params: GenerationParams) -> Generation:
        job = await self._job(adapter, prompt, params, stream=False)
        return self._generation(job, await self.engine.generate(job))

    async def stream(self, adapter: str | None, prompt: str, params: GenerationParams) -> AsyncIterator[TokenEvent]:
        job = await self._job(adapter, prompt, params, stream=True)
        async for item in self.engine.stream(job):
            if isinstance(item, TokenOut):
                yield TokenEvent(item.index, item.id, item.text, item.logprob, item.special)
                continue
            last = item.last
            assert last is not None
            yield TokenEvent(
                last.index, last.id, last.text, last.logprob, last.special, final=self._generation(job, item)
            )

    async def health(self) -> bool:
        return self.engine.healthy()

    async def adapters(self) -> set[str]:
        return set(self.engine.adapters())

    async def aclose(self) -> None:
        return None
