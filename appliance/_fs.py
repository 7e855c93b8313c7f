"""Durable files, once for every stage: directory fsync, atomic replacement of a file or a directory, exclusive
creation, lock files, streamed SHA-256.

Errors are the OS's (``OSError``); each caller turns them into its own (``StorageUnavailable``,
``AuditUnavailable``, ``KeyUnavailable``), since only it knows what the file was.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

__all__ = ["atomic_write", "exclusive_lock", "fsync_dir", "new_dir", "sha256_file", "sha256_files", "write_new"]

_CHUNK = 1 << 20


def fsync_dir(path: Path | str) -> None:
    """Make the entries of directory ``path`` (a rename, a new or removed file) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that a reader, or a crash, sees the old file or the whole new one.

    A temporary file beside it (created with ``mode``) is written and fsync-ed, renamed over ``path``, and the
    directory fsync-ed; the parent directories are created when missing. On any failure the temporary is removed.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_new(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Create ``path``, which must not exist (nor be a link), holding all of ``data``, fsync-ed, with ``mode``
    whatever the umask says; on any failure the partial file is removed before the error is raised."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


@contextlib.contextmanager
def new_dir(final: Path, *, mode: int | None = None, replace: bool = False) -> Iterator[Path]:
    """A temporary directory beside ``final`` for the block to fill, then put in its place whole.

    When the block ends the directory is fsync-ed, given ``mode``, and renamed to ``final`` (an existing ``final``
    is removed first only with ``replace``; else only an empty one is replaced), and the parent is fsync-ed. On
    any failure, the block's included, the temporary directory is removed and the error raised.
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        yield tmp
        fsync_dir(tmp)
        if mode is not None:
            os.chmod(tmp, mode)
        if replace and final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(final.parent)


@contextlib.contextmanager
def exclusive_lock(path: Path, refuse: Callable[[OSError], Exception]) -> Iterator[None]:
    """Hold an exclusive flock on the lock file ``path`` (created 0600) for the block, waiting for other processes.

    A lock file that cannot be opened raises ``refuse(error)``, the caller's own error (without the OS's as cause).
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise refuse(exc) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def sha256_files(paths: Iterable[Path]) -> str:
    """SHA-256 hex over the bytes of the files one after the other, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(_CHUNK), b""):
                digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: Path) -> str:
    """SHA-256 hex of a file, read in 1 MiB chunks."""
    return sha256_files([path])
