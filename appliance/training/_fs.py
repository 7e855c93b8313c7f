"""Durable file writes: temp file + fsync + rename, and disk-full mapped to a clear error."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from appliance.errors import StorageUnavailable

__all__ = ["atomic_write", "fsync_dir", "storage_errors"]


@contextmanager
def storage_errors(what: str) -> Iterator[None]:
    """Turn a full disk (or any other OS error while writing) into a StorageUnavailable naming ``what``."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageUnavailable(f"disk full while writing {what}: free space on its volume and retry") from exc
        raise StorageUnavailable(f"cannot write {what}: {exc.strerror or exc}") from exc


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` so that a reader sees either the old file or the whole new one."""
    with storage_errors(str(path)):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)
