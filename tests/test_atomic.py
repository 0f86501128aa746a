"""Tests for distill_nb.atomic: a write either replaces the file completely or leaves it as it was."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from distill_nb.atomic import write_atomically, write_bytes_atomically


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
