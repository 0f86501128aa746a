"""Atomic file writes: a crash at any point leaves the old file or the new one, never half a file.

A temporary file is named ``.NAME.PID.XXXXXXXX.tmp`` after its target and its writer's process id, so the
next write to the same target can remove what a killed writer left behind without touching a live one's.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, fsync it, then rename it into place.

    The file gets the permissions an ordinary ``open(path, "w")`` would give it (mkstemp's are owner-only).
    If ``write`` raises, the temporary file is removed and ``path`` is untouched. Temporary files of ``path``
    left by writers that were killed are removed first.

    Raises:
        OSError: the folder is not writable, the disk is full, ...; whatever ``write`` raises.
    """
    path = Path(path)
    tmp = write_temporary(path, write)
    try:
        replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomically(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see `write_atomically`).

    Raises:
        OSError: the folder is not writable, the disk is full, ...
    """
    write_atomically(path, lambda tmp: Path(tmp).write_bytes(data))


def write_temporary(path: str | os.PathLike, write: Callable[[str], object]) -> Path:
    """The first half of an atomic write: ``write(tmp_path)`` on a new temporary file next to ``path``, fsynced
    and given ordinary permissions -> its path, for `replace` to rename into place.

    Temporary files of ``path`` whose writer is no longer running are removed first. If ``write`` raises, the
    temporary file is removed.

    Raises:
        OSError: the folder is not writable, the disk is full, ...; whatever ``write`` raises.
    """
    path = Path(path)
    remove_orphans(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(name)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def replace(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Rename ``tmp`` onto ``path`` and fsync the folder, so the rename itself survives a power cut.

    Raises:
        OSError: the rename failed (``path`` is then untouched).
    """
    os.replace(tmp, path)
    _fsync_folder(Path(path).parent)


def remove(path: str | os.PathLike) -> None:
    """Remove ``path`` if it exists and fsync the folder, so the removal is on disk before what follows.

    Raises:
        OSError: the file exists but cannot be removed.
    """
    path = Path(path)
    path.unlink(missing_ok=True)
    _fsync_folder(path.parent)


def remove_orphans(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of ``path`` whose writing process is no longer running -> those removed.

    Only on POSIX: elsewhere ``os.kill(pid, 0)`` does not test a process, it ends it.
    """
    path = Path(path)
    if os.name != "posix":
        return []
    prefix = f".{path.name}."
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return []  # an unreadable folder: the write itself will report the problem
    for entry in entries:
        if not (entry.name.startswith(prefix) and entry.name.endswith(".tmp")):
            continue
        parts = entry.name[len(prefix):-len(".tmp")].split(".")
        # Exactly PID.RANDOM: the temporary file of a longer target name such as "NAME.1.wav" has more parts.
        if len(parts) == 2 and parts[0].isdigit() and not _running(int(parts[0])):
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass  # gone already (another writer cleaned it) or not ours to remove
    return removed


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, ValueError):
        return True  # another user's process (PermissionError) or no valid pid: not provably dead, keep its file
    return True


def _fsync_folder(folder: Path) -> None:
    if not hasattr(os, "O_DIRECTORY"):
        return  # Windows cannot open a folder to fsync it
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
