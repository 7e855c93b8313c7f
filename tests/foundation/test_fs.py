"""The ground floor of durable files (``appliance._fs``): directory fsync, atomic replacement, exclusive creation,
lock files, SHA-256."""

from __future__ import annotations

import fcntl
import hashlib
import os
import stat
from pathlib import Path

import pytest

from appliance._fs import atomic_write, exclusive_lock, fsync_dir, new_dir, sha256_file, sha256_files, write_new


def test_fsync_dir_syncs_a_directory_and_refuses_anything_else(tmp_path: Path) -> None:
    """O_DIRECTORY: a path that is not a directory (a file put where a directory was expected) is an error."""
    fsync_dir(tmp_path)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"x")
    with pytest.raises(NotADirectoryError):
        fsync_dir(not_a_dir)


def test_atomic_write_replaces_with_the_mode_and_leaves_no_temporary(tmp_path: Path) -> None:
    """The new content replaces the old with the given mode (umask aside); nothing else is left in the directory."""
    path = tmp_path / "sub" / "list.json"
    atomic_write(path, b"old")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    atomic_write(path, b"new", mode=0o644)
    assert path.read_bytes() == b"new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["list.json"]


def test_atomic_write_that_fails_keeps_the_old_file_and_removes_its_temporary(tmp_path: Path) -> None:
    """A rename that fails (a directory in the way) raises the OS error and leaves no temporary behind."""
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "inside").write_bytes(b"keep")
    with pytest.raises(OSError):
        atomic_write(blocked, b"data")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocked"]
    assert (blocked / "inside").read_bytes() == b"keep"


def test_sha256_of_files_is_the_digest_of_their_bytes_in_order(tmp_path: Path) -> None:
    """One file's digest, and several files' digest over their concatenation (larger than one read chunk)."""
    first, second = tmp_path / "a", tmp_path / "b"
    first.write_bytes(b"x" * ((1 << 20) + 7))
    second.write_bytes(b"tail")
    assert sha256_file(first) == hashlib.sha256(first.read_bytes()).hexdigest()
    assert sha256_files([first, second]) == hashlib.sha256(first.read_bytes() + b"tail").hexdigest()
    assert sha256_files([second, first]) != sha256_files([first, second])


def test_write_new_creates_the_whole_file_with_its_mode_whatever_the_umask(tmp_path: Path) -> None:
    """Every byte lands (more than one write's worth) and the mode is 0600 even under a permissive umask."""
    path = tmp_path / "new"
    data = os.urandom(3 << 20)
    old = os.umask(0)
    try:
        write_new(path, data)
    finally:
        os.umask(old)
    assert path.read_bytes() == data
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_write_new_refuses_an_existing_file_or_a_link_and_leaves_them(tmp_path: Path) -> None:
    """O_EXCL | O_NOFOLLOW: neither a file nor a dangling link in the way is written through or replaced."""
    taken = tmp_path / "taken"
    taken.write_bytes(b"keep")
    with pytest.raises(FileExistsError):
        write_new(taken, b"new")
    assert taken.read_bytes() == b"keep"
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FileExistsError):
        write_new(link, b"new")
    assert not (tmp_path / "elsewhere").exists()


def test_write_new_that_fails_removes_the_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed fsync (a disk error) raises it and leaves no partial file behind."""

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="Input/output"):
        write_new(tmp_path / "torn", b"data")
    assert list(tmp_path.iterdir()) == []


def test_exclusive_lock_excludes_another_holder_until_the_block_ends(tmp_path: Path) -> None:
    """While the block runs, another open file description cannot take the lock; after it, it can."""
    path = tmp_path / "x.lock"
    with exclusive_lock(path, lambda exc: RuntimeError(exc.strerror)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        fd = os.open(path, os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def test_exclusive_lock_that_cannot_be_opened_raises_the_callers_error(tmp_path: Path) -> None:
    """A lock file in a missing directory raises what ``refuse`` built from the OS error, with no OS cause."""

    class Refused(Exception):
        pass

    def refuse(exc: OSError) -> Refused:
        return Refused(exc.strerror)

    with (
        pytest.raises(Refused, match="No such file") as caught,
        exclusive_lock(tmp_path / "missing" / "x.lock", refuse),
    ):
        pass
    assert caught.value.__cause__ is None


def test_new_dir_appears_whole_with_its_mode_or_not_at_all(tmp_path: Path) -> None:
    """The filled directory takes its final name only when the block ends (with ``mode``); a block that fails
    leaves neither it nor its temporary directory."""
    final = tmp_path / "sub" / "sealed"
    with new_dir(final, mode=0o750) as tmp:
        (tmp / "a").write_bytes(b"1")
        assert not final.exists() and tmp.parent == final.parent
    assert (final / "a").read_bytes() == b"1" and stat.S_IMODE(final.stat().st_mode) == 0o750
    other = tmp_path / "sub" / "failed"
    with pytest.raises(RuntimeError), new_dir(other) as tmp:
        (tmp / "a").write_bytes(b"1")
        raise RuntimeError("half-written")
    assert sorted(p.name for p in final.parent.iterdir()) == ["sealed"]


def test_new_dir_replaces_a_filled_directory_only_when_told(tmp_path: Path) -> None:
    """Over a directory with content the rename fails (and the old content stays) unless ``replace`` is given."""
    final = tmp_path / "served"
    final.mkdir()
    (final / "old").write_bytes(b"old")
    with pytest.raises(OSError), new_dir(final) as tmp:
        (tmp / "new").write_bytes(b"new")
    assert [p.name for p in final.iterdir()] == ["old"]
    with new_dir(final, replace=True) as tmp:
        (tmp / "new").write_bytes(b"new")
    assert [p.name for p in final.iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["served"]
