"""User functions of the security tests (imported by pipelines as ``tests.security.fns:...``)."""

from __future__ import annotations

from typing import Any


def refuse_every_97th(row: dict[str, Any]) -> dict[str, Any]:
    """Raises for generated rows whose ``id`` is a multiple of 97: they go to the DLQ."""
    if int(row["id"]) % 97 == 0:
        raise ValueError(f"row {row['id']} is refused")
    return row
