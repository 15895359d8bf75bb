"""User functions used by integration tests (imported by the pipeline as ``tests.fns:...``)."""

from __future__ import annotations

from typing import Any


def fail_every_97th(row: dict[str, Any]) -> dict[str, Any]:
    """Raises for rows whose ``i`` is a multiple of 97: those must land in the DLQ."""
    if int(row.get("i", 1)) % 97 == 0:
        raise ValueError(f"row {row.get('i')} is unlucky")
    return row


def spoil_some(row: dict[str, Any]) -> dict[str, Any]:
    """Every 500th generated row gets a value PostgreSQL rejects, three kinds in turn."""
    i = int(row["id"])
    if i % 500 == 7:
        kind = (i // 500) % 3
        if kind == 0:
            return {**row, "amount": "not-a-number"}  # invalid input syntax for bigint
        if kind == 1:
            return {**row, "country": "TOO-LONG"}  # value too long for varchar(2)
        return {**row, "quantity": -1}  # violates the CHECK constraint
    return row


def jitter_time(row: dict[str, Any]) -> dict[str, Any]:
    """Event time ``ts`` that runs forward with ``id`` but arrives up to 4 s out of order."""
    i = int(row["id"])
    return {**row, "ts": 1_700_000_000_000 + i * 10 - (i * 7919) % 4000}


def running_total(state: Any, token: Any) -> list[dict[str, Any]]:
    """User stateful function: per-key running total; emits every 5th row of a key."""
    key = token["key"]
    seen = state.get(key, {"n": 0, "total": 0})
    seen = {"n": seen["n"] + 1, "total": seen["total"] + int(token["payload"]["amount"])}
    state[key] = seen
    return [{"key": key, **seen}] if seen["n"] % 5 == 0 else []


def oversize_once(row: dict[str, Any]) -> dict[str, Any]:
    """Row ``id`` 4321 gets an incompressible 800 kB field the first time it is seen
    (a marker file at ``$LF_TEST_MARKER`` remembers it): the broker refuses that record
    (the output topic allows 600 kB), so the whole transaction must abort and be redone."""
    import base64
    import os
    from pathlib import Path

    if int(row["id"]) != 4321:
        return row
    marker = Path(os.environ["LF_TEST_MARKER"])
    if marker.exists():
        return row
    marker.write_text("oversized once\n")
    return {**row, "blob": base64.b64encode(os.urandom(600_000)).decode()}
