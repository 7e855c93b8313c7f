"""The chained writer: validates events, sequences them into one hash chain, and group-commits them.

Callers (async ``record`` or threaded ``record_sync``) validate their event in their own thread, then hand its
canonical body to one writer thread. That thread takes everything queued since its last commit, chains it
(seq, prev_hash, hash), adds a signed checkpoint when one is due, writes the batch with one ``write`` and one
``fdatasync`` (or one database commit), and only then acknowledges every caller in the batch at once. Many
concurrent requests therefore share one fsync, and none is acknowledged before its record is durable.

``record_ahead`` is the one exception, and it acknowledges twice: once the batch is written (the store took it:
the caller may start work that answers nothing yet, such as the gateway's backend call), and again once it is
durable (the caller must wait for that before answering). The sync thus overlaps the caller's work.

Fail-closed: when the batch cannot be made durable (or a due checkpoint cannot be signed), every caller in it gets
``AuditUnavailable`` and the writer re-reads the end of the chain from storage before the next batch.

Witnesses (``_witness.py``): once a batch with a checkpoint is durable, its newest checkpoint is given to every
witness before anyone in the batch is acknowledged. A witness that refuses it (it holds a longer chain, or another
hash at that seq: the store was cut or rewritten) or cannot be reached fails the batch closed like a failed sync.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog

from appliance.audit._canonical import build_line, canonical_json
from appliance.audit._checkpoint import checkpoint_body, sign, signed_message, signing_key_for
from appliance.audit._event import WRITER_SUBJECT, OutcomeStatus, audit_event, system_actor
from appliance.audit._pending import Pending, retrieved, settle, settle_written
from appliance.audit._schema import _ExtraCheck, validate_event
from appliance.audit._sinks._base import ChainHead, ChainReader, Sink
from appliance.audit._witness import Witness, WitnessedCheckpoint
from appliance.errors import ApplianceError, AuditUnavailable
from appliance.ids import random_uuid
from appliance.protocols import AuditReceipt, KeyService, WrittenRecord

__all__ = ["AuditWriter"]

log = structlog.get_logger("appliance.audit")

_SYSTEM_ACTOR = system_actor(WRITER_SUBJECT)


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def system_event(type_: str, action: str, details: Mapping[str, Any], status: OutcomeStatus = "success") -> bytes:
    """The canonical body of an event the audit trail records about itself (start, stop, recovery, purge)."""
    return canonical_json(audit_event(type_, actor=_SYSTEM_ACTOR, action=action, status=status, details=details))


class AuditWriter:
    """One writer's hash chain on a primary sink (plus an optional best-effort secondary). See module docstring."""

    def __init__(
        self,
        sink: Sink,
        keys: KeyService,
        *,
        writer_id: str = "node-1",
        secondary: Sink | None = None,
        checkpoint_every: int = 1000,
        checkpoint_interval_s: float = 60.0,
        extra_fields: Mapping[str, str] | None = None,
        record_timeout_s: float = 10.0,
        witnesses: Sequence[Witness] = (),
    ) -> None:
        if checkpoint_every < 1 or checkpoint_interval_s <= 0 or record_timeout_s <= 0:
            raise ValueError("checkpoint_every >= 1, checkpoint_interval_s > 0 and record_timeout_s > 0")
        self._timeout = record_timeout_s
        self._inflight: Sequence[Pending] = ()  # the batch being written (the watchdog's view)
        self._inflight_since = 0.0
        self._sink, self._secondary, self._keys = sink, secondary, keys
        self._requested_writer_id = writer_id
        self._checkpoint_every, self._checkpoint_interval_s = checkpoint_every, checkpoint_interval_s
        self._extras = _ExtraCheck(extra_fields or {})
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._queue: list[Pending] = []
        self._idle = True
        self._closing = False
        self._closed = True
        self._thread: threading.Thread | None = None
        self._head = ChainHead(writer_id)
        self._checkpointed_seq = 0
        self._last_checkpoint_at = time.monotonic()
        self._needs_recovery = False
        self._unsynced_failure = False  # a batch failed to become durable; unready until a sync succeeds again
        self._sync_probe: concurrent.futures.Future[bool] | None = None  # asked by check_writable, run by the thread
        self._secondary_ok = True
        self._witnesses = tuple(witnesses)
        self._batch_checkpoint: WitnessedCheckpoint | None = None  # the newest checkpoint of the batch in hand
        self.writer_id = writer_id
        self.stats = {"batches": 0, "records": 0, "failed_batches": 0, "secondary_failures": 0}

    # --- life cycle ----------------------------------------------------------------------------------------
    def start(self) -> AuditWriter:
        """Take the chain, recover its end, and durably record ``audit.start`` (the start-up write probe)."""
        head = self._sink.open(self._requested_writer_id)
        self._head, self.writer_id = head, head.writer_id
        self._checkpointed_seq = head.seq
        if self._secondary is not None:
            try:
                self._secondary.open(head.writer_id, exact=True)
            except ApplianceError as exc:
                self._secondary_failed(exc)
        self._closed, self._closing = False, False
        self._thread = threading.Thread(target=self._run, name=f"audit-writer-{self.writer_id}", daemon=True)
        self._thread.start()
        watchdog = threading.Thread(target=self._watch, name=f"audit-watchdog-{self.writer_id}", daemon=True)
        watchdog.start()
        try:
            for recovery in head.recoveries:
                details = {
                    "location": recovery.location,
                    "truncated_bytes": recovery.truncated_bytes,
                    "kept_as": recovery.kept_as,
                }
                self._submit_body_sync(system_event("audit.recovered", "truncate", details))
            if not head.clean_end:  # no audit.stop at the end: the last writer crashed, or the end was cut off
                self._submit_body_sync(system_event("audit.recovered", "resume", {"last_seq": head.seq}))
            self._submit_body_sync(system_event("audit.start", "start", {"pid": os.getpid()}), checkpoint=True)
        except BaseException:
            self._stop_thread()
            self._sink.close()
            raise
        return self

    def close_sync(self) -> None:
        """Record ``audit.stop`` with a final checkpoint, then release the chain."""
        if self._closed:
            return
        try:
            self._submit_body_sync(system_event("audit.stop", "stop", {"pid": os.getpid()}), checkpoint=True, last=True)
        except AuditUnavailable:
            log.warning("audit.stop_not_recorded", writer_id=self.writer_id)
        finally:
            self._stop_thread()
            self._sink.close()
            if self._secondary is not None:
                self._secondary.close()

    async def close(self) -> None:
        """The same as :meth:`close_sync`, off the event loop."""
        await asyncio.to_thread(self.close_sync)

    def _stop_thread(self) -> None:
        with self._lock:
            self._closing = True
            self._wake.set()
        if self._thread is not None:
            self._thread.join()
        self._closed = True

    def _watch(self) -> None:
        """Fail (never acknowledge) records that waited longer than record_timeout_s: a hung disk or database."""
        period = min(0.25, self._timeout / 4)
        while not self._closed:
            time.sleep(period)
            now = time.monotonic()
            expired: list[Pending] = []
            inflight = self._inflight
            if inflight and now - self._inflight_since > self._timeout:
                expired.extend(inflight)
                self._inflight = ()  # reported once; the writer thread clears it too when the write returns
            with self._lock:
                if self._queue and now - self._queue[0].since > self._timeout:
                    expired.extend(p for p in self._queue if now - p.since > self._timeout)
                    self._queue = [p for p in self._queue if now - p.since <= self._timeout]
            if expired:
                log.error("audit.record_timeout", writer_id=self.writer_id, records=len(expired))
                settle(expired, None, AuditUnavailable(f"audit record not durable within {self._timeout:g} s"))

    # --- recording -----------------------------------------------------------------------------------------
    async def record(self, event: Mapping[str, Any]) -> AuditReceipt:
        """Record event; returns once it is durable. ``ValidationFailed`` for a bad event, else ``AuditUnavailable``."""
        body = validate_event(event, self._extras)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[AuditReceipt] = loop.create_future()
        self._submit(Pending(body, done, loop))
        return await done  # the watchdog fails it after record_timeout_s if storage hangs

    async def record_ahead(self, event: Mapping[str, Any]) -> WrittenRecord:
        """Record event; returns once it is written into the chain, with its durability still to be awaited."""
        body = validate_event(event, self._extras)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[AuditReceipt] = loop.create_future()
        written: asyncio.Future[AuditReceipt] = loop.create_future()
        done.add_done_callback(retrieved)  # a caller that gave up early must not leave an unretrieved error
        self._submit(Pending(body, done, loop, written=written))
        return WrittenRecord(await written, done)

    def record_sync(self, event: Mapping[str, Any]) -> AuditReceipt:
        """The same as :meth:`record` for synchronous callers (CLI, training loop)."""
        return self._submit_body_sync(validate_event(event, self._extras))

    def check_writable(self) -> None:
        """Raise ``AuditUnavailable`` unless the writer is running and its store can take writes (readiness)."""
        if self._closed or self._thread is None or not self._thread.is_alive():
            raise AuditUnavailable("audit writer is not running")
        if self._unsynced_failure and not self._sync_again():
            raise AuditUnavailable("the audit store's last sync failed and it does not sync yet")
        self._sink.probe()

    def _sync_again(self, timeout_s: float = 2.0) -> bool:
        """Have the writer thread ask the store for a sync (after a failed one); whether it succeeded in time."""
        with self._lock:
            if self._sync_probe is None:
                self._sync_probe = concurrent.futures.Future()
            probe = self._sync_probe
            self._wake.set()
        try:
            return probe.result(timeout=timeout_s)
        except concurrent.futures.TimeoutError:  # a hung disk: not ready
            return False

    @property
    def keys(self) -> KeyService:
        """The key service the writer signs checkpoints with."""
        return self._keys

    def store(self) -> ChainReader:
        """Read access to the primary store this writer appends to."""
        return self._sink.reader()

    @property
    def head(self) -> ChainHead:
        """The last durable position of the chain (seq and hash)."""
        return self._head

    def _submit_body_sync(self, body: bytes, *, checkpoint: bool = False, last: bool = False) -> AuditReceipt:
        done: concurrent.futures.Future[AuditReceipt] = concurrent.futures.Future()
        self._submit(Pending(body, done, None, checkpoint), last=last)
        return done.result()  # the watchdog fails it after record_timeout_s if storage hangs

    def _submit(self, pending: Pending, *, last: bool = False) -> None:
        with self._lock:
            if self._closing or self._closed:
                raise AuditUnavailable("audit writer is closed")
            self._queue.append(pending)
            self._closing = last  # nothing is queued after audit.stop: its checkpoint must end the chain
            if self._idle:
                self._idle = False
                self._wake.set()

    # --- the writer thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # a bug must not leave callers waiting: fail everything, refuse more
            log.critical("audit.writer_died", writer_id=self.writer_id, error=type(exc).__name__)
            with self._lock:
                self._closing = True
                batch, self._queue = self._queue, []
            settle(batch, None, AuditUnavailable("audit writer stopped"))
            raise

    def _loop(self) -> None:
        while True:
            with self._lock:
                batch, self._queue = self._queue, []
                probe, self._sync_probe = self._sync_probe, None
                closing = self._closing
                if not batch and probe is None:
                    self._idle = True
                    self._wake.clear()
            if probe is not None:
                self._run_sync_probe(probe)
            if batch:
                self._commit(batch)
                continue
            if closing:
                return
            due = self._last_checkpoint_at + self._checkpoint_interval_s - time.monotonic()
            if due <= 0:
                self._timed_checkpoint()
                due = self._checkpoint_interval_s
            self._wake.wait(timeout=due)

    def _run_sync_probe(self, probe: concurrent.futures.Future[bool]) -> None:
        try:
            self._sink.sync_probe()
        except Exception as exc:
            log.warning("audit.sync_probe_failed", writer_id=self.writer_id, error_class=type(exc).__name__)
            probe.set_result(False)
            return
        self._unsynced_failure = False
        log.info("audit.sync_recovered", writer_id=self.writer_id)
        probe.set_result(True)

    def _timed_checkpoint(self) -> None:
        self._last_checkpoint_at = time.monotonic()
        if self._head.seq > self._checkpointed_seq:
            try:
                self._commit([])
            except Exception:
                log.warning("audit.checkpoint_failed", writer_id=self.writer_id)

    def _commit(self, batch: Sequence[Pending]) -> None:
        try:
            internal: list[bytes] = []
            if self._needs_recovery:
                self._head = self._sink.recover()
                self._needs_recovery = False
                for recovery in self._head.recoveries:
                    details = {
                        "location": recovery.location,
                        "truncated_bytes": recovery.truncated_bytes,
                        "kept_as": recovery.kept_as,
                    }
                    internal.append(system_event("audit.recovered", "truncate", details))
            self._batch_checkpoint = None
            lines, receipts, head, checkpointed = self._chain(internal, batch)
            self._inflight_since, self._inflight = time.monotonic(), batch
            self._sink.write(lines, self._head.seq + 1)
            if any(p.written is not None for p in batch):
                settle_written(batch, receipts)
            self._sink.sync()
            if self._batch_checkpoint is not None:
                self._witness(self._batch_checkpoint)
        except Exception as exc:
            self._needs_recovery = True
            self._unsynced_failure = True
            error = exc if isinstance(exc, AuditUnavailable) else AuditUnavailable(_reason(exc))
            log.error("audit.append_failed", writer_id=self.writer_id, error=error.message, records=len(batch))
            self.stats["failed_batches"] += 1
            self._inflight = ()
            settle(batch, None, error)
            return
        self._head, self._checkpointed_seq = head, checkpointed
        if lines:  # they were written and synced: the store syncs again
            self._unsynced_failure = False
        self.stats["batches"] += 1
        self.stats["records"] += len(lines)
        if self._secondary is not None:
            self._replicate(lines, self._head.seq - len(lines) + 1)
        self._inflight = ()
        settle(batch, receipts, None)

    def _chain(
        self, internal: Sequence[bytes], batch: Sequence[Pending]
    ) -> tuple[list[bytes], list[AuditReceipt], ChainHead, int]:
        seq, prev = self._head.seq, self._head.hash
        writer_id = self.writer_id
        lines: list[bytes] = []
        receipts: list[AuditReceipt] = []
        checkpointed = self._checkpointed_seq
        for body in internal:
            seq += 1
            line, prev = build_line(seq, prev, writer_id, str(random_uuid()), _utc_now(), body)
            lines.append(line)
        for pending in batch:
            seq += 1
            event_id = str(random_uuid())
            line, prev = build_line(seq, prev, writer_id, event_id, _utc_now(), pending.body)
            lines.append(line)
            receipts.append(AuditReceipt(event_id=event_id, seq=seq, record_hash=prev, writer_id=writer_id))
            if seq - checkpointed >= self._checkpoint_every or pending.checkpoint:
                seq, prev = self._checkpoint(lines, seq, prev)
                checkpointed = seq
        if not batch and seq > checkpointed:  # the timer's checkpoint
            seq, prev = self._checkpoint(lines, seq, prev)
            checkpointed = seq
        return lines, receipts, ChainHead(writer_id, seq, prev), checkpointed

    def _checkpoint(self, lines: list[bytes], seq: int, prev: str) -> tuple[int, str]:
        signature = sign(self._keys, signed_message("checkpoint", self.writer_id, seq, prev), self.writer_id)
        body = checkpoint_body(self.writer_id, seq, prev, signature, signing_key_for(self._keys, self.writer_id))
        line, digest = build_line(seq + 1, prev, self.writer_id, str(random_uuid()), _utc_now(), body)
        lines.append(line)
        self._last_checkpoint_at = time.monotonic()
        self._batch_checkpoint = WitnessedCheckpoint(self.writer_id, seq, prev, signature)
        return seq + 1, digest

    def _witness(self, checkpoint: WitnessedCheckpoint) -> None:
        """Give every witness the batch's newest checkpoint; any refusal or outage fails the batch (closed)."""
        for witness in self._witnesses:
            try:
                witness.add(checkpoint)
            except ApplianceError as exc:
                log.error("audit.witness_failed", writer_id=self.writer_id, witness=witness.name, code=exc.code)
                raise AuditUnavailable(f"audit checkpoint not witnessed: {exc.message}") from None
            except Exception as exc:
                log.error(
                    "audit.witness_failed", writer_id=self.writer_id, witness=witness.name, error=type(exc).__name__
                )
                raise AuditUnavailable(
                    f"audit checkpoint not witnessed by {witness.name} ({type(exc).__name__})"
                ) from None

    def _replicate(self, lines: Sequence[bytes], first_seq: int) -> None:
        assert self._secondary is not None
        try:
            if not self._secondary_ok:
                self._secondary.recover()
            self._secondary.append(lines, first_seq)
            self._secondary_ok = True
        except Exception as exc:
            self._secondary_failed(exc)

    def _secondary_failed(self, exc: BaseException) -> None:
        self._secondary_ok = False
        self.stats["secondary_failures"] += 1
        log.warning("audit.secondary_failed", writer_id=self.writer_id, error=type(exc).__name__)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ApplianceError):
        return f"audit record not durable: {exc.code}"
    return f"audit record not durable ({type(exc).__name__})"
