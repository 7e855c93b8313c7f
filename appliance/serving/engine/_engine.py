"""The engine facade: validate and tokenize a request, hand it to the scheduler, deliver its tokens.

Combines the model runner (base model + adapters), the scheduler (batching, bounded queue) and the published
adapter list (reloads). Nothing here logs prompt or output text.
"""

from __future__ import annotations

import asyncio
import copy
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import structlog

from appliance.contracts import GenerateParameters, SamplingParams
from appliance.errors import ApplianceError, BackendError, BackendOverloaded, BackendUnavailable, BackendValidation
from appliance.serving._published import AdapterSpec
from appliance.serving.engine._model import ModelRunner, prepare_adapter
from appliance.serving.engine._protocol import Limits, validate_lengths, validate_parameters
from appliance.serving.engine._scheduler import Finished, Scheduler, Submission, TokenOut

log = structlog.get_logger(__name__)

T = TypeVar("T")


@dataclass
class Job:
    """A validated request: what the scheduler needs plus what the answer needs."""

    inputs: str
    input_ids: list[int]
    adapter: str | None
    max_new_tokens: int
    sampling: SamplingParams
    stop: list[str]
    details: bool
    decoder_input_details: bool
    return_full_text: bool
    top_n_tokens: int
    validated_at: float


class Engine:
    """A base model with several LoRA adapters behind a batching scheduler."""

    def __init__(
        self,
        runner: ModelRunner,
        *,
        limits: Limits | None = None,
        max_batch_size: int = 8,
        max_queue: int = 64,
        adapter_source: Callable[[], list[AdapterSpec]] | None = None,
        validation_workers: int = 2,
    ) -> None:
        self.runner = runner
        self.limits = limits or Limits()
        self.scheduler = Scheduler(runner, max_batch_size=max_batch_size, max_queue=max_queue)
        self.tokenizers = _Tokenizers(runner.tokenizer, validation_workers, max_waiting=max_queue)
        self._adapter_source = adapter_source
        self._served: frozenset[str] = frozenset(runner.adapter_ids())
        self._reload_lock = asyncio.Lock()

    @classmethod
    def start(
        cls,
        base_dir: Path,
        adapters: list[AdapterSpec],
        *,
        device: str = "auto",
        limits: Limits | None = None,
        max_batch_size: int = 8,
        max_queue: int = 64,
        adapter_source: Callable[[], list[AdapterSpec]] | None = None,
        validation_workers: int = 2,
    ) -> Engine:
        """Load the base model and every adapter (each checked first; any failure stops the start)."""
        runner = ModelRunner(base_dir, device=device)
        prepared = [prepare_adapter(spec) for spec in adapters]
        runner.apply(prepared)
        return cls(
            runner,
            limits=limits,
            max_batch_size=max_batch_size,
            max_queue=max_queue,
            adapter_source=adapter_source,
            validation_workers=validation_workers,
        )

    # --- adapters ----------------------------------------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return self.runner.model_id

    def adapters(self) -> frozenset[str]:
        return self._served

    def fingerprints(self) -> dict[str, str]:
        return dict(self.runner.fingerprints)

    def resolve_adapter(self, name: str | None) -> str | None:
        """The adapter a request names (None: the base model); an empty or unknown one is refused."""
        if name is None:
            return None
        if name == "":
            raise BackendValidation("an empty adapter id names no adapter (None is the base model)")
        if name not in self._served:
            raise BackendValidation(f"adapter {name!r} is not loaded on this engine (no fall-back to the base model)")
        return name

    async def reload(self, specs: list[AdapterSpec] | None = None) -> dict[str, Any]:
        """Re-read the published list, check every new adapter, then swap them in between batches."""
        async with self._reload_lock:
            if specs is None:
                if self._adapter_source is None:
                    raise BackendValidation("this engine has no adapter list to reload from")
                specs = await asyncio.to_thread(self._adapter_source)
            runner = self.runner
            todo = list(specs)

            def rehearse() -> list[Any]:
                out: list[Any] = []
                for spec in todo:
                    loaded = runner.loaded_digests(spec.id)
                    if (
                        loaded is not None
                        and spec.fingerprint is not None
                        and spec.config_sha256 is not None
                        and (spec.fingerprint, spec.config_sha256) == loaded
                    ):
                        out.append(_Kept(spec, loaded[0], config_sha256=loaded[1]))
                    else:
                        out.append(prepare_adapter(spec))
                return out

            prepared = await asyncio.to_thread(rehearse)
            future = self.scheduler.control(lambda: self.runner.apply(prepared))
            try:
                changes: dict[str, Any] = await asyncio.wrap_future(future)
            finally:
                self._served = frozenset(self.runner.adapter_ids())
            log.info("engine.reloaded", adapters=sorted(self._served), **changes)
            return {**changes, "adapters": sorted(self._served)}

    # --- requests ----------------------------------------------------------------------------------------------
    async def prepare(
        self,
        inputs: str,
        params: GenerateParameters,
        *,
        stream: bool,
        add_special_tokens: bool = True,
        adapter: str | None = None,
    ) -> Job:
        """Validate (TGI's rules and messages), resolve the adapter and tokenize (on a validation worker)."""
        started = time.perf_counter()
        validate_parameters(params, inputs, self.limits, stream=stream)
        # TGI's server reads an absent and an empty adapter_id alike (the base model); an explicit adapter="" is refused
        adapter_id = self.resolve_adapter(adapter if adapter is not None else params.adapter_id or None)
        ids = await self.tokenizers.run(lambda tok: tok(inputs, add_special_tokens=add_special_tokens)["input_ids"])
        if params.truncate is not None and len(ids) > params.truncate:
            ids = ids[-params.truncate :]
        if not ids:
            raise BackendValidation("`inputs` cannot be empty")
        max_new = validate_lengths(len(ids), params.max_new_tokens, self.limits)
        return Job(
            inputs=inputs,
            input_ids=list(ids),
            adapter=adapter_id,
            max_new_tokens=max_new,
            sampling=params.sampling(),
            stop=list(params.stop),
            details=params.details,
            decoder_input_details=params.decoder_input_details,
            return_full_text=bool(params.return_full_text),
            top_n_tokens=params.top_n_tokens or 0,
            validated_at=started,
        )

    def _submit(self, job: Job, *, stream: bool) -> tuple[Submission, asyncio.Queue[tuple[str, Any]]]:
        if not self.scheduler.alive():
            raise BackendUnavailable("the engine is not running")
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def emit(kind: str, payload: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, payload))

        sub = Submission(
            input_ids=job.input_ids,
            adapter=job.adapter,
            max_new_tokens=job.max_new_tokens,
            sampling=job.sampling,
            stop=job.stop,
            emit=emit,
            stream=stream,
            decoder_input_details=job.decoder_input_details,
        )
        self.scheduler.submit(sub)
        return sub, queue

    async def generate(self, job: Job) -> Finished:
        """Run a job to the end (cancelled when the awaiting task is cancelled, e.g. the client went away)."""
        sub, queue = self._submit(job, stream=False)
        try:
            while True:
                kind, payload = await queue.get()
                if kind == "done":
                    return payload
                if kind == "error":
                    raise _generation_error(payload)
        except BaseException:
            sub.cancelled = True
            raise

    async def stream(self, job: Job) -> AsyncIterator[TokenOut | Finished]:
        """Tokens as they come; the last item is the Finished answer (carrying the last token)."""
        sub, queue = self._submit(job, stream=True)
        try:
            while True:
                kind, payload = await queue.get()
                if kind == "token":
                    yield payload
                elif kind == "done":
                    yield payload
                    return
                else:
                    raise _generation_error(payload)
        finally:
            sub.cancelled = True  # a no-op once finished; stops the work when the client went away

    def healthy(self) -> bool:
        return self.scheduler.alive()

    def close(self) -> None:
        self.scheduler.close()
        self.tokenizers.close()


