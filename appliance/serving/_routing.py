"""What the gateway tells the serving stage about one request, and what it learns back, without widening
the ``Backend`` protocol: a per-request note in a context variable (each request runs in its own task).

The gateway calls :func:`begin_routing` before it calls the backend; a :class:`ReplicaSet` reads the adapter's
published fingerprint from it and writes the replica that answered; the vLLM client reads the principal's
prefix-cache salt. A backend called outside a request (CLI, benchmarks) finds no note and routes on ids only.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

__all__ = ["Routing", "begin_routing", "current_routing"]


@dataclass
class Routing:
    """One request's routing note."""

    fingerprint: str | None = None  # in: the adapter version's published weights SHA-256 (None: base model)
    cache_salt: str | None = None  # in: the principal's prefix-cache salt (vLLM ``cache_salt``), never the client's
    replica: str | None = None  # out: the replica that answered (or the last one tried)


_ROUTING: ContextVar[Routing | None] = ContextVar("appliance_routing", default=None)


def begin_routing(fingerprint: str | None = None, cache_salt: str | None = None) -> Routing:
    """A fresh note for the request running in this task (replacing any earlier one)."""
    note = Routing(fingerprint=fingerprint.lower() if fingerprint else None, cache_salt=cache_salt)
    _ROUTING.set(note)
    return note


def current_routing() -> Routing | None:
    """This request's note, None outside a gateway request."""
    return _ROUTING.get()
