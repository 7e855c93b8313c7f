"""Segment files: one directory per writer, append-only JSON-lines segments, fsync before acknowledging.

Layout under the audit directory::

    <writer_id>/.lock                       flock held by the one process writing this chain
    <writer_id>/segment-000000000001.jsonl  records seq 1.. (named by the first seq it holds)
    <writer_id>/anchor.json                 signed anchor of the last purged record (after a purge)
    <writer_id>/segment-...jsonl.torn-<n>   bytes cut off a torn tail on recovery, kept for forensics

Each batch is one ``write`` and one ``fdatasync``; a new segment is ``fsync``-ed together with its directory
before its first record is written, so a crash never loses a file that held acknowledged records.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from appliance._fs import fsync_dir, write_new
from appliance.audit._canonical import GENESIS_HASH, record_hash, split_line
from appliance.audit._mapping import map_file
from appliance.audit._sinks._anchor import Anchor, read_anchor
from appliance.audit._sinks._base import ChainHead, Recovery, stopped_cleanly
from appliance.errors import AuditUnavailable

__all__ = ["FileSink", "FileStore", "segment_name"]

_SEGMENT = re.compile(r"^segment-(\d{12})\.jsonl$")
_WRITER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_TAIL_WINDOW = 1 << 20  # bytes read from a segment's end to find its last whole record
_MAX_LANES = 64
_MIN_FREE_BYTES = 1 << 20  # probe: refuse when less than this is free


def segment_name(first_seq: int) -> str:
    """The file name of the segment whose first record has sequence number ``first_seq``."""
    return f"segment-{first_seq:012d}.jsonl"


def _unavailable(what: str, exc: OSError) -> AuditUnavailable:
    reason = errno.errorcode.get(exc.errno or 0, "EIO") if exc.errno else type(exc).__name__
    return AuditUnavailable(f"audit store cannot {what} ({reason})")


class FileStore:
    """Read access to the segment files of every writer under one audit directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def writers(self) -> list[str]:
        """Every writer id with a chain directory here."""
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and _WRITER.match(p.name))

    def segments(self, writer_id: str) -> list[tuple[int, Path]]:
        """(first seq, path) of each segment of a writer, in order."""
        directory = self.root / writer_id
        found = []
        if directory.is_dir():
            for path in directory.iterdir():
                match = _SEGMENT.match(path.name)
                if match:
                    found.append((int(match.group(1)), path))
        return sorted(found)

    def read(self, writer_id: str) -> Iterator[tuple[str, bytes]]:
        """(segment name, its bytes) for each segment of the writer after its purge anchor, in order."""
        for _, path in self.live_segments(writer_id):
            yield path.name, path.read_bytes()

    def read_mapped(self, writer_id: str) -> Iterator[tuple[str, bytes]]:
        """Like :meth:`read`, but each segment is a read-only memory map (verification: no copy of the file)."""
        for _, path in self.live_segments(writer_id):
            yield from map_file(path)

    def live_segments(self, writer_id: str) -> list[tuple[int, Path]]:
        """The segments not covered by the purge anchor (one a purge interrupted before deleting it is skipped)."""
        segments = self.segments(writer_id)
        anchor = self.anchor(writer_id)
        if anchor is None:
            return segments
        return [s for i, s in enumerate(segments) if i + 1 >= len(segments) or segments[i + 1][0] > anchor.seq + 1]

    def total_bytes(self) -> int:
        """The size of every live segment of every writer (for progress bars)."""
        return sum(p.stat().st_size for w in self.writers() for _, p in self.live_segments(w))

    def anchor_path(self, writer_id: str) -> Path:
        """Where the writer's purge anchor lives."""
        return self.root / writer_id / "anchor.json"

    def anchor(self, writer_id: str) -> Anchor | None:
        """The writer's purge anchor, if its chain was purged."""
        return read_anchor(self.anchor_path(writer_id))

    def is_active(self, writer_id: str) -> bool:
        """Whether a writer process holds the chain right now (its end is then not yet signed)."""
        try:
            fd = os.open(self.root / writer_id / ".lock", os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False


def _last_record(data: bytes) -> tuple[int, int, str] | None:
    """(end offset after the last whole valid record, its seq, its hash) within data, or None."""
    end = len(data)
    while end > 0:
        newline = data.rfind(b"\n", 0, end)
        if newline < 0:
            return None
        start = data.rfind(b"\n", 0, newline) + 1
        parts = split_line(data[start:newline])
        if parts is not None and record_hash(parts[3]) == parts[2]:
            return newline + 1, parts[0], parts[2]
        end = newline
    return None


def _ends_with_stop(path: Path) -> bool:
    """Whether the segment ends with audit.stop and its checkpoint (one batch: always in the same segment)."""
    with path.open("rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        handle.seek(max(0, size - (1 << 14)))
        lines = handle.read().split(b"\n")
    return len(lines) >= 3 and not lines[-1] and stopped_cleanly(lines[-3], lines[-2])


class FileSink:
    """Appends one writer's chain to segment files (see the module docstring)."""

    def __init__(self, root: Path, *, segment_max_records: int = 100_000) -> None:
        self.store = FileStore(root)
        self.root = root
        self.segment_max_records = segment_max_records
        self.description = f"files:{root}"
        self._dir: Path | None = None
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self._unsynced = False  # written lines not yet fdatasync'd
        self._segment: Path | None = None
        self._segment_records = 0
        self._head_seq = 0
        self._writer_id = ""

    # --- opening -------------------------------------------------------------------------------------------
    def open(self, writer_id: str, *, exact: bool = False) -> ChainHead:
        if not _WRITER.match(writer_id):
            raise AuditUnavailable(f"invalid audit writer id {writer_id!r}")
        try:
            if not self.root.is_dir():
                with contextlib.suppress(FileExistsError):  # another process may create it first
                    self.root.mkdir(parents=True, mode=0o700)
                fsync_dir(self.root.parent)  # the new directory's entry survives a crash
        except OSError as exc:
            raise _unavailable("create its directory", exc) from exc
        lanes = [writer_id] if exact else [writer_id] + [f"{writer_id}.{n}" for n in range(2, _MAX_LANES + 1)]
        for lane in lanes:
            if self._try_lock(lane):
                self._writer_id = lane
                return self.recover()
        raise AuditUnavailable(f"every lane of audit writer {writer_id!r} is held by another process")

    def _try_lock(self, lane: str) -> bool:
        directory = self.root / lane
        try:
            if not directory.is_dir():
                with contextlib.suppress(FileExistsError):
                    directory.mkdir(mode=0o700)
                fsync_dir(self.root)
            fd = os.open(directory / ".lock", os.O_RDONLY | os.O_CREAT, 0o600)  # no write access held
        except OSError as exc:
            raise _unavailable("open its lock file", exc) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd, self._dir = fd, directory
        return True

    def recover(self) -> ChainHead:
        """Find the chain's end, cutting off (and keeping aside) a torn tail; open the last segment for appends."""
        assert self._dir is not None, "open() first"
        self._close_segment()
        recoveries: list[Recovery] = []
        head_seq, head_hash = 0, GENESIS_HASH
        anchor = self._anchor_head()
        if anchor is not None:
            head_seq, head_hash = anchor
        segments = self.store.live_segments(self._writer_id)
        clean = True
        try:
            empty_after: list[tuple[int, Path]] = []
            for first_seq, path in reversed(segments):
                found, recovery = self._recover_segment(path)
                if recovery is not None:
                    recoveries.append(recovery)
                if found is not None:
                    head_seq, head_hash = found
                    clean = _ends_with_stop(path)
                    self._open_segment(path, records=head_seq - first_seq + 1)
                    break
                empty_after.append((first_seq, path))
            # Segments with no whole record after the head were created just before a crash: the next one is
            # reused, any other is removed (it is empty after recovery).
            for first_seq, path in empty_after:
                if first_seq == head_seq + 1 and self._fd is None:
                    self._open_segment(path, records=0)
                elif self._segment != path:
                    path.unlink()
                    fsync_dir(self._dir)
        except OSError as exc:
            raise _unavailable("recover the end of its chain", exc) from exc
        self._head_seq = head_seq
        return ChainHead(self._writer_id, head_seq, head_hash, tuple(recoveries), clean)

    def _anchor_head(self) -> tuple[int, str] | None:
        anchor = self.store.anchor(self._writer_id)
        return None if anchor is None else (anchor.seq, anchor.hash)

    def _recover_segment(self, path: Path) -> tuple[tuple[int, str] | None, Recovery | None]:
        size = path.stat().st_size
        if size == 0:
            return None, None
        with path.open("rb") as handle:
            offset = max(0, size - _TAIL_WINDOW)
            handle.seek(offset)
            tail = handle.read()
            found = _last_record(tail)
            if found is None and offset > 0:
                offset, tail = 0, path.read_bytes()
                found = _last_record(tail)
        good_end = offset + (found[0] if found else 0)
        recovery = None
        if good_end < size:
            recovery = self._cut(path, good_end, size)
        return (None if found is None else (found[1], found[2])), recovery

    def _cut(self, path: Path, good_end: int, size: int) -> Recovery:
        """Keep the torn bytes aside (forensics), then truncate the segment to its last whole record, durably."""
        assert self._dir is not None
        with path.open("rb") as handle:
            handle.seek(good_end)
            torn = handle.read()
        n = 1
        while (keep := path.with_name(f"{path.name}.torn-{n}")).exists():
            n += 1
        write_new(keep, torn)  # nothing is cut until the torn bytes are safely kept
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, good_end)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(self._dir)
        return Recovery(location=f"{self._writer_id}/{path.name}", truncated_bytes=size - good_end, kept_as=keep.name)

    def _open_segment(self, path: Path, *, records: int) -> None:
        if records >= self.segment_max_records:
            self._fd, self._segment = None, None  # full: the next append starts a new segment
            return
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self._segment, self._segment_records = path, records

    def _new_segment(self, first_seq: int) -> None:
        assert self._dir is not None
        self.sync()  # the old segment's last lines first
        self._close_segment()
        path = self._dir / segment_name(first_seq)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.fsync(fd)
            fsync_dir(self._dir)
        except OSError:
            os.close(fd)
            raise
        self._fd, self._segment, self._segment_records = fd, path, 0

    def _close_segment(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd, self._segment, self._unsynced = None, None, False

    # --- appending -----------------------------------------------------------------------------------------
    def append(self, lines: Sequence[bytes], first_seq: int) -> None:
        self.write(lines, first_seq)
        self.sync()

    def write(self, lines: Sequence[bytes], first_seq: int) -> None:
        skip = max(0, self._head_seq - first_seq + 1)  # as a secondary, records it already holds
        if skip:
            lines, first_seq = lines[skip:], first_seq + skip
        if not lines:
            return
        try:
            if self._fd is None or self._segment_records >= self.segment_max_records:
                self._new_segment(first_seq)
            assert self._fd is not None
            view = memoryview(b"".join(lines))
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            self._close_segment()
            raise _unavailable("write a record", exc) from exc
        self._unsynced = True
        self._segment_records += len(lines)
        self._head_seq = first_seq + len(lines) - 1

    def sync(self) -> None:
        if not self._unsynced or self._fd is None:
            return
        try:
            os.fdatasync(self._fd)
        except OSError as exc:
            self._close_segment()
            raise _unavailable("write a record", exc) from exc
        self._unsynced = False
        if self._segment_records >= self.segment_max_records:
            self._close_segment()  # a full segment holds no open write handle; the next batch starts a new one

    def probe(self) -> None:
        assert self._dir is not None, "open() first"
        try:
            stat = os.statvfs(self._dir)
        except OSError as exc:
            raise _unavailable("be inspected", exc) from exc
        if stat.f_flag & os.ST_RDONLY:
            raise AuditUnavailable("audit store is on a read-only file system")
        if stat.f_bavail * stat.f_frsize < _MIN_FREE_BYTES:
            raise AuditUnavailable("audit store is (nearly) full")
        if not os.access(self._dir, os.W_OK):
            raise AuditUnavailable("audit store is not writable")

    def sync_probe(self) -> None:
        assert self._dir is not None, "open() first"
        try:
            fsync_dir(self._dir)  # the chain's directory: a sync the failing device must answer
        except OSError as exc:
            raise _unavailable("sync", exc) from exc

    def reader(self) -> FileStore:
        return self.store

    def close(self) -> None:
        self._close_segment()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
