"""The benchmark's trivial map (the same work every contender does: add one field)."""

from __future__ import annotations

from typing import Any


def add_x(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "x": 1}


def add_x_batch(batch: Any) -> Any:
    """``add_x`` as a ``map_batch`` function: one constant column for the whole batch."""
    import pyarrow as pa

    return batch.append_column("x", pa.array([1] * batch.num_rows, pa.int64()))
