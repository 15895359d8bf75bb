"""Beyond the matrix: random SIGKILLs, a zombie sink worker, rebalances under load.

Every test ends with the same check as the crash matrix: each input row exactly
once in the sink, journal consistent, group offsets at the end.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from app.journal.events import decode_event
from app.kafka.readers import read_topic_to_end
from tests.conftest import KafkaEnv
from tests.harness import (
    PipelineFiles,
    assert_exactly_once,
    popen,
    run,
    sink_lines,
    stop,
    uid,
    wait_for_rows,
    wait_log,
    write_pipeline,
)
from tests.join_harness import assert_joined, produce_table, write_join

pytestmark = [pytest.mark.integration, pytest.mark.crash, pytest.mark.serial]


def _ids(n: int) -> set[str]:
    return {f"gen:{i}" for i in range(n)}


def test_random_sigkills(kafka: KafkaEnv, tmp_path: Path) -> None:
    """Ten SIGKILLs of the whole pipeline at random moments, then a run to completion
    (the soak below and the S3 soak do many more with ``-m slow``)."""
    kills = 10
    rows = 60_000
    name = f"kills-{uid()}"
    # paced so the run outlasts the kills: every SIGKILL lands mid-stream
    src = f"  - {{name: gen, type: generator, topic: {name}.raw, rows: {rows}, seed: 11, rate_per_s: 2000}}\n"
    pf = write_pipeline(tmp_path, name, kafka, rows=rows, part_rows=5000, max_rows=5000, source_block=src)
    progress = _kill_lives(pf.spec, pf.out, tmp_path / "run.log", kills, random.Random(20261122))
    finished = run(pf.spec, "--worker-id", "w1", timeout=400)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert progress[-1] > 0, "the kills never let the pipeline make progress"
    assert progress[-1] < rows, f"the run finished before the last kill: {progress}"
    final = assert_exactly_once(kafka, pf, _ids(rows))
    print(f"\nrandom kills: sink rows after each of {kills} SIGKILLs {progress}; after the final run {len(final)}")


def _kill_lives(
    spec: Path, out: Path, log: Path, kills: int, rng: random.Random, after: Callable[[int], None] | None = None
) -> list[int]:
    """Run the whole pipeline ``kills`` times, SIGKILLing each life 1.5-4 s after its
    source started (its clock starts then: on a cold broker the start alone can outlast
    the window), so every kill lands mid-stream; the sink's row count after each."""
    progress = []
    for life in range(1, kills + 1):
        proc = popen(spec, "--worker-id", "w1", "--exit-when-done", log=log)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _text(log).count("source gen: restored") < life:
            time.sleep(0.1)
        time.sleep(rng.uniform(1.5, 4.0))
        proc.kill()
        proc.wait(30)
        progress.append(len(sink_lines(out)))
        if after is not None:
            after(life)
    return progress


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _staged_pipeline(tmp_path: Path, kafka: KafkaEnv, name: str, rows: int, rate: int) -> PipelineFiles:
    src = f"""  - name: gen
    type: generator
    topic: {name}.raw
    rows: {rows}
    seed: 11
    rate_per_s: {rate}
"""
    return write_pipeline(tmp_path, name, kafka, rows=rows, part_rows=1000, source_block=src, partitions=4)


def _staged(out: Path) -> set[Path]:
    return set((out / "_staging").rglob("part-*.tmp"))


