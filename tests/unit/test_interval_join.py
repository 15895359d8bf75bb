"""The interval join's logic without a broker: the same two partition sequences, read
in any interleaving, cut into any batches, with crashes that lose the open batch,
give exactly the output of a plain nested loop over the inputs (written here,
independently of ``app.transforms.interval_join``)."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from app.codecs.tokens import CodecError
from app.config.pipeline import PipelineSpec, Transform
from app.state.store import PartitionStore
from app.tokens import Token
from app.transforms.interval_join import IntervalJoin

BEFORE, AFTER, GRACE = 300, 200, 150


def tok(tid: str, key: str | None, t: int | None, **payload: Any) -> Token:
    body: dict[str, Any] = {"n": tid, **payload}
    if key is not None:
        body["k"] = key
    if t is not None:
        body["ts"] = t
    return {
        "token_id": tid,
        "key": key,
        "payload": body,
        "source_id": "s",
        "source_position": tid,
        "event_time_ms": t,
        "lineage": [],
    }


def join(kind: str = "inner", fields: list[str] | None = None) -> IntervalJoin:
    return IntervalJoin(
        key_field="k",
        time_field="ts",
        right_key_field="k",
        right_time_field="ts",
        before_ms=BEFORE,
        after_ms=AFTER,
        grace_ms=GRACE,
        join_type=kind,
        prefix="r_",
        fields=fields or [],
    )


def sequence(rng: random.Random, side: str, n: int) -> list[Token]:
    """Rows drifting forward in time, out of order by up to 250 ms (some beyond the
    grace: late), a few without a key or a time."""
    out = []
    for i in range(n):
        t = 1000 + i * 40 + rng.randint(-250, 60)
        key = f"k{rng.randint(0, 5)}"
        if i % 37 == 5:
            out.append(tok(f"{side}{i}", None, t))
        elif i % 41 == 7:
            out.append(tok(f"{side}{i}", key, None))
        else:
            out.append(tok(f"{side}{i}", key, t, v=i))
    return out


def reference(left: list[Token], right: list[Token], kind: str) -> dict[str, dict[str, Any]]:
    """Nested loop: non-late rows of each side (own order, watermark = max time - grace),
    pairs within the bounds; unmatched rows whose window the other side's final
    watermark closed."""

    def keep(rows: list[Token]) -> tuple[list[Token], float]:
        wm: float = float("-inf")
        kept = []
        for r in rows:
            k, t = r["payload"].get("k"), r["payload"].get("ts")
            if k is None or t is None:
                continue
            if t < wm:
                continue
            kept.append(r)
            wm = max(wm, t - GRACE)
        return kept, wm

    ls, wm_l = keep(left)
    rs, wm_r = keep(right)
    out: dict[str, dict[str, Any]] = {}
    hit: set[str] = set()
    for lrow in ls:
        for rrow in rs:
            lp, rp = lrow["payload"], rrow["payload"]
            if lp["k"] == rp["k"] and lp["ts"] - BEFORE <= rp["ts"] <= lp["ts"] + AFTER:
                out[f"{lrow['token_id']}+{rrow['token_id']}"] = {**lp, **{"r_" + f: v for f, v in rp.items()}}
                hit |= {lrow["token_id"], rrow["token_id"]}
    if kind in ("left", "outer"):
        for lrow in ls:
            if lrow["token_id"] not in hit and wm_r > lrow["payload"]["ts"] + AFTER:
                out[f"{lrow['token_id']}+"] = dict(lrow["payload"])
    if kind == "outer":
        for rrow in rs:
            if rrow["token_id"] not in hit and wm_l > rrow["payload"]["ts"] + BEFORE:
                out[f"+{rrow['token_id']}"] = {"r_" + f: v for f, v in rrow["payload"].items()}
    return out


class Run:
    """One partition run like the transform runner does it: rows of both sides in a
    given interleaving, a commit every few rows (store changes applied locally), and
    crashes that lose the open batch: the store reopens at its committed state and
    both sides are re-read from their committed positions."""

    def __init__(self, path: Path, kind: str) -> None:
        self.path, self.kind = path, kind
        self.store = PartitionStore(path, "cl", 0)
        self.op = join(kind)
        self.op.open(0, self.store)
        self.committed: list[tuple[str, Token]] = []
        self.late = 0

    def go(self, left: list[Token], right: list[Token], rng: random.Random, crashes: int) -> None:
        pos = [0, 0]  # committed positions
        offset = 0
        while pos[0] < len(left) or pos[1] < len(right):
            at = list(pos)
            batch: list[tuple[str, Token]] = []
            late = 0
            for _ in range(rng.randint(1, 25)):
                sides = [s for s in (0, 1) if at[s] < len((left, right)[s])]
                if not sides:
                    break
                s = rng.choice(sides)
                row = (left, right)[s][at[s]]
                at[s] += 1
                self.store.begin_row()
                try:
                    outs = (self.op.process if s == 0 else self.op.process_right)(0, self.store, row)
                except CodecError as exc:
                    self.store.end_row(False)
                    self.op.row_failed(0, self.store)
                    late += exc.reason_class == "join_late"
                    continue
                self.store.end_row(True)
                batch.extend(outs)  # type: ignore[arg-type]
            if crashes and rng.random() < 0.3:  # the batch is lost: reopen at the committed state
                crashes -= 1
                self.store.close()
                self.store = PartitionStore(self.path, "cl", 0)
                self.op = join(self.kind)
                self.op.open(0, self.store)
                continue
            self.op.end_batch(0, self.store)
            changes = self.store.take_changes()
            offset += len(changes)
            self.store.apply_committed(offset)
            self.committed.extend(batch)
            self.late += late
            pos = at


KINDS = ["inner", "left", "outer"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_interleaving_batching_and_crash_gives_the_reference(tmp_path: Path, kind: str) -> None:
    data = random.Random(11)
    left, right = sequence(data, "L", 300), sequence(data, "R", 300)
    want = reference(left, right, kind)
    assert sum(1 for k in want if k.endswith("+") or k.startswith("+")) > 0 or kind == "inner"
    results = []
    for seed in range(6):
        run = Run(tmp_path / f"{kind}-{seed}", kind)
        run.go(left, right, random.Random(seed), crashes=seed)
        ids = [t["token_id"] for _d, t in run.committed]
        assert len(ids) == len(set(ids)), "a pair was emitted twice"
        got = {t["token_id"]: t["payload"] for _d, t in run.committed}
        assert set(got) == set(want), (sorted(set(got) - set(want))[:5], sorted(set(want) - set(got))[:5])
        assert got == want
        results.append(run.late)
    assert len(set(results)) == 1 and results[0] > 0, f"late rows differ between runs: {results}"


def test_one_side_entirely_first_either_way(tmp_path: Path) -> None:
    """Right read to its end before any left row, and the other way round."""
    data = random.Random(3)
    left, right = sequence(data, "L", 120), sequence(data, "R", 120)
    want = reference(left, right, "outer")
    for order, name in (((1, 0), "rf"), ((0, 1), "lf")):
        store = PartitionStore(tmp_path / name, "cl", 0)
        op = join("outer")
        op.open(0, store)
        got: dict[str, Any] = {}
        for s in order:
            for row in (left, right)[s]:
                store.begin_row()
                try:
                    outs = (op.process if s == 0 else op.process_right)(0, store, row)
                except CodecError:
                    store.end_row(False)
                    continue
                store.end_row(True)
                got.update({t["token_id"]: t["payload"] for _d, t in outs})
        assert got == want
        store.close()


def test_ids_payloads_lateness_and_eviction(tmp_path: Path) -> None:
    store = PartitionStore(tmp_path / "s", "cl", 0)
    op = join("left", fields=["v"])
    op.open(0, store)

    def feed(side: int, row: Token) -> list[Token]:
        store.begin_row()
        try:
            outs = (op.process if side == 0 else op.process_right)(0, store, row)
        finally:
            store.end_row(True)
        return [t for _d, t in outs]

    l1 = tok("L1", "a", 1000, v=1)
    l1["event_time_ms"] = 1000
    assert feed(0, l1) == []
    r1 = tok("R1", "a", 1150, v=7)
    (pair,) = feed(1, r1)
    assert pair["token_id"] == "L1+R1"
    assert pair["payload"] == {"n": "L1", "k": "a", "ts": 1000, "v": 1, "r_v": 7}
    assert pair["event_time_ms"] == 1150 and pair["key"] == "a"
    assert feed(1, tok("R2", "a", 1201)) == []  # beyond after_ms of L1
    assert feed(1, tok("R3", "b", 1100)) == []  # another key
    # L2 never matches; the right watermark closes its window (2000 - 150 > 1500 + 200)
    assert feed(0, tok("L2", "c", 1500, v=2)) == []
    (alone,) = feed(1, tok("R4", "z", 2000))
    assert alone["token_id"] == "L2+" and alone["payload"] == {"n": "L2", "k": "c", "ts": 1500, "v": 2, "r_v": None}
    # a left row whose window is closed at arrival still meets the buffered right rows
    assert [t["token_id"] for t in feed(0, tok("L3", "a", 1400))] == ["L3+R1", "L3+R2"]
    assert [t["token_id"] for t in feed(0, tok("L4", "q", 1600))] == ["L4+"]
    with pytest.raises(CodecError) as late:
        feed(1, tok("R5", "a", 1849))  # right watermark is 1850
    assert late.value.reason_class == "join_late"
    with pytest.raises(CodecError) as nokey:
        feed(0, tok("L5", None, 1800))
    assert nokey.value.reason_class == "no_key"
    with pytest.raises(CodecError) as notime:
        feed(1, tok("R6", "a", None))
    assert notime.value.reason_class == "no_event_time"
    # right rows leave the store once the left watermark passes t + before_ms
    buffered = {k for k, _v in store.scan_live(b"jr|")}
    assert sorted(k.rsplit(b"\x00", 1)[1] for k in buffered) == [b"R1", b"R2", b"R4"]  # R3: 1450 > 1100 + 300
    feed(0, tok("L9", "x", 1150 + BEFORE + GRACE + 1))
    left_now = {k for k, _v in store.scan_live(b"jr|")}
    assert not any(b"R1" in k for k in left_now) and any(b"R4" in k for k in left_now)


def _transform(steps: list[Any], **extra: Any) -> Transform:
    spec = {"pipeline": "p", "transforms": [{"name": "j", "input": "a", "output": "o", "steps": steps, **extra}]}
    return PipelineSpec.model_validate(spec).transforms[0]


def test_spec_places_the_join_first_only() -> None:
    ij = {"interval_join": {"right": "b", "key": "k", "time": "ts", "before_ms": 10, "after_ms": 5}}
    tr = _transform([ij, {"project": {"fields": ["k"]}}])
    assert tr.interval_join is not None and tr.interval_join.right_key_field == "k" and tr.has_state
    with pytest.raises(ValueError, match="transform j: interval_join must be the first step"):
        _transform([{"project": {"fields": ["k"]}}, ij])
    with pytest.raises(ValueError, match="takes no stateful operator"):
        _transform([ij], stateful={"dedupe": {}})
    with pytest.raises(ValueError, match="right topic is the input topic"):
        _transform([{"interval_join": {**ij["interval_join"], "right": "a"}}])


def test_acl_plan_reads_the_right_topic_and_owns_the_changelog() -> None:
    from app.security.acl_plan import plan

    ij = {"interval_join": {"right": "b", "key": "k", "time": "ts", "before_ms": 10, "after_ms": 5}}
    spec = PipelineSpec.model_validate(
        {"pipeline": "p", "transforms": [{"name": "j", "input": "a", "output": "o", "steps": [ij]}]}
    )
    got = {(a.name, a.operation) for a in plan(spec, "u") if a.resource == "topic"}
    assert ("b", "Read") in got and ("b", "Write") not in got
    assert {("p.state.j.changelog", "Read"), ("p.state.j.changelog", "Write")} <= got
