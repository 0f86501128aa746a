"""Argument checks shared by the configs and public functions; each error names the argument and what was expected."""
from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch

Config = TypeVar("Config")


def check_int(name: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int in [minimum, maximum] (either bound optional); bools are rejected.

    TypeError for a non-integer, ValueError for one out of range; both name ``name``.
    """
    expected = "an int" + (f" >= {minimum}" if minimum is not None and maximum is None else "") + (
        f" in [{minimum}, {maximum}]" if minimum is not None and maximum is not None else "") + (
        f" <= {maximum}" if minimum is None and maximum is not None else "")
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be {expected}, got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {expected}, got {value}")
    return int(value)


def check_real(name: str, value: Any, expected: str = "", ok: Callable[[float], bool] = lambda v: True) -> float:
    """``value`` as a finite float for which ``ok`` holds; ``expected`` says the range in the message.

    TypeError for a non-number (bools included), ValueError for NaN, an infinity or a value ``ok`` rejects.
    """
    description = f"a finite number {expected}".rstrip()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {description}, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or not ok(value):
        raise ValueError(f"{name} must be {description}, got {value!r}")
    return value


def check_positive(name: str, value: Any) -> float:
    """``value`` as a finite float > 0: the one range rates, temperatures and learning rates share."""
    return check_real(name, value, "> 0", lambda v: v > 0)


def check_bool(name: str, value: Any) -> bool:
    """``value`` if it is True or False; TypeError otherwise, since a truthy 1 or "no" would pass silently."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of ``allowed``; ValueError listing them otherwise."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


def check_device(name: str, value: Any) -> torch.device:
    """``value`` as a torch.device that exists on this machine; ValueError naming ``name`` otherwise.

    Checked up front so that a missing GPU is one clear message, not torch's assertion deep inside a run.
    """
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError):
        raise ValueError(f"{name} must be a torch device such as 'cpu' or 'cuda', got {value!r}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}={str(device)!r}, but CUDA is not available here (torch {torch.__version__}); "
                             f"use 'cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{name}={str(device)!r}, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name}={str(device)!r}, but MPS is not available here; use 'cpu'")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{name} must be 'cpu', 'cuda' or 'mps', got {str(device)!r}")
    return device


def config_from_dict(cls: type[Config], data: object) -> Config:
    """``cls(**data)`` for a dataclass config: missing keys take their defaults; a non-mapping raises
    TypeError and unknown keys ValueError, both naming the config."""
    if not isinstance(data, Mapping):
        raise TypeError(f"data must be a mapping of {cls.__name__} fields, got {type(data).__name__}")
    unknown = sorted(set(data) - {field.name for field in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {unknown}")
    return cls(**data)
