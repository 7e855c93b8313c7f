"""The ground floor of durable files (``appliance._fs``): directory fsync, atomic replacement, SHA-256."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest

from appliance._fs import atomic_write, fsync_dir, sha256_file, sha256_files


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
