"""The seams between stages: small protocols, each with two or more real implementations.

Stages reach their neighbours only through these (and each stage package's ``__init__``). Fakes for fast unit
tests live in ``appliance/testing``; every seam is also tested against its real implementation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from appliance.contracts import GenerationParams  # re-exported: the Backend's parameters (appliance.contracts)


@runtime_checkable
class KeyService(Protocol):
    """Envelope encryption, MACs and signatures. Implementations: Vault/OpenBao transit, local keystore.

    Every method raises ``KeyUnavailable`` (or a subclass) when it cannot do its job; none falls back.
    """

    def data_key(self, purpose: str) -> tuple[bytes, bytes]:
        """A fresh 256-bit data key: (plaintext, wrapped). Only the wrapped form is ever stored."""
        ...

    def unwrap(self, purpose: str, wrapped: bytes) -> bytes:
        """The plaintext of a data key wrapped by :meth:`data_key` (or :meth:`rewrap`)."""
        ...

    def rewrap(self, purpose: str, wrapped: bytes) -> bytes:
        """The same data key wrapped under the newest version of the purpose's key encryption key."""
        ...

    def rotate(self, name: str) -> None:
        """Make a new version of a named key current; old versions still unwrap/verify."""
        ...

    def hmac(self, name: str, data: bytes) -> bytes:
        """HMAC-SHA256 of data under the named key's current version (audit digests of prompts and outputs)."""
        ...

    def versioned_hmac(self, name: str, data: bytes, version: int | None = None) -> tuple[int, bytes]:
        """(version, HMAC-SHA256 of data) under that version of the named key, the current one when None.

        Old versions are kept by a rotation, so a digest made before it can be reproduced; an unknown version is
        ``NotFound``.
        """
        ...

    def sign(self, name: str, data: bytes) -> bytes:
        """Ed25519 signature of data under the named key (audit checkpoints).

        The signature carries the key version: ``b"ed25519:v<N>:<base64 of the 64-byte signature>"``, the same
        for every implementation, so a signature made before a rotation still verifies (see
        ``appliance.keys.verify_offline`` for verification with exported public keys only).
        """
        ...

    def verify(self, name: str, data: bytes, signature: bytes) -> bool:
        """Whether signature (from :meth:`sign`, any version) is valid for data; False on a bad or unknown one."""
        ...

    def public_key(self, name: str) -> bytes:
        """The raw 32-byte Ed25519 public key of the named signing key (current version)."""
        ...

    def public_keys(self, name: str) -> dict[int, bytes]:
        """Every version's raw 32-byte Ed25519 public key of the named signing key, by version number."""
        ...


@dataclass(frozen=True)
class AuditReceipt:
    """Proof that a record is durable: its id, sequence number in its writer's chain, and hash."""

    event_id: str
    seq: int
    record_hash: str
    writer_id: str


@dataclass(frozen=True)
class WrittenRecord:
    """A record the audit store has accepted into the chain (written, not yet known to be on stable storage).

    ``durable`` resolves to the receipt once the record is on stable storage, or raises ``AuditUnavailable``;
    whoever holds a WrittenRecord must await it before answering anything that depends on the record.
    """

    receipt: AuditReceipt
    durable: Awaitable[AuditReceipt]


@runtime_checkable
class AuditLog(Protocol):
    """The durable, hash-chained, PHI-free audit trail.

    ``record`` returns only once the record is on stable storage and raises ``AuditUnavailable`` when it cannot
    be made durable; the caller must then refuse the operation it was about to perform.
    """

    async def record(self, event: Mapping[str, Any]) -> AuditReceipt: ...

    async def record_ahead(self, event: Mapping[str, Any]) -> WrittenRecord:
        """Return once the record is written into the chain (the store took it: not full, not read-only), with
        its sync still running; ``AuditUnavailable`` when the store refuses it. Lets a caller overlap the sync
        with work that answers nothing yet (the gateway's backend call)."""
        ...

    def record_sync(self, event: Mapping[str, Any]) -> AuditReceipt:
        """The same as :meth:`record` for synchronous callers (CLI, training loop)."""
        ...

    def check_writable(self) -> None:
        """Readiness: return when a record could be made durable now, else raise ``AuditUnavailable``. It may wait
        (a sync of the store, at most a few seconds): async callers run it in a thread."""
        ...

    def close_sync(self) -> None:
        """Record the end of this writer's chain and release it; later records are refused (synchronous callers)."""
        ...

    async def close(self) -> None:
        """:meth:`close_sync` for async callers."""
        ...


@dataclass(frozen=True)
class Generation:
    """A finished generation."""

    text: str
    generated_tokens: int
    prompt_tokens: int
    finish_reason: str  # "length" | "eos_token" | "stop_sequence"
    details: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class TokenEvent:
    """One streamed token; the last event carries ``final`` (the whole generation)."""

    index: int
    token_id: int
    text: str
    logprob: float | None
    special: bool
    final: Generation | None = None


@runtime_checkable
class Backend(Protocol):
    """An inference backend. Implementations: embedded engine (in-process or HTTP), TGI, vLLM.

    Errors are ``BackendError`` subclasses (overloaded, validation, unavailable, timeout), never foreign ones.
    ``adapter`` None means the base model; an empty id, or an adapter the backend does not serve, is a
    ``BackendValidation``.
    """

    async def generate(self, adapter: str | None, prompt: str, params: GenerationParams) -> Generation: ...

    def stream(self, adapter: str | None, prompt: str, params: GenerationParams) -> AsyncIterator[TokenEvent]: ...

    async def health(self) -> bool: ...

    async def adapters(self) -> set[str]: ...

    async def aclose(self) -> None: ...
