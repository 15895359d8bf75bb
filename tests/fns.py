"""User functions used by integration tests (imported by the pipeline as ``tests.fns:...``)."""

from __future__ import annotations

from typing import Any


def fail_every_97th(row: dict[str, Any]) -> dict[str, Any]:
    """Raises for rows whose ``i`` is a multiple of 97: those must land in the DLQ."""
    if int(row.get("i", 1)) % 97 == 0:
        raise ValueError(f"row {row.get('i')} is unlucky")
    return row
