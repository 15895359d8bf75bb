"""Deterministic generator source (demo, tests, benchmarks).

Guarantees:

* Row ``i``'s payload is a pure function of ``(seed, i)`` (simple tabulation hashing
  of ``i`` with per-seed tables, no PRNG state carried between rows or batches), so
  any batch size, any restore point and any process produce the same rows with the
  same token ids (``<source_id>:<i>``). Encoded payloads are ~115-121 bytes.
* The checkpoint (key ``source/<id>/generator``, ``offset`` = ``rows`` = index of
  the next row) always covers exactly the rows handed out so far; ``restore`` seeks
  to it. Crash behaviour: rows handed out but not committed are produced again,
  identically, after ``restore`` to the last committed checkpoint.
* ``event_time_ms`` is ``start_time_ms + i`` (deterministic) when ``rate_per_s`` is
  unset. With ``rate_per_s`` it is the wall-clock ms at which the row is emitted,
  which is what end-to-end latency benchmarks measure against; such rows are then
  *not* byte-identical across re-reads (only their ids and payloads are).
* ``rate_per_s`` throttles by returning fewer rows; ``poll`` sleeps at most 50 ms.
  The rate clock starts at the first ``poll`` (and again after ``restore``).
* ``rows=None`` never ends; otherwise ``exhausted`` is True on the batch that hands
  out the last row and on every later (empty) batch.
"""

from __future__ import annotations

import array
import functools
import hashlib
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

from app.journal.keys import checkpoint_key
from app.sources.base import Checkpoint, SourceBatch
from app.tokens import Token

log = logging.getLogger(__name__)

COUNTRIES = ("US", "DE", "FR", "JP", "BR", "IN")
NOTES = ("express delivery", "gift wrap please", "standard shipping", "leave at the door", "call on arrival")
# Field tables indexed by hash bits (power-of-two sizes: masks, no modulo, on the hot path).
_CUSTOMERS = tuple(f"c{n:05d}" for n in range(4096))
_COUNTRY64 = ("US",) * 16 + ("DE",) * 12 + ("FR",) * 10 + ("JP",) * 10 + ("BR",) * 8 + ("IN",) * 8
_QTY16 = (1, 1, 1, 1, 2, 2, 2, 3, 3, 4, 4, 5, 6, 7, 8, 9)
_NOTE8 = (*NOTES, NOTES[2], NOTES[2], NOTES[0])
_SKUS = tuple(f"SKU-{n:06d}" for n in range(1024))
_M30 = (1 << 30) - 1
MAX_SLEEP_S = 0.05


@functools.lru_cache(maxsize=32)
def _tables(seed: int) -> tuple[list[int], ...]:
    """Six 4096-entry tables of 30-bit words for simple tabulation hashing of ``i``.

    Derived from SHAKE-256 of the seed, so they are identical on every platform and
    Python version. Row ``i`` hashes to ``T0[i&4095] ^ T1[(i>>12)&4095] ^ T2[(i>>24)&4095]``
    (and likewise T3..T5): a pure function of ``(seed, i)``, periodic after 2**36 rows.
    """
    raw = array.array("I")
    assert raw.itemsize == 4
    raw.frombytes(hashlib.shake_256(f"ledgerflow-generator:{seed}".encode()).digest(6 * 4096 * 4))
    if sys.byteorder == "big":
        raw.byteswap()
    return tuple([x & _M30 for x in raw[k * 4096 : (k + 1) * 4096]] for k in range(6))


