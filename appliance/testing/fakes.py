"""In-memory fakes: a backend that answers instantly, an audit log in a list, a static catalog, an HMAC-only key
service. Fakes for unit tests only (not for production: nothing here is durable or secret).
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import hmac
import io
import json
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from appliance.contracts import GenerationParams
from appliance.errors import AuditUnavailable, BackendUnavailable, BackendValidation, KeyUnavailable, NotFound
from appliance.gateway.ports import AdapterRef
from appliance.protocols import AuditReceipt, Generation, TokenEvent, WrittenRecord


class FakeBackend:
    """A Backend that answers at once with ``word`` repeated (never echoing the prompt); serves ``adapters``."""

    def __init__(self, adapters: Iterable[str] = (), *, word: str = "ok", delay_s: float = 0.0) -> None:
        self.served = set(adapters)
        self.word = word
        self.delay_s = delay_s
        self.healthy = True
        self.calls: list[tuple[str | None, GenerationParams]] = []

    def _check(self, adapter: str | None) -> None:
        if not self.healthy:
            raise BackendUnavailable("fake backend is down")
        if adapter is not None and adapter not in self.served:
            raise BackendValidation(f"adapter {adapter!r} is not served")

    def _gen(self, prompt: str, params: GenerationParams) -> Generation:
        n = min(params.max_new_tokens, 8)
        details = (
            {"tokens": [{"id": i, "text": self.word, "logprob": -0.5} for i in range(n)]} if params.details else None
        )
        return Generation(" ".join([self.word] * n), n, len(prompt.split()), "length", details)

    async def generate(self, adapter: str | None, prompt: str, params: GenerationParams) -> Generation:
        self._check(adapter)
        self.calls.append((adapter, params))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return self._gen(prompt, params)

    async def stream(self, adapter: str | None, prompt: str, params: GenerationParams) -> AsyncIterator[TokenEvent]:
        self._check(adapter)
        self.calls.append((adapter, params))
        final = self._gen(prompt, params)
        for i in range(final.generated_tokens):
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            text = self.word if i == 0 else " " + self.word
            last = i == final.generated_tokens - 1
            yield TokenEvent(i, i, text, -0.5, False, final if last else None)

    async def health(self) -> bool:
        return self.healthy

    async def adapters(self) -> set[str]:
        return set(self.served)

    async def aclose(self) -> None:
        return None


class FakeKeyService:
    """HMAC and nothing else, under a fixed test key (``data_key``/``sign`` are not faked)."""

    def __init__(self, secret: bytes = b"fake-audit-key-for-tests-only!!!") -> None:
        self.secret = secret
        self.available = True

    def hmac(self, name: str, data: bytes) -> bytes:
        return self.versioned_hmac(name, data)[1]

    def versioned_hmac(self, name: str, data: bytes, version: int | None = None) -> tuple[int, bytes]:
        if not self.available:
            raise KeyUnavailable("fake key service is down")
        if version not in (None, 1):
            raise NotFound(f"fake key {name!r} has no version {version}")
        return 1, hmac.new(self.secret + name.encode(), data, hashlib.sha256).digest()

    def data_key(self, purpose: str) -> tuple[bytes, bytes]:
        raise KeyUnavailable("not faked")

    def unwrap(self, purpose: str, wrapped: bytes) -> bytes:
        raise KeyUnavailable("not faked")

    def rewrap(self, purpose: str, wrapped: bytes) -> bytes:
        raise KeyUnavailable("not faked")

    def rotate(self, name: str) -> None:
        raise KeyUnavailable("not faked")

    def sign(self, name: str, data: bytes) -> bytes:
        raise KeyUnavailable("not faked")

    def public_key(self, name: str) -> bytes:
        raise KeyUnavailable("not faked")


def _matches(event: Mapping[str, Any], filters: Mapping[str, Any]) -> bool:
    actor = (event.get("actor") or {}).get("subject")
    adapter = (event.get("adapter") or {}).get("name")
    outcome = (event.get("outcome") or {}).get("status")
    t = str(event.get("time", ""))
    return (
        (not filters.get("actor") or actor == filters["actor"])
        and (not filters.get("adapter") or adapter == filters["adapter"])
        and (not filters.get("outcome") or outcome == filters["outcome"])
        and (not filters.get("since") or t >= str(filters["since"]))
        and (not filters.get("until") or t <= str(filters["until"]))
    )


class MemoryAuditLog:
    """An AuditLog (and AuditReader) in a list, hash-chained like the real one; ``fail = True`` makes it refuse."""

    def __init__(self, writer_id: str = "test-1") -> None:
        self.events: list[dict[str, Any]] = []
        self.writer_id = writer_id
        self.fail = False
        self._prev = "0" * 64

    def record_sync(self, event: Mapping[str, Any]) -> AuditReceipt:
        if self.fail:
            raise AuditUnavailable("fake audit log refuses (test)")
        e = dict(event)
        e.update(
            event_id=str(uuid.uuid4()),
            time=datetime.now(UTC).isoformat(),
            writer_id=self.writer_id,
            seq=len(self.events),
            prev_hash=self._prev,
        )
        e["hash"] = hashlib.sha256(json.dumps(e, sort_keys=True, default=str).encode()).hexdigest()
        self._prev = e["hash"]
        self.events.append(e)
        return AuditReceipt(e["event_id"], e["seq"], e["hash"], self.writer_id)

    async def record(self, event: Mapping[str, Any]) -> AuditReceipt:
        return self.record_sync(event)

    async def record_ahead(self, event: Mapping[str, Any]) -> WrittenRecord:
        """Written and durable at once (``fail`` refuses it before it is written)."""
        receipt = self.record_sync(event)
        durable: asyncio.Future[AuditReceipt] = asyncio.get_running_loop().create_future()
        durable.set_result(receipt)
        return WrittenRecord(receipt, durable)

    def check_writable(self) -> None:
        if self.fail:
            raise AuditUnavailable("fake audit log refuses (test)")

    def close_sync(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def of_type(self, event_type: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("type") == event_type]

    async def search(self, filters: Mapping[str, Any], limit: int) -> list[dict[str, Any]]:
        return [e for e in reversed(self.events) if _matches(e, filters)][:limit]

    async def export(self, filters: Mapping[str, Any], fmt: str) -> bytes:
        rows = [e for e in self.events if _matches(e, filters)]
        if fmt == "csv":
            out = io.StringIO()
            w = csv.writer(out)
            w.writerow(["event_id", "time", "type", "actor", "adapter", "outcome"])
            for e in rows:
                w.writerow(
                    [
                        e["event_id"],
                        e["time"],
                        e.get("type"),
                        (e.get("actor") or {}).get("subject"),
                        (e.get("adapter") or {}).get("name"),
                        (e.get("outcome") or {}).get("status"),
                    ]
                )
            return out.getvalue().encode()
        return b"".join(json.dumps(e, sort_keys=True).encode() + b"\n" for e in rows)

    async def verify(self) -> dict[str, Any]:
        prev = "0" * 64
        for e in self.events:
            body = {k: v for k, v in e.items() if k != "hash"}
            if (
                e["prev_hash"] != prev
                or hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest() != e["hash"]
            ):
                return {"ok": False, "records": len(self.events), "first_bad_seq": e["seq"]}
            prev = e["hash"]
        return {"ok": True, "records": len(self.events), "first_bad_seq": None}


class StaticCatalog:
    """An AdapterCatalog with a fixed (mutable) list of published adapters."""

    def __init__(self, adapters: Iterable[AdapterRef] = ()) -> None:
        self.adapters = list(adapters)

    async def published(self) -> list[AdapterRef]:
        return list(self.adapters)
