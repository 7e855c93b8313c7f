"""Random (version 4) UUIDs for request and audit event ids, drawn from a buffered CSPRNG pool.

``uuid.uuid4()`` makes one ``getrandom`` system call per id; on the gateway's event loop every system call is a
point where another thread can take the GIL, so ids come from ``os.urandom`` read 4 KiB at a time (per thread).
The bytes are the same CSPRNG's; only the number of calls changes.
"""

from __future__ import annotations

import os
import threading
import uuid

__all__ = ["random_uuid"]

_POOL_BYTES = 4096


class _Pool(threading.local):
    def __init__(self) -> None:
        self.buf = b""
        self.pos = 0
        self.pid = 0  # a forked child must not reuse its parent's bytes


_pool = _Pool()


def random_uuid() -> uuid.UUID:
    """A random version-4 UUID (as ``uuid.uuid4()``)."""
    pool = _pool
    if pool.pos + 16 > len(pool.buf) or pool.pid != os.getpid():
        pool.buf, pool.pos, pool.pid = os.urandom(_POOL_BYTES), 0, os.getpid()
    raw = pool.buf[pool.pos : pool.pos + 16]
    pool.pos += 16
    return uuid.UUID(bytes=raw, version=4)
