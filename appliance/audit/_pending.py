"""A queued audit record and how its callers are acknowledged: on their own event loop (async callers, one
wake-up per loop) or on their thread's future (``record_sync``); never twice, and never on a closed loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from appliance.errors import AuditUnavailable
from appliance.protocols import AuditReceipt

__all__ = ["Pending", "retrieved", "settle", "settle_written"]


@dataclass
class Pending:
    """One record waiting for the writer thread, and the futures its caller waits on."""

    body: bytes
    done: asyncio.Future[AuditReceipt] | concurrent.futures.Future[AuditReceipt]
    loop: asyncio.AbstractEventLoop | None
    checkpoint: bool = False  # sign right after this record (start, stop)
    since: float = field(default_factory=time.monotonic)  # when it was queued (the watchdog's clock)
    written: asyncio.Future[AuditReceipt] | None = None  # record_ahead: settled once the batch is written


def settle_written(batch: Sequence[Pending], receipts: Sequence[AuditReceipt]) -> None:
    """Tell record_ahead callers their record is written (their durability is settled by settle)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[AuditReceipt], Any]]] = {}
    for pending, receipt in zip(batch, receipts, strict=True):
        if pending.written is not None and pending.loop is not None:
            by_loop.setdefault(pending.loop, []).append((pending.written, receipt))
    _post(by_loop)


def settle(batch: Sequence[Pending], receipts: Sequence[AuditReceipt] | None, error: AuditUnavailable | None) -> None:
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[AuditReceipt], Any]]] = {}
    for i, pending in enumerate(batch):
        outcome: Any = error if receipts is None else receipts[i]
        if pending.written is not None and pending.loop is not None and error is not None:
            by_loop.setdefault(pending.loop, []).append((pending.written, outcome))  # not written (or too late)
        if pending.loop is None:
            assert isinstance(pending.done, concurrent.futures.Future)
            with contextlib.suppress(concurrent.futures.InvalidStateError):  # settled by the watchdog
                if error is None:
                    pending.done.set_result(outcome)
                else:
                    pending.done.set_exception(AuditUnavailable(error.message))
        else:
            assert isinstance(pending.done, asyncio.Future)
            by_loop.setdefault(pending.loop, []).append((pending.done, outcome))
    _post(by_loop)


def _post(by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[AuditReceipt], Any]]]) -> None:
    """Settle futures on their own event loops (one wake-up per loop)."""
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody is waiting for these
            loop.call_soon_threadsafe(_resolve, settled)


def retrieved(future: asyncio.Future[AuditReceipt]) -> None:
    if not future.cancelled():
        future.exception()


def _resolve(settled: list[tuple[asyncio.Future[AuditReceipt], Any]]) -> None:
    for future, outcome in settled:
        if future.done():
            continue
        if isinstance(outcome, AuditUnavailable):
            future.set_exception(AuditUnavailable(outcome.message))
        else:
            future.set_result(outcome)
