"""Example user functions, referenced from pipelines/demo.yaml as ``module:function``.

User functions take a payload dict and return a new one; they must be
deterministic (same input, same output) for exactly-once re-runs to converge.
"""

from __future__ import annotations

from typing import Any

EUR_PER_USD_CENT = 0.0092


def add_amount_eur(row: dict[str, Any]) -> dict[str, Any]:
    """Add ``amount_eur`` (rounded to cents) computed from integer ``amount`` cents."""
    return {**row, "amount_eur": round(row["amount"] * EUR_PER_USD_CENT, 2)}


def add_amount_eur_batch(batch: Any) -> Any:
    """``add_amount_eur`` as a ``map_batch`` function (pyarrow RecordBatch in and out):
    one Arrow kernel over the batch's ``amount`` column, row-wise, so a one-row batch
    gives the same row. pyarrow is imported here, so the row examples do not load it."""
    import pyarrow as pa
    import pyarrow.compute as pc

    eur = pc.round(pc.multiply(pc.cast(batch.column("amount"), pa.float64()), EUR_PER_USD_CENT), 2)
    return batch.append_column("amount_eur", eur)


def explode_note_words(row: dict[str, Any]) -> list[dict[str, Any]]:
    """One child row per word of ``note`` (a fan-out example for ``flat_map``)."""
    return [{"id": row.get("id"), "word": w} for w in str(row.get("note", "")).split()]