class GeneratorSource:
    """Finite or endless stream of synthetic order rows; see the module docstring."""

    def __init__(
        self,
        source_id: str,
        *,
        rows: int | None,
        seed: int,
        key_field: str | None = None,
        rate_per_s: float | None = None,
        start_time_ms: int = 1_700_000_000_000,
    ) -> None:
        if rows is not None and rows < 0:
            raise ValueError("rows must be >= 0 or None")
        if rate_per_s is not None and rate_per_s <= 0:
            raise ValueError("rate_per_s must be > 0 or None")
        self.source_id = source_id
        self.rows = rows
        self.seed = seed
        self.key_field = key_field
        self.rate_per_s = rate_per_s
        self.start_time_ms = start_time_ms
        self.checkpoint_key = checkpoint_key(source_id, "generator")
        self.fingerprint = f"seed:{seed}"
        self.next_row = 0
        self._tabs = _tables(seed)
        self._rate_t0: float | None = None  # monotonic time the rate clock started
        self._rate_n0 = 0  # row index at that time

    def payload(self, i: int) -> dict[str, Any]:
        """Payload of row ``i`` (the same function ``poll`` inlines)."""
        t0, t1, t2, t3, t4, t5 = self._tabs
        lo, mid, hi = i & 4095, (i >> 12) & 4095, (i >> 24) & 4095
        h1 = t0[lo] ^ t1[mid] ^ t2[hi]
        h2 = t3[lo] ^ t4[mid] ^ t5[hi]
        return {
            "id": i,
            "customer": _CUSTOMERS[h1 & 4095],
            "country": _COUNTRY64[(h1 >> 12) & 63],
            "amount": (h2 & 0x1FFFF) - 500,  # cents; a few are <= 0 (refunds)
            "quantity": _QTY16[(h1 >> 18) & 15],
            "sku": _SKUS[(h2 >> 17) & 1023],
            "note": _NOTE8[(h1 >> 22) & 7],
        }

    def restore(self, checkpoints: Mapping[str, Checkpoint]) -> None:
        """Seek to the committed checkpoint (row 0 if there is none)."""
        cp = checkpoints.get(self.checkpoint_key)
        if cp is not None and cp.fingerprint != self.fingerprint:
            log.warning(
                "generator %s: checkpoint was written with %s, now %s; continuing at row %d",
                self.source_id,
                cp.fingerprint,
                self.fingerprint,
                cp.offset,
            )
        self.next_row = cp.offset if cp is not None else 0
        self._rate_t0 = None

    def _rate_limit(self, start: int, end: int) -> int:
        rate = self.rate_per_s
        assert rate is not None
        now = time.monotonic()
        if self._rate_t0 is None:
            self._rate_t0, self._rate_n0 = now, start
        allowed = self._rate_n0 + int((now - self._rate_t0) * rate) + 1
        if allowed <= start:
            time.sleep(min(MAX_SLEEP_S, (start + 1 - allowed) / rate))
            allowed = self._rate_n0 + int((time.monotonic() - self._rate_t0) * rate) + 1
        return min(end, max(start, allowed))

    def poll(self, max_rows: int) -> SourceBatch:
        """Hand out the next ``<= max_rows`` rows and the checkpoint after them."""
        start = self.next_row
        end = start + max(0, max_rows)
        total = self.rows
        if total is not None and end > total:
            end = total
        if self.rate_per_s is not None and end > start:
            end = self._rate_limit(start, end)
        if end <= start:
            return SourceBatch([], [], [], exhausted=total is not None and start >= total)
        sid = self.source_id
        kf = self.key_field
        base_ms = self.start_time_ms
        now_ms = int(time.time() * 1000) if self.rate_per_s is not None else None
        prefix = f"{sid}:"  # token id "<source>:<row index>", stable across re-reads
        t0, t1, t2, t3, t4, t5 = self._tabs
        cust, ctry, qty, skus, notes = _CUSTOMERS, _COUNTRY64, _QTY16, _SKUS, _NOTE8
        tokens: list[Token] = []
        append = tokens.append
        for i in range(start, end):
            lo, mid, hi = i & 4095, (i >> 12) & 4095, (i >> 24) & 4095
            h1 = t0[lo] ^ t1[mid] ^ t2[hi]
            h2 = t3[lo] ^ t4[mid] ^ t5[hi]
            p: dict[str, Any] = {
                "id": i,
                "customer": cust[h1 & 4095],
                "country": ctry[(h1 >> 12) & 63],
                "amount": (h2 & 0x1FFFF) - 500,
                "quantity": qty[(h1 >> 18) & 15],
                "sku": skus[(h2 >> 17) & 1023],
                "note": notes[(h1 >> 22) & 7],
            }
            append(
                {
                    "token_id": f"{prefix}{i}",
                    "key": None if kf is None else str(p[kf]),
                    "payload": p,
                    "source_id": sid,
                    "source_position": str(i),
                    "event_time_ms": base_ms + i if now_ms is None else now_ms,
                    "lineage": [],
                }
            )
        self.next_row = end
        cp = Checkpoint(self.checkpoint_key, sid, "", self.fingerprint, 0, end, end)
        return SourceBatch(tokens, [], [cp], exhausted=total is not None and end >= total)

    def close(self) -> None:
        return None
