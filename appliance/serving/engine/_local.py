"""The embedded engine as a Backend in the same process (no HTTP): for a single small node or tools."""

from __future__ import annotations

from collections.abc import AsyncIterator

from appliance.contracts import GenerateParameters, GenerationParams
from appliance.protocols import Generation, TokenEvent
from appliance.serving.engine import _answers as answers
from appliance.serving.engine._engine import Engine, Job
from appliance.serving.engine._protocol import parse
from appliance.serving.engine._scheduler import Finished, TokenOut


class LocalBackend:
    """Backend over an Engine in this process; the engine's lifecycle stays with its owner."""

    name = "embedded-local"

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    async def _job(self, adapter: str | None, prompt: str, params: GenerationParams, *, stream: bool) -> Job:
        # the same TGI parameters the HTTP clients send (the adapter is chosen here, never by ``extra``)
        parameters: GenerateParameters = parse(GenerateParameters, params.tgi_parameters(None, details=params.details))
        return await self.engine.prepare(prompt, parameters, stream=stream, adapter=adapter)

    def _generation(self, job: Job, fin: Finished) -> Generation:
        return Generation(
            text=answers.generated_text(job, fin),
            generated_tokens=len(fin.token_ids),
            prompt_tokens=fin.input_length,
            finish_reason=fin.finish_reason,
            details=answers.details(job, fin) if job.details else None,
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