class _Tokenizers:
    """Tokenization off the event loop (a 2 MB prompt takes ~1.5 s, which there would stall every other request).

    TGI's validation workers: a few threads, each call lent its own copy of the fast tokenizer (one Rust tokenizer
    used from several threads fails with "Already borrowed"); the scheduler thread keeps the runner's own.
    Bounded like the scheduler: ``workers`` tokenizing plus ``max_waiting`` waiting for one; one more is
    BackendOverloaded (429), so a flood of large bodies is refused rather than held in the executor's queue.
    """

    def __init__(self, tokenizer: Any, workers: int, *, max_waiting: int = 64) -> None:
        if workers < 1:
            raise ValueError(f"validation_workers must be at least 1 (got {workers})")
        self.workers = workers
        self.bound = self.workers + max(0, max_waiting)
        self._pending = 0  # calls submitted and not yet finished, failed or cancelled
        self._lock = threading.Lock()
        self._idle: queue.SimpleQueue[Any] = queue.SimpleQueue()
        for _ in range(self.workers):
            self._idle.put(copy.deepcopy(tokenizer))
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="engine-validation")

    def _call(self, fn: Callable[[Any], T]) -> T:
        tokenizer = self._idle.get()  # never waits: one copy per worker
        try:
            return fn(tokenizer)
        finally:
            self._idle.put(tokenizer)

    @property
    def pending(self) -> int:
        """Calls waiting for or on a worker."""
        return self._pending

    def _release(self, _future: Any = None) -> None:
        with self._lock:
            self._pending -= 1

    async def run(self, fn: Callable[[Any], T]) -> T:
        """``fn(tokenizer)`` on a worker; the caller's event loop stays free meanwhile.

        Raises BackendOverloaded when ``bound`` calls are pending. The place is given back when the call ends
        (done, failed, or cancelled: a cancelled caller cancels a call still waiting; a running one runs out).
        """
        with self._lock:
            if self._pending >= self.bound:
                raise BackendOverloaded("Model is overloaded")
            self._pending += 1
        try:
            future = self._pool.submit(self._call, fn)
        except BaseException:
            self._release()
            raise
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class _Kept:
    """An adapter already loaded with the published fingerprint and config digest (nothing to re-read)."""

    spec: AdapterSpec
    fingerprint: str
    config: Any = None
    state: Any = None
    config_sha256: str | None = None


def _generation_error(exc: Any) -> ApplianceError:
    if isinstance(exc, ApplianceError):
        return exc
    return BackendError(f"generation failed ({type(exc).__name__})")
