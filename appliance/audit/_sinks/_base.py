"""The sink seam: where a writer's chain is stored. Implementations: segment files, PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from appliance.audit._canonical import GENESIS_HASH
from appliance.audit._sinks._anchor import Anchor

__all__ = ["ChainHead", "ChainReader", "Recovery", "Sink", "chain_records", "stopped_cleanly"]

_TAIL = 75  # ',"hash":"<64 hex>"}' ends every record line
_STOP = b',"type":"audit.stop"'
_CHECKPOINT = b',"type":"audit.checkpoint"'


def stopped_cleanly(stop: bytes, checkpoint: bytes) -> bool:
    """Whether the last two record lines of a chain are audit.stop and its checkpoint (a writer closed it)."""
    return stop[-_TAIL - len(_STOP) : -_TAIL] == _STOP and checkpoint[-_TAIL - len(_CHECKPOINT) : -_TAIL] == _CHECKPOINT


@dataclass(frozen=True)
class Recovery:
    """What opening a chain had to repair: a torn tail that was cut off (and kept aside for forensics)."""

    location: str  # segment file name or table
    truncated_bytes: int
    kept_as: str | None = None  # where the cut-off bytes were preserved


@dataclass(frozen=True)
class ChainHead:
    """The end of a writer's chain as found in storage: the next record gets ``seq + 1`` and ``prev_hash = hash``."""

    writer_id: str
    seq: int = 0
    hash: str = GENESIS_HASH
    recoveries: tuple[Recovery, ...] = field(default_factory=tuple)
    clean_end: bool = True  # empty, or ends with audit.stop and its checkpoint (the last writer closed the chain)


class Sink(Protocol):
    """Durable, append-only storage of one writer's chain.

    ``append`` returns only once every line is on stable storage and raises ``AuditUnavailable`` otherwise; after
    a failure the writer calls ``recover`` before the next append, so the chain state is always what storage says.
    """

    description: str

    def open(self, writer_id: str, *, exact: bool = False) -> ChainHead:
        """Take the chain (the first free lane ``writer_id``, ``writer_id.2``, ... unless ``exact``) and recover it."""
        ...

    def append(self, lines: Sequence[bytes], first_seq: int) -> None:
        """Append whole record lines (each ends with a newline) durably, or raise ``AuditUnavailable``."""
        ...

    def write(self, lines: Sequence[bytes], first_seq: int) -> None:
        """The first half of ``append``: the store takes the lines (written, maybe not yet on stable storage)."""
        ...

    def sync(self) -> None:
        """The second half of ``append``: what ``write`` took is on stable storage, or ``AuditUnavailable``."""
        ...

    def recover(self) -> ChainHead:
        """Re-read the chain's end after a failed append (cutting a torn tail) and return it."""
        ...

    def probe(self) -> None:
        """Raise ``AuditUnavailable`` when the store cannot currently be written (read-only, full, unreachable)."""
        ...

    def sync_probe(self) -> None:
        """Ask the storage for a sync now (after a failed one), or raise ``AuditUnavailable`` (writer thread only)."""
        ...

    def close(self) -> None:
        """Release the chain (lock, connection)."""
        ...

    def reader(self) -> ChainReader:
        """Read access to the store this sink writes to."""
        ...


class ChainReader(Protocol):
    """Reads stored chains for verification, export and retention."""

    def writers(self) -> list[str]:
        """Every writer id with a chain in this store."""
        ...

    def read(self, writer_id: str) -> Iterator[tuple[str, bytes]]:
        """(location, raw bytes of whole lines) chunks of the writer's chain in order (segments, pages)."""
        ...

    def anchor(self, writer_id: str) -> Anchor | None:
        """The writer's purge anchor, if its chain was purged."""
        ...

    def is_active(self, writer_id: str) -> bool:
        """Whether a writer process holds the chain right now (its end is then not yet signed)."""
        ...

    def total_bytes(self) -> int:
        """The approximate size of every chain (for progress bars)."""
        ...


def chain_records(
    store: ChainReader, writer_id: str, advanced: Callable[[int], None] | None = None
) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """(line, record) for each record of the writer's chain in order; ``advanced`` gets each chunk's size as it is
    read. A torn or corrupt line is passed over (verification reports it; a search or an export carries records)."""
    for _, data in store.read(writer_id):
        if advanced is not None:
            advanced(len(data))
        for line in data.split(b"\n"):
            if not line:
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield line, record
