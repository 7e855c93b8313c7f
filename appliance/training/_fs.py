"""Training's storage errors: a full disk (or any OS error while writing) as a StorageUnavailable naming the file.

The writes themselves are ``appliance._fs`` (atomic_write, fsync_dir).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

from appliance.errors import StorageUnavailable

__all__ = ["storage_errors"]


@contextmanager
def storage_errors(what: str) -> Iterator[None]:
    """Turn a full disk (or any other OS error while writing) into a StorageUnavailable naming ``what``."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageUnavailable(f"disk full while writing {what}: free space on its volume and retry") from exc
        raise StorageUnavailable(f"cannot write {what}: {exc.strerror or exc}") from exc
