"""Continuous batching: one worker thread runs every forward pass; requests join and leave the batch per step.

- Bounded: at most ``max_batch_size`` sequences run and at most ``max_queue`` wait; one more is refused with
  ``BackendOverloaded`` (HTTP 429), so overload never grows memory or latency without bound.
- Mixed adapters: a batch holds sequences for any adapters (and the base model); the runner uses peft's
  ``adapter_names=`` when they differ.
- New sequences are prefilled on their own and merged into the running batch (their KV caches left-padded to a
  common length); finished or cancelled sequences are dropped from it, and padding no row needs is trimmed.
- Cancellation: a request whose client went away is flagged; the worker drops it before the next step, and a
  full queue drops its flagged requests before refusing a new one.
- Control tasks (adapter reloads) run between steps, when no sequence is running; admission waits for them.
"""

from __future__ import annotations

import collections
import concurrent.futures
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
import torch
from transformers import DynamicCache

from appliance.contracts import SamplingParams
from appliance.errors import BackendOverloaded, BackendValidation
from appliance.serving.engine._model import ModelRunner
from appliance.serving.engine._sampling import Choice, TokenChooser, choose_batch

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class TokenOut:
    """One generated token as TGI reports it."""

    index: int
    id: int
    text: str
    logprob: float
    special: bool
    top: tuple[tuple[int, str, float, bool], ...] = ()


@dataclass(frozen=True)
class Finished:
    """A finished sequence: what TGI's final answer and details carry."""

    token_ids: list[int]
    tokens: list[TokenOut]
    text: str
    finish_reason: str  # length | eos_token | stop_sequence
    input_length: int
    seed: int | None
    prefill: list[tuple[int, str, float | None]]
    queue_time_s: float
    inference_time_s: float

    @property
    def last(self) -> TokenOut | None:
        return self.tokens[-1] if self.tokens else None


@dataclass
class Submission:
    """A validated, tokenized request handed to the scheduler."""

    input_ids: list[int]
    adapter: str | None
    max_new_tokens: int
    sampling: SamplingParams
    stop: list[str]
    emit: Callable[[str, Any], None]  # thread-safe: ("token", TokenOut) | ("done", Finished) | ("error", exc)
    stream: bool = False
    decoder_input_details: bool = False
    cancelled: bool = False
    enqueued_at: float = field(default_factory=time.perf_counter)


class _Seq:
    """A sequence in flight (worker thread only)."""

    def __init__(self, sub: Submission, runner: ModelRunner) -> None:
        self.sub = sub
        self.chooser = TokenChooser(sub.sampling, runner.device)
        self.all_ids: list[int] = list(sub.input_ids)
        self.generated: list[int] = []
        self.tokens: list[TokenOut] = []
        self.text = ""
        self.prefix_offset = max(len(sub.input_ids) - 5, 0)
        self.read_offset = len(sub.input_ids)
        self.prefill: list[tuple[int, str, float | None]] = []
        self.started_at = time.perf_counter()

    def history(self, device: torch.device) -> torch.Tensor:
        return torch.tensor([self.all_ids], device=device)


@dataclass
class _Batch:
    seqs: list[_Seq]
    cache: Any
    mask: torch.Tensor  # [B, T] 1 for real tokens
    positions: torch.Tensor  # [B] position of the next input token
    next_ids: torch.Tensor  # [B] the tokens to feed next


