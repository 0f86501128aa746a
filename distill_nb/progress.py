"""The progress callback that long-running functions take, and a helper to nest one inside another."""
from __future__ import annotations

from collections.abc import Callable

# progress(fraction in [0, 1], message): the widgets and tqdm.auto adapt it.
Progress = Callable[[float, str], None]


def scaled(progress: Progress | None, start: float, end: float) -> Progress | None:
    """A callback that maps [0, 1] onto [start, end] of ``progress`` (None stays None)."""
    if progress is None:
        return None
    return lambda fraction, message: progress(start + fraction * (end - start), message)


def silent(fraction: float, message: str) -> None:
    """A callback that reports nothing."""
