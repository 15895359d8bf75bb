"""Deterministic generator source (demo, tests, benchmarks).

Row ``i``'s payload depends only on ``(seed, i)``, never on batch boundaries, so a
restore to any checkpoint re-creates the same rows with the same token ids. With
``rate_per_s`` the source is throttled and ``event_time_ms`` is the wall clock at
emission (what latency measurements need); otherwise it is ``start_time_ms + i``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from app.sources.base import Checkpoint, SourceBatch
from app.tokens import Token

COUNTRIES = ("US", "DE", "FR", "JP", "BR", "IN")
NOTES = ("express delivery", "gift wrap please", "standard shipping", "leave at the door", "call on arrival")
_MASK = (1 << 64) - 1


def _mix(x: int) -> int:
    """splitmix64 finaliser: a cheap, well-spread hash of (seed, i)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


class GeneratorSource:
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
        self.source_id = source_id
        self.rows = rows
        self.seed = seed
        self.key_field = key_field
        self.rate = rate_per_s
        self.start_time_ms = start_time_ms
        self.next = 0
        self.key = f"source/{source_id}/generator"
        self._rate_t0 = time.monotonic()
        self._rate_n0 = 0

    def payload(self, i: int) -> dict[str, object]:
        h = _mix(self.seed * 1_000_003 + i)
        return {
            "id": i,
            "customer": f"c{h % 5000:04d}",
            "country": COUNTRIES[(h >> 16) % 6],
            "amount": (h >> 24) % 100_000 - 500,  # cents; a few are <= 0 (refunds)
            "quantity": 1 + (h >> 40) % 9,
            "note": NOTES[(h >> 48) % 5],
        }

    def restore(self, checkpoints: Mapping[str, Checkpoint]) -> None:
        cp = checkpoints.get(self.key)
        self.next = cp.offset if cp is not None else 0
        self._rate_t0, self._rate_n0 = time.monotonic(), self.next

    def poll(self, max_rows: int) -> SourceBatch:
        start = self.next
        end = start + max_rows
        if self.rows is not None:
            end = min(end, self.rows)
        if self.rate is not None:
            allowed = self._rate_n0 + int((time.monotonic() - self._rate_t0) * self.rate)
            if allowed <= start:
                time.sleep(min(0.05, (start + 1 - allowed) / self.rate))
                allowed = self._rate_n0 + int((time.monotonic() - self._rate_t0) * self.rate)
            end = min(end, max(start, allowed))
        if end <= start:
            return SourceBatch([], [], [], exhausted=self.rows is not None and start >= self.rows)
        sid, kf, payload = self.source_id, self.key_field, self.payload
        now_ms = int(time.time() * 1000) if self.rate is not None else None
        t0 = self.start_time_ms
        tokens: list[Token] = []
        append = tokens.append
        for i in range(start, end):
            p = payload(i)
            append(
                {
                    "token_id": f"{sid}:{i}",
                    "key": str(p[kf]) if kf else None,
                    "payload": p,
                    "source_id": sid,
                    "source_position": str(i),
                    "event_time_ms": now_ms if now_ms is not None else t0 + i,
                    "lineage": [],
                }
            )
        self.next = end
        cp = Checkpoint(self.key, sid, "", f"seed:{self.seed}", 0, end, end)
        return SourceBatch(tokens, [], [cp], exhausted=self.rows is not None and end >= self.rows)

    def close(self) -> None:
        return None
