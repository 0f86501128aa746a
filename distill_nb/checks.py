"""Argument checks shared by the audio modules; each error names the argument and what was expected."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from numbers import Integral, Real
from typing import TypeVar

Config = TypeVar("Config")


def integer_at_least(value: object, name: str, minimum: int) -> int:
    """``value`` as an int >= ``minimum`` (bools rejected); TypeError or ValueError naming ``name``."""
    expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be {expected}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be {expected}, got {value}")
    return int(value)


def finite_float(value: object, name: str) -> float:
    """``value`` as a finite float (bools rejected); TypeError or ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a finite number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return float(value)


def config_from_dict(cls: type[Config], data: object) -> Config:
    """``cls(**data)`` for a dataclass config: missing keys take their defaults; a non-mapping raises
    TypeError and unknown keys ValueError, both naming the config."""
    if not isinstance(data, Mapping):
        raise TypeError(f"data must be a mapping of {cls.__name__} fields, got {type(data).__name__}")
    unknown = sorted(set(data) - {field.name for field in dataclasses.fields(cls)})
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {unknown}")
    return cls(**data)