def test_zombie_sink_worker_is_fenced(kafka: KafkaEnv, tmp_path: Path) -> None:
    """A sink worker stops itself right after staging a part (its 3rd prepare), stays
    stopped past the session timeout while another worker takes its partitions and
    commits the same range, then resumes and tries to commit. Fencing must hold: the
    zombie's transaction is refused, its staged part is discarded and never renamed,
    no journal event of the zombie commits that range, and every row lands once."""
    rows = 30_000
    pf = _staged_pipeline(tmp_path, kafka, f"zombie-{uid()}", rows, 2500)
    logs = {n: tmp_path / f"{n}.log" for n in ("src", "tr", "s1", "s2")}
    src = popen(pf.spec, "--stage", "source", "--worker-id", "src", log=logs["src"])
    tr = popen(pf.spec, "--stage", "transform", "--worker-id", "t1", log=logs["tr"])
    s1 = popen(
        pf.spec,
        "--stage",
        "sink",
        "--worker-id",
        "s1",
        log=logs["s1"],
        env_extra={"LEDGERFLOW_PAUSE_AT": "sink.after_prepare:3"},
    )
    s2 = popen(pf.spec, "--stage", "sink", "--worker-id", "s2", log=logs["s2"])
    try:
        wait_log(logs["s1"], "pause point sink.after_prepare hit #3", s1, timeout=120)
        first = _staged(pf.out)
        time.sleep(2)
        zombie_parts = first & _staged(pf.out)  # the live worker renames its own within milliseconds
        time.sleep(10)  # past session.timeout.ms (6 s): the other worker owns every partition now
        s1.send_signal(signal.SIGCONT)
        wait_for_rows(pf.out, rows, timeout=180, proc=s2)
        time.sleep(2)
    finally:
        stop(src, tr, s1, s2)
    assert_exactly_once(kafka, pf, _ids(rows))
    assert zombie_parts, "the zombie held no staged part while it was stopped"
    for staged in zombie_parts:
        assert not staged.exists(), f"the zombie's staged part {staged} was left behind"
    ranges = {(f.parent.parent.name, int(f.parent.name), int(f.name.split("-")[1])) for f in zombie_parts}
    events = [decode_event(r.value) for r in read_topic_to_end(kafka.bootstrap, f"{pf.name}.journal") if r.value]
    by_zombie = [
        ev
        for ev in events
        if ev.part is not None
        and ev.worker_id == "s1"
        and (ev.part.topic, ev.part.partition, ev.part.first_offset) in ranges
    ]
    assert by_zombie == [], f"the zombie committed or finalized its stale part: {by_zombie}"
    by_owner = [
        ev
        for ev in events
        if ev.part is not None and (ev.part.topic, ev.part.partition, ev.part.first_offset) in ranges
    ]
    assert {ev.worker_id for ev in by_owner} == {"s2"}, by_owner  # the new owner committed those ranges
    zombie_log = logs["s1"].read_text()
    refused = ("aborting transaction after", "producer fenced during", "producer timed_out during", "producer fatal")
    assert any(s in zombie_log for s in refused), zombie_log[-3000:]


def test_workers_join_and_leave_under_load(kafka: KafkaEnv, tmp_path: Path) -> None:
    rows = 30_000
    # paced to last ~30 s: the joining workers start, check for hanging transactions and
    # join while rows still flow (at 2,500 rows/s a loaded machine saw the run end first)
    pf = _staged_pipeline(tmp_path, kafka, f"rebal-{uid()}", rows, 1000)
    logs = {n: tmp_path / f"{n}.log" for n in ("src", "t1", "t2", "s1", "s2")}
    src = popen(pf.spec, "--stage", "source", "--worker-id", "src", log=logs["src"])
    t1 = popen(pf.spec, "--stage", "transform", "--worker-id", "t1", log=logs["t1"])
    s1 = popen(pf.spec, "--stage", "sink", "--worker-id", "s1", log=logs["s1"])
    t2 = s2 = None
    try:
        wait_for_rows(pf.out, 2000, proc=s1)
        t2 = popen(pf.spec, "--stage", "transform", "--worker-id", "t2", log=logs["t2"])
        s2 = popen(pf.spec, "--stage", "sink", "--worker-id", "s2", log=logs["s2"])
        wait_log(logs["s2"], "sink files: assigned [(", s2)
        wait_log(logs["t2"], "transform shape: assigned [(", t2)
        before = len(sink_lines(pf.out))
        assert before + 3000 <= rows, f"the run was nearly over ({before} rows) before the new workers joined"
        wait_for_rows(pf.out, before + 3000, timeout=120, proc=s1)
        stop(t2, s2)  # leave mid-run
        wait_for_rows(pf.out, rows, timeout=180, proc=s1)
        time.sleep(2)
    finally:
        stop(*(p for p in (src, t1, s1, t2, s2) if p is not None))
    assert_exactly_once(kafka, pf, _ids(rows))


