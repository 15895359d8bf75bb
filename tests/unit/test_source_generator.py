"""GeneratorSource: determinism, restore, exhaustion, rate limiting."""

from __future__ import annotations

import time

import orjson

from app.sources.base import Checkpoint
from app.sources.generator import GeneratorSource
from app.tokens import Token


def _drain(src: GeneratorSource, batch: int, limit: int = 100_000) -> tuple[list[Token], Checkpoint | None]:
    out: list[Token] = []
    last: Checkpoint | None = None
    while len(out) < limit:
        b = src.poll(batch)
        out += b.tokens
        if b.checkpoints:
            last = b.checkpoints[-1]
        if b.exhausted:
            break
    return out, last


def test_same_rows_for_any_batch_size() -> None:
    a, _ = _drain(GeneratorSource("g", rows=1000, seed=3, key_field="customer"), 7)
    b, _ = _drain(GeneratorSource("g", rows=1000, seed=3, key_field="customer"), 1000)
    c, _ = _drain(GeneratorSource("g", rows=1000, seed=3, key_field="customer"), 333)
    assert a == b == c and len(a) == 1000
    t = a[10]
    assert t["token_id"] == "g:10"
    assert t["source_position"] == "10" and t["source_id"] == "g" and t["lineage"] == []
    assert t["event_time_ms"] == 1_700_000_000_000 + 10
    assert t["key"] == str(t["payload"]["customer"])
    assert GeneratorSource("g", rows=None, seed=3).payload(10) == t["payload"]


def test_payload_shape_and_seed_dependence() -> None:
    toks, _ = _drain(GeneratorSource("g", rows=2000, seed=1), 500)
    sizes = [len(orjson.dumps(t["payload"])) for t in toks]
    assert min(sizes) >= 100 and max(sizes) <= 150
    p = toks[0]["payload"]
    assert set(p) >= {"id", "customer", "country", "amount", "quantity", "note"}
    assert all(len(t["payload"]["country"]) == 2 and t["payload"]["quantity"] > 0 for t in toks)
    assert len({t["payload"]["country"] for t in toks}) == 6
    assert all(t["key"] is None for t in toks)
    other, _ = _drain(GeneratorSource("g", rows=2000, seed=2), 500)
    assert [t["payload"] for t in other] != [t["payload"] for t in toks]


def test_checkpoint_and_restore_continue_identically() -> None:
    full, _ = _drain(GeneratorSource("g", rows=1000, seed=3), 1000)
    g = GeneratorSource("g", rows=1000, seed=3)
    first = g.poll(300)
    cp = first.checkpoints[0]
    assert cp == Checkpoint("source/g/generator", "g", "", "seed:3", 0, 300, 300)
    # an aborted transaction: the same instance is restored to the committed state
    g.poll(123)
    g.restore({cp.key: cp})
    rest, last = _drain(g, 256)
    assert first.tokens + rest == full
    assert last is not None and last.offset == 1000
    # a new process restored from the journal
    g2 = GeneratorSource("g", rows=1000, seed=3)
    g2.restore({cp.key: cp})
    rest2, _ = _drain(g2, 97)
    assert rest2 == rest
    # no checkpoint: from the start
    g3 = GeneratorSource("g", rows=1000, seed=3)
    g3.poll(10)
    g3.restore({})
    assert g3.poll(1).tokens[0]["token_id"] == "g:0"


def test_exhaustion() -> None:
    g = GeneratorSource("g", rows=5, seed=0)
    b = g.poll(3)
    assert len(b.tokens) == 3 and not b.exhausted
    b = g.poll(3)
    assert len(b.tokens) == 2 and b.exhausted and b.checkpoints[0].offset == 5
    for _ in range(3):
        b = g.poll(3)
        assert b.tokens == [] and b.checkpoints == [] and b.exhausted
    empty = GeneratorSource("g", rows=0, seed=0).poll(10)
    assert empty.exhausted and empty.tokens == []
    endless = GeneratorSource("g", rows=None, seed=0)
    assert not endless.poll(10).exhausted
    assert endless.poll(0).tokens == []


def test_rate_limit_returns_fewer_rows_and_wall_clock_event_time() -> None:
    g = GeneratorSource("g", rows=None, seed=0, rate_per_s=200)
    t0 = time.monotonic()
    got = 0
    longest = 0.0
    before_ms = int(time.time() * 1000)
    while time.monotonic() - t0 < 0.3:
        s = time.monotonic()
        b = g.poll(10_000)
        longest = max(longest, time.monotonic() - s)
        got += len(b.tokens)
        for t in b.tokens:
            assert t["event_time_ms"] is not None and t["event_time_ms"] >= before_ms
    assert 20 <= got <= 200 * 0.3 + 20
    assert longest < 0.2