class Scheduler:
    """The worker thread and its bounded queue."""

    def __init__(self, runner: ModelRunner, *, max_batch_size: int = 8, max_queue: int = 64) -> None:
        self.runner = runner
        self.max_batch_size = max(1, max_batch_size)
        self.max_queue = max(0, max_queue)
        self._cond = threading.Condition()
        self._waiting: collections.deque[Submission] = collections.deque()
        self._controls: collections.deque[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = (
            collections.deque()
        )
        self._batch: _Batch | None = None
        self._running = 0
        self._held = False
        self._stop = False
        self.batches_mixed = 0  # steps that ran more than one adapter (metrics)
        self.cancelled_total = 0  # sequences dropped because their client went away (metrics)
        self.on_step: Callable[[int, int], None] | None = None  # (batch size, waiting) after each step
        self._thread = threading.Thread(target=self._loop, name="engine-scheduler", daemon=True)
        self._thread.start()

    # --- API (any thread) ----------------------------------------------------------------------------------
    def submit(self, sub: Submission) -> None:
        """Queue a sequence, or raise BackendOverloaded when the queue is full."""
        with self._cond:
            if self._stop:
                raise BackendOverloaded("Model is overloaded")
            free_slots = 0 if self._held else max(self.max_batch_size - self._running, 0)
            if len(self._waiting) >= self.max_queue + free_slots:  # full: requests whose client left make room
                kept = [s for s in self._waiting if not s.cancelled]
                self.cancelled_total += len(self._waiting) - len(kept)
                self._waiting = collections.deque(kept)
            if len(self._waiting) >= self.max_queue + free_slots:
                raise BackendOverloaded("Model is overloaded")
            self._waiting.append(sub)
            self._cond.notify()

    def control(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run ``fn`` on the worker between batches (no sequence running); admission waits for it."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._cond:
            self._controls.append((fn, future))
            self._cond.notify()
        return future

    def hold(self) -> None:
        """Stop admitting new sequences (running ones finish); new ones queue up to ``max_queue``."""
        with self._cond:
            self._held = True

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return self._running

    def alive(self) -> bool:
        return self._thread.is_alive() and not self._stop

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout)

    # --- worker ----------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while (
                    not self._stop and not self._controls and self._batch is None and (self._held or not self._waiting)
                ):
                    self._cond.wait()
                if self._stop:
                    break
                controls: list[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = []
                admit: list[Submission] = []
                if self._controls:
                    if self._batch is None:
                        controls = list(self._controls)
                        self._controls.clear()
                elif not self._held:
                    room = self.max_batch_size - (len(self._batch.seqs) if self._batch else 0)
                    while room > 0 and self._waiting:
                        sub = self._waiting.popleft()
                        if sub.cancelled:
                            self.cancelled_total += 1
                            continue
                        admit.append(sub)
                        room -= 1
                    # the admitted hold their slots from now on, through their prefill (submit() reads this)
                    self._running = self.max_batch_size - room
            for fn, future in controls:
                if future.set_running_or_notify_cancel():
                    try:
                        future.set_result(fn())
                    except BaseException as exc:
                        future.set_exception(exc)
            if admit:
                try:
                    self._admit(admit)
                except Exception as exc:  # a failed prefill fails the new requests; the running batch goes on
                    log.error("engine.prefill_failed", error=type(exc).__name__)
                    for sub in admit:
                        sub.emit("error", exc)
            if self._batch is not None:
                try:
                    self._step()
                except Exception as exc:  # a failed decode step fails the requests in it, not the engine
                    log.error("engine.step_failed", error=type(exc).__name__)
                    for seq in self._all_seqs():
                        seq.sub.emit("error", exc)
                    self._batch = None
            self._running = len(self._batch.seqs) if self._batch else 0
            if self.on_step is not None:
                self.on_step(self._running, len(self._waiting))
        for seq in self._all_seqs():
            seq.sub.emit("error", RuntimeError("engine stopped"))
        for sub in self._waiting:
            sub.emit("error", RuntimeError("engine stopped"))

    def _all_seqs(self) -> list[_Seq]:
        return list(self._batch.seqs) if self._batch else []

    def _admit(self, subs: list[Submission]) -> None:
        runner = self.runner
        for sub in [s for s in subs if s.adapter is not None and s.adapter not in runner.fingerprints]:
            # unloaded by a reload while it waited: refuse it rather than run it on the base model
            sub.emit("error", BackendValidation(f"adapter {sub.adapter!r} is no longer loaded"))
            subs = [s for s in subs if s is not sub]
        if not subs:
            return
        seqs = [_Seq(s, runner) for s in subs]
        lengths = [len(s.sub.input_ids) for s in seqs]
        width = max(lengths)
        device = runner.device
        ids = torch.full((len(seqs), width), runner.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, seq in enumerate(seqs):
            n = lengths[row]
            ids[row, width - n :] = torch.tensor(seq.sub.input_ids, dtype=torch.long)
            mask[row, width - n :] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        want_prefill = any(s.sub.decoder_input_details for s in seqs)
        logits = runner.forward(ids, mask, positions, cache, [s.sub.adapter for s in seqs], all_logits=want_prefill)
        if want_prefill:
            self._prefill_details(seqs, ids, logits, lengths, width)
        last = logits[:, -1, :]
        choices = choose_batch(last, [s.chooser for s in seqs], self._histories(seqs), [s.generated for s in seqs])
        keep = [i for i, (seq, choice) in enumerate(zip(seqs, choices, strict=True)) if not self._accept(seq, choice)]
        if not keep:
            return
        # every row of the prefill first, so that _select picks the unfinished ones by their row index
        new = _Batch(seqs=seqs, cache=cache, mask=mask, positions=mask.sum(-1), next_ids=_chosen(choices, device))
        if len(keep) != len(seqs):
            _select(new, keep, device)
        self._batch = new if self._batch is None else _merge(self._batch, new)

    def _prefill_details(
        self, seqs: list[_Seq], ids: torch.Tensor, logits: torch.Tensor, lengths: list[int], width: int
    ) -> None:
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        for row, seq in enumerate(seqs):
            if not seq.sub.decoder_input_details:
                continue
            start = width - lengths[row]
            entries: list[tuple[int, str, float | None]] = []
            for pos in range(start, width):
                token = int(ids[row, pos])
                lp = None if pos == start else float(logprobs[row, pos - 1, token])
                entries.append((token, self.runner.decode([token], skip_special=False), lp))
            seq.prefill = entries

    def _histories(self, seqs: list[_Seq]) -> list[torch.Tensor]:
        device = self.runner.device
        return [s.history(device) if not s.chooser.simple else torch.empty(0) for s in seqs]

    def _step(self) -> None:
        batch = self._batch
        assert batch is not None
        live = [i for i, s in enumerate(batch.seqs) if not s.sub.cancelled]
        if len(live) != len(batch.seqs):
            self.cancelled_total += len(batch.seqs) - len(live)
            log.info("engine.cancelled", count=len(batch.seqs) - len(live))
            if not live:
                self._batch = None
                return
            _select(batch, live, self.runner.device)
        ones = torch.ones((len(batch.seqs), 1), dtype=batch.mask.dtype, device=batch.mask.device)
        batch.mask = torch.cat([batch.mask, ones], dim=1)
        adapters = [s.sub.adapter for s in batch.seqs]
        if len(set(adapters)) > 1:
            self.batches_mixed += 1
        logits = self.runner.forward(
            batch.next_ids.unsqueeze(-1), batch.mask, batch.positions.unsqueeze(-1), batch.cache, adapters
        )
        batch.positions = batch.positions + 1
        choices = choose_batch(
            logits[:, -1, :],
            [s.chooser for s in batch.seqs],
            self._histories(batch.seqs),
            [s.generated for s in batch.seqs],
        )
        keep = [i for i, (s, c) in enumerate(zip(batch.seqs, choices, strict=True)) if not self._accept(s, c)]
        if not keep:
            self._batch = None
            return
        batch.next_ids = _chosen(choices, batch.next_ids.device)
        if len(keep) != len(batch.seqs):
            _select(batch, keep, self.runner.device)

    def _accept(self, seq: _Seq, choice: Choice) -> bool:
        """Record one token; emit it (streams) or the final answer; True when the sequence is finished."""
        runner = self.runner
        token = choice.token_id
        seq.generated.append(token)
        seq.all_ids.append(token)
        piece = self._decode_step(seq)
        seq.text += piece
        top = tuple(
            (tid, runner.decode([tid], skip_special=False), lp, tid in runner.special_ids) for tid, lp in choice.top
        )
        out = TokenOut(len(seq.generated) - 1, token, piece, choice.logprob, token in runner.special_ids, top)
        seq.tokens.append(out)
        reason = None
        if len(seq.generated) >= seq.sub.max_new_tokens:
            reason = "length"
        elif token in runner.eos_ids:
            reason = "eos_token"
        elif seq.sub.stop and any(s in seq.text[-(len(s) + len(piece)) :] for s in seq.sub.stop):
            reason = "stop_sequence"
        if reason is None:
            if seq.sub.stream and not seq.sub.cancelled:
                seq.sub.emit("token", out)
            return False
        now = time.perf_counter()
        finished = Finished(
            token_ids=list(seq.generated),
            tokens=list(seq.tokens),
            text=runner.decode(seq.generated, skip_special=True),
            finish_reason=reason,
            input_length=len(seq.sub.input_ids),
            seed=seq.chooser.seed,
            prefill=seq.prefill,
            queue_time_s=seq.started_at - seq.sub.enqueued_at,
            inference_time_s=now - seq.started_at,
        )
        if not seq.sub.cancelled:
            seq.sub.emit("done", finished)
        return True

    def _decode_step(self, seq: _Seq) -> str:
        """TGI's incremental detokenization (no broken UTF-8 pieces; spaces kept)."""
        runner = self.runner
        prefix = runner.decode(seq.all_ids[seq.prefix_offset : seq.read_offset], skip_special=False)
        text = runner.decode(seq.all_ids[seq.prefix_offset :], skip_special=False)
        if len(text) > len(prefix) and not text.endswith("\ufffd"):
            seq.prefix_offset, seq.read_offset = seq.read_offset, len(seq.all_ids)
            return text[len(prefix) :]
        return ""


def _chosen(choices: list[Choice], device: torch.device) -> torch.Tensor:
    """The token each row chose: [B], the tokens to feed next."""
    return torch.tensor([c.token_id for c in choices], dtype=torch.long, device=device)


def _select(batch: _Batch, rows: list[int], device: torch.device) -> None:
    """Keep only ``rows`` (indices into the batch as it is now, every field of it one row per sequence) and trim
    columns no remaining row attends to."""
    if len(batch.seqs) != batch.next_ids.shape[0] or max(rows, default=-1) >= len(batch.seqs):
        raise RuntimeError(f"batch rows out of step: {len(batch.seqs)} sequences, rows {rows}")
    index = torch.tensor(rows, device=device)
    batch.seqs = [batch.seqs[i] for i in rows]
    batch.cache.batch_select_indices(index)
    batch.mask = batch.mask[index]
    batch.positions = batch.positions[index]
    batch.next_ids = batch.next_ids[index]
    used = batch.mask.any(dim=0).nonzero()
    first = int(used[0]) if used.numel() else 0
    if first > 0:
        batch.mask = batch.mask[:, first:]
        for layer in batch.cache.layers:
            layer.keys = layer.keys[:, :, first:, :]
            layer.values = layer.values[:, :, first:, :]


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([torch.zeros(shape, dtype=t.dtype, device=t.device), t], dim=dim)


def _merge(a: _Batch, b: _Batch) -> _Batch:
    """One batch from two: caches and masks left-padded to the same length, then stacked."""
    width = max(a.mask.shape[1], b.mask.shape[1])
    for la, lb in zip(a.cache.layers, b.cache.layers, strict=True):
        la.keys = torch.cat([_left_pad(la.keys, width, 2), _left_pad(lb.keys, width, 2)], dim=0)
        la.values = torch.cat([_left_pad(la.values, width, 2), _left_pad(lb.values, width, 2)], dim=0)
    return _Batch(
        seqs=a.seqs + b.seqs,
        cache=a.cache,
        mask=torch.cat([_left_pad(a.mask, width, 1), _left_pad(b.mask, width, 1)], dim=0),
        positions=torch.cat([a.positions, b.positions]),
        next_ids=torch.cat([a.next_ids, b.next_ids]),
    )
