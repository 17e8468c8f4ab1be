"""Numbers read from the Trainer's log dicts (a value may be missing, a string or a tensor)."""

from __future__ import annotations

from typing import Any


def as_float(value: Any) -> float | None:
    """float(value), NaN and Inf included; None for missing or non-numeric values."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
