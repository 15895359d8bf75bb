"""``map_batch`` user functions: one Arrow RecordBatch of payloads in, one out.

A ``map_batch`` step names ``module:function``, a function that takes a
``pyarrow.RecordBatch`` (one column per payload field present in any row of the batch;
a row without the field holds null there) and returns a RecordBatch (or Table) with the
same number of rows, row *i* of the output being the new payload of input row *i*.

Guarantees and rules:

* **Row-wise and deterministic.** Row *i* of the result must depend only on row *i* of
  the input, never on its neighbours or on the batch size. The batch a function sees is
  the runner's choice (a partition's share of one poll on the columnar path, a single
  row on the row path and when a batch is redone row by row), so a function that
  mixes rows gives different answers on a re-run after a crash and breaks
  exactly-once. Token ids, keys and record order are kept, as ``map`` keeps them.
* **Field order.** A payload's fields come in the order of the result's columns; the
  input columns are the batch's fields in the order first seen. Rows of one topic
  whose fields come in different orders can therefore get another order in a batch
  than alone; the values and token ids are the same either way.
* **Nulls.** A field that is null in the result is written as JSON null only where the
  input row had that field; otherwise it is left out. So a field that row lacked, seen
  as null because another row of the batch has it, stays absent, and both paths give
  the same payload.
* **Errors stop at the row.** A function that raises, returns something else than a
  RecordBatch or Table, or returns another number of rows fails that batch; the runner
  then runs the rows one at a time, and each row whose one-row batch still fails goes
  to the DLQ with the error (``transform_error``), as a failing ``map`` row does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa

BatchFn = Callable[[Any], Any]


class BatchFnError(ValueError):
    """A ``map_batch`` function failed or broke its contract (wrong type or row count);
    the message names the function."""


def apply_batch_fn(fn: BatchFn, payloads: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """``fn`` over ``payloads`` as one RecordBatch; the new payloads in row order."""
    names = dict.fromkeys(k for p in payloads for k in p)  # every row's fields, first seen first
    batch = pa.RecordBatch.from_pydict({n: [p.get(n) for p in payloads] for n in names})
    try:
        result = fn(batch)
    except Exception as exc:
        raise BatchFnError(f"map_batch {name} failed: {type(exc).__name__}: {exc}") from exc
    if isinstance(result, pa.Table):
        result = result.combine_chunks().to_batches()
        result = result[0] if len(result) == 1 else pa.RecordBatch.from_pylist([])
    if not isinstance(result, pa.RecordBatch):
        raise BatchFnError(f"map_batch {name} returned {type(result).__name__}, expected a pyarrow RecordBatch")
    if result.num_rows != len(payloads):
        raise BatchFnError(f"map_batch {name} returned {result.num_rows} rows for {len(payloads)}")
    out: list[dict[str, Any]] = result.to_pylist()
    for i, row in enumerate(out):
        if None in row.values():
            before = payloads[i]
            out[i] = {k: v for k, v in row.items() if v is not None or k in before}
    return out
