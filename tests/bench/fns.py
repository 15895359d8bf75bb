"""The benchmark's trivial map (the same work every contender does: add one field)."""

from __future__ import annotations

from typing import Any


def add_x(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "x": 1}