@pytest.mark.slow
def test_soak_random_kills_across_stage_workers(kafka: KafkaEnv, tmp_path: Path) -> None:
    """Soak, outside the default suite (``pytest -m slow``): one source, two transform
    and two sink workers, each its own process, while a random one is SIGKILLed and
    restarted every 2-6 s (``LF_SOAK_KILLS`` times, default 40), so kills land in every
    stage, mid-transaction and mid-rebalance. At the end every row is in the sink
    exactly once, the journal agrees and the groups sit at the end of their inputs."""
    kills = int(os.environ.get("LF_SOAK_KILLS", "40"))
    rows = int(os.environ.get("LF_SOAK_ROWS", "200000"))
    pf = _staged_pipeline(tmp_path, kafka, f"soak-{uid()}", rows, 1000)
    stages = {"src": "source", "t1": "transform", "t2": "transform", "s1": "sink", "s2": "sink"}

    def start(worker: str) -> subprocess.Popen[bytes]:
        return popen(pf.spec, "--stage", stages[worker], "--worker-id", worker, log=tmp_path / f"{worker}.log")

    procs = {w: start(w) for w in stages}
    rng = random.Random(20261123)
    victims: list[str] = []
    try:
        for _ in range(kills):
            time.sleep(rng.uniform(2.0, 6.0))
            victim = rng.choice(sorted(stages))
            procs[victim].kill()
            procs[victim].wait(30)
            procs[victim] = start(victim)
            victims.append(victim)
        at_last_kill = len(sink_lines(pf.out))
        wait_for_rows(pf.out, rows, timeout=900)
        time.sleep(2)
    finally:
        stop(*procs.values())
    assert at_last_kill < rows, f"the run finished before the last kill ({at_last_kill} rows)"
    final = assert_exactly_once(kafka, pf, _ids(rows))
    counts = {w: victims.count(w) for w in sorted(stages)}
    print(f"\nsoak: {kills} SIGKILLs {counts}; {at_last_kill} rows at the last kill; {len(final)} rows exactly once")


@pytest.mark.slow
def test_soak_random_kills_of_a_join_pipeline(kafka: KafkaEnv, tmp_path: Path) -> None:
    """Soak (``-m slow``): a lookup-join pipeline SIGKILLed at random moments, its local
    table stores deleted after every other kill, then run to completion: the sink holds
    each row once, joined with the table version in force at its event time (the
    independent reference of ``tests.join_harness``)."""
    import shutil

    kills = int(os.environ.get("LF_SOAK_KILLS", "12"))
    rows = 30_000
    jp = write_join(tmp_path, f"joinsoak-{uid()}", kafka, rows=rows, rate=800)  # outlasts the kills
    produce_table(kafka, jp.table, 3)

    def drop_stores(life: int) -> None:
        if life % 2 == 0:
            shutil.rmtree(jp.state_dir, ignore_errors=True)  # the tables come back from their topic

    progress = _kill_lives(jp.spec, jp.out, tmp_path / "run.log", kills, random.Random(20261202), drop_stores)
    finished = run(jp.spec, "--worker-id", "w1", timeout=400)
    assert finished.returncode == 0, finished.stderr[-3000:]
    joined = assert_joined(kafka, jp, "left")
    assert 0 < progress[-1] < len(joined.rows), f"the kills landed outside the run: {progress}"
    print(f"\njoin soak: sink rows after each of {kills} SIGKILLs {progress}; joined {len(joined.rows)}")
