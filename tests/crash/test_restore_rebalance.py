"""A rebalance in the middle of a restore, on the real broker.

t1 starts restoring a rebuilt (deleted) store and is frozen mid-restore (SIGSTOP at
the ``state.mid_restore`` pause point); t2 joins and takes the partitions over when
t1's session expires; a third worker t3 joins; t1 is resumed, finishes the restore
it was in for partitions it no longer holds, and rejoins; t3 leaves. The restore
resumes from the store's chunk offsets, no worker crash-loops, and no changelog
record is lost or applied twice: every output row carries the running aggregate
recomputed from the input (a lost or doubled record would change the counts)."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import KafkaEnv
from tests.harness import hanging_transactions, popen, run, stop, uid, wait_log
from tests.stateful_harness import input_by_partition, sink_rows, write_stateful

pytestmark = [pytest.mark.integration, pytest.mark.crash]

RUNNING = "      aggregate: {value_field: amount, functions: [count, sum]}\n"


def running_totals(parts: dict[int, list[dict[str, Any]]]) -> dict[str, tuple[int, int]]:
    """Token id -> (count, sum) of its key after that row, in each partition's order."""
    out: dict[str, tuple[int, int]] = {}
    for toks in parts.values():
        seen: dict[str, tuple[int, int]] = {}
        for tok in toks:
            n, s = seen.get(tok["key"], (0, 0))
            seen[tok["key"]] = out[tok["token_id"]] = (n + 1, s + tok["payload"]["amount"])
    return out


# ~0.75-0.85 changelog records per row (a batch of up to 1,000 rows touches most of its keys once):
# the slow case restores ~1,000,000 changelog records
@pytest.mark.parametrize(
    ("rows", "chunk"), [(6_000, 200), pytest.param(1_400_000, 50_000, marks=pytest.mark.slow, id="1M-changelog")]
)
def test_rebalance_mid_restore_resumes_without_double_applying(
    kafka: KafkaEnv, tmp_path: Path, rows: int, chunk: int
) -> None:
    sp = write_stateful(tmp_path, f"st-midrestore-rebal-{uid()}", kafka, RUNNING, rows=rows, restore_chunk=chunk)
    first = run(sp.spec, "--worker-id", "w0", timeout=1200)
    assert first.returncode == 0, first.stderr[-3000:]
    shutil.rmtree(sp.state_dir)  # every worker restores from the changelog
    more = rows + 2_000
    sp.spec.write_text(sp.spec.read_text().replace(f"rows: {rows}", f"rows: {more}"))
    logs = {n: tmp_path / f"{n}.log" for n in ("src", "t1", "t2", "t3", "sink")}
    pause = {"LEDGERFLOW_PAUSE_AT": "state.mid_restore:2"}
    t1 = popen(sp.spec, "--stage", "transform", "--worker-id", "t1", env_extra=pause, log=logs["t1"])
    procs = [t1]
    try:
        wait_log(logs["t1"], "pause point state.mid_restore hit #2", t1, timeout=120)
        t2 = popen(sp.spec, "--stage", "transform", "--worker-id", "t2", log=logs["t2"])
        procs.append(t2)
        wait_log(logs["t2"], "transform agg: assigned [(", t2, timeout=120)  # after t1's session expired
        t3 = popen(sp.spec, "--stage", "transform", "--worker-id", "t3", log=logs["t3"])
        procs.append(t3)
        wait_log(logs["t3"], "transform agg: assigned [(", t3, timeout=120)
        t1.send_signal(signal.SIGCONT)  # t1 finishes the restore it was in, then finds the group moved on
        src = popen(sp.spec, "--stage", "source", "--worker-id", "src", "--exit-when-done", log=logs["src"])
        sink = popen(sp.spec, "--stage", "sink", "--worker-id", "sink", log=logs["sink"])
        procs += [src, sink]
        deadline = time.monotonic() + 120  # t1 back in the group with partitions of its own
        while logs["t1"].read_text().count("transform agg: assigned [(") < 2:
            assert time.monotonic() < deadline and t1.poll() is None, logs["t1"].read_text()[-3000:]
            time.sleep(0.5)
        stop(t3)  # the third worker leaves: its partitions move to t1 and t2
        assert t3.returncode == 0, logs["t3"].read_text()[-3000:]
        assert src.wait(timeout=600) == 0, logs["src"].read_text()[-3000:]
        deadline = time.monotonic() + 600
        while len(sink_rows(sp.out)) < more:
            assert time.monotonic() < deadline, f"{len(sink_rows(sp.out))} of {more} rows"
            assert all(p.poll() is None for p in (t1, t2, sink)), "a worker exited"
            time.sleep(1)
        time.sleep(2)
    finally:
        stop(*procs)
    for n in ("t1", "t2"):
        text = logs[n].read_text()
        assert "Traceback" not in text, text[-3000:]
    assert t1.returncode == 0 and t2.returncode == 0
    assert logs["t1"].read_text().count("restored ") >= 2, "t1 did not restore again after the rebalance"
    want = running_totals(input_by_partition(kafka, sp.raw))
    rows_out = sink_rows(sp.out)
    got = {r["_token_id"]: (r["count"], r["sum"]) for r in rows_out}
    assert len(got) == len(rows_out) == len(want), (len(got), len(rows_out), len(want))
    wrong = [k for k in want if got.get(k) != want[k]]
    assert not wrong, (
        f"{len(wrong)} rows with a wrong running total, e.g. {wrong[0]}: {got.get(wrong[0])} != {want[wrong[0]]}"
    )
    assert hanging_transactions(kafka, f"ledgerflow.{sp.name}.") == []
