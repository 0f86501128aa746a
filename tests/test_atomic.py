"""Tests for distill_nb.atomic: a write either replaces the file completely or leaves it as it was."""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

import pytest

from distill_nb.atomic import remove_orphans, write_atomically, write_bytes_atomically


def test_write_bytes_replaces_the_file_with_ordinary_permissions(tmp_path):
    path = tmp_path / "model.bin"
    write_bytes_atomically(path, b"first")
    write_bytes_atomically(str(path), b"second")
    assert path.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]  # no temporary file left
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not a temporary file's private 0600


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "take.wav"
    path.write_bytes(b"old")

    def half_write_then_crash(tmp: str) -> None:
        Path(tmp).write_bytes(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, half_write_then_crash)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["take.wav"]


def test_the_temporary_file_is_in_the_same_folder(tmp_path):
    """os.replace is atomic only within one file system: the temporary file sits next to the target."""
    seen = []
    write_atomically(tmp_path / "a.txt", lambda tmp: seen.append(Path(tmp).parent) or Path(tmp).write_text("x"))
    assert seen == [tmp_path] and (tmp_path / "a.txt").read_text() == "x"


def test_the_folder_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    """Without it, a power cut after the write could lose the rename even though the data reached the disk."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(
        "fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file") or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda *args: events.append("replace") or real_replace(*args))
    write_bytes_atomically(tmp_path / "a.bin", b"x")
    assert events == ["fsync file", "replace", "fsync folder"]


def _fork_writer(path: Path) -> tuple[int, Path]:
    """A child process that starts an atomic write of ``path`` and hangs mid-write -> (pid, its temporary file)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child never returns into pytest
        try:
            def hang(tmp: str) -> None:
                Path(tmp).write_bytes(b"half a fi")
                os.write(write_end, tmp.encode() + b"\n")
                time.sleep(60)

            write_atomically(path, hang)
        finally:
            os._exit(1)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        tmp = Path(pipe.readline().strip())
    return pid, tmp


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
    path = tmp_path / "model.distill"
    pid, tmp = _fork_writer(path)
    assert tmp.parent == tmp_path and tmp.name.startswith(f".model.distill.{pid}.") and tmp.name.endswith(".tmp")
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert tmp.exists()  # what a kill -9 leaves behind
    # A live writer's file for the target "model.distill.PID.wav", whose name also starts with the dead pid: kept.
    other = tmp_path / f".model.distill.{pid}.wav.{os.getpid()}.abc.tmp"
    other.write_bytes(b"")
    write_bytes_atomically(path, b"new")
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.name, "model.distill"]


def test_a_live_writers_temporary_file_is_kept(tmp_path):
    path = tmp_path / "take.wav"
    pid, tmp = _fork_writer(path)
    try:
        write_bytes_atomically(path, b"mine")
        assert tmp.read_bytes() == b"half a fi" and path.read_bytes() == b"mine"
        assert remove_orphans(path) == []
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert remove_orphans(path) == [tmp] and not tmp.exists()
