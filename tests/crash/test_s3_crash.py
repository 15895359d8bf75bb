"""The crash matrix of the S3 sink, and a zombie sink worker against a real S3 store.

Each case runs source → transform → S3 sink in one process with
``LEDGERFLOW_CRASH_AT=<point>:<hit>``, checks the process died there, reruns it to
completion and then reads the bucket back independently (boto3): every row exactly
once, nothing staged or pending, every committed part finalized, group offsets at
the end, rows byte-identical to an undisturbed run, and every object byte-identical
to what an undisturbed sink writes for its offset range (re-read from the topic and
encoded again: a part is a pure function of its range).
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from app.faults import CRASH_EXIT_CODE
from tests.conftest import KafkaEnv
from tests.harness import hanging_transactions, popen, run, stop, uid, wait_log
from tests.s3_harness import (
    assert_objects_are_their_ranges,
    assert_s3_exactly_once,
    bucket_objects,
    write_s3_pipeline,
)
from tests.s3env import S3Env

pytestmark = [pytest.mark.integration, pytest.mark.crash]

ROWS = 6_000
# (variant, multipart threshold): every part a multipart upload, or every part a staged put
VARIANTS = {"mpu": 0, "staged": None}
POINTS = [
    ("mpu", "s3.after_upload_part"),
    ("mpu", "s3.after_upload_before_commit"),
    ("mpu", "s3.after_commit_before_complete"),
    ("mpu", "s3.after_complete"),
    ("staged", "s3.after_upload_before_commit"),
    ("staged", "s3.after_commit_before_complete"),
    ("staged", "s3.after_complete"),
]


def _ids(n: int) -> set[str]:
    return {f"gen:{i}" for i in range(n)}


def _rows(objects: dict[str, bytes]) -> list[bytes]:
    return sorted(line for data in objects.values() for line in data.splitlines())


@pytest.fixture(scope="module")
def references(kafka: KafkaEnv, s3: S3Env, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, bytes]]:
    """Final objects of an undisturbed run per variant."""
    out: dict[str, dict[str, bytes]] = {}
    for variant, threshold in VARIANTS.items():
        tmp = tmp_path_factory.mktemp(f"ref-{variant}")
        pf = write_s3_pipeline(
            tmp, f"s3ref-{variant}-{uid()}", kafka, s3, s3.new_bucket(), rows=ROWS, multipart_threshold=threshold
        )
        proc = run(pf.spec, "--worker-id", "w1")
        assert proc.returncode == 0, proc.stderr[-3000:]
        objects = assert_s3_exactly_once(kafka, pf, s3, _ids(ROWS))
        out[variant] = objects
    return out


@pytest.mark.parametrize("hit", [1, pytest.param(3, marks=pytest.mark.slow)])  # both hits: -m slow
@pytest.mark.parametrize(("variant", "point"), POINTS, ids=[f"{v}-{p}" for v, p in POINTS])
def test_s3_crash_point(
    kafka: KafkaEnv,
    s3: S3Env,
    tmp_path: Path,
    references: dict[str, dict[str, bytes]],
    variant: str,
    point: str,
    hit: int,
) -> None:
    name = f"s3c-{variant}-{point.split('.')[1].replace('_', '-')}-{hit}-{uid()}"
    pf = write_s3_pipeline(tmp_path, name, kafka, s3, s3.new_bucket(), rows=ROWS, multipart_threshold=VARIANTS[variant])
    crashed = run(pf.spec, "--worker-id", "w1", crash_at=f"{point}:{hit}")
    assert crashed.returncode == CRASH_EXIT_CODE, (
        f"expected the crash at {point}#{hit}, got exit {crashed.returncode}\n{crashed.stderr[-3000:]}"
    )
    assert f"crash point {point} hit #{hit}" in crashed.stderr
    finished = run(pf.spec, "--worker-id", "w1")
    assert finished.returncode == 0, finished.stderr[-3000:]

    objects = assert_s3_exactly_once(kafka, pf, s3, _ids(ROWS))
    assert _rows(objects) == _rows(references[variant]), "rows differ from the undisturbed run"
    assert_objects_are_their_ranges(kafka, pf, objects, "ndjson")
    assert hanging_transactions(kafka, f"ledgerflow.{name}.") == []


def _wait_recovered(log: Path, proc: subprocess.Popen[bytes], partitions: int, timeout: float) -> None:
    """Wait until the sink worker logging to ``log`` has recovered partitions 0..n-1."""
    deadline = time.monotonic() + timeout
    seen: set[int] = set()
    while time.monotonic() < deadline:
        for listed in re.findall(r"recovered \[(.*?)\]:", log.read_text() if log.exists() else ""):
            seen.update(int(p) for p in re.findall(r", (\d+)\)", listed))
        if seen >= set(range(partitions)):
            return
        assert proc.poll() is None, f"worker exited early: {log.read_text()[-2000:]}"
        time.sleep(0.2)
    raise AssertionError(f"{log.name}: recovered only partitions {sorted(seen)} after {timeout}s")


def test_s3_zombie_sink_worker_never_lands_a_part(kafka: KafkaEnv, s3: S3Env, tmp_path: Path) -> None:
    """A sink worker stops itself after uploading its 3rd part (uncompleted multipart
    uploads) and stays stopped past the session timeout; another worker takes its
    partitions. Resumed, the zombie's Kafka transaction is refused, so its uploads are
    never completed: the bucket holds every row exactly once and no pending upload."""
    rows = 20_000
    bucket = s3.new_bucket()
    src = f"  - {{name: gen, type: generator, topic: s3z-{uid()}.raw, rows: {rows}, seed: 11, rate_per_s: 2500}}\n"
    name = src.split("topic: ")[1].split(".raw")[0]
    pf = write_s3_pipeline(
        tmp_path, name, kafka, s3, bucket, rows=rows, multipart_threshold=0, source_block=src, partitions=4
    )
    logs = {n: tmp_path / f"{n}.log" for n in ("src", "tr", "s1", "s2")}
    s1 = popen(
        pf.spec,
        "--stage",
        "sink",
        "--worker-id",
        "s1",
        log=logs["s1"],
        env_extra={"LEDGERFLOW_PAUSE_AT": "sink.after_prepare:3"},
    )
    procs = [s1]
    try:
        # s1 owns partitions before any row flows (a late start could find the input done)
        wait_log(logs["s1"], "sink lake: recovered [(", s1, timeout=120)
        procs += [
            popen(pf.spec, "--stage", "source", "--worker-id", "src", log=logs["src"]),
            popen(pf.spec, "--stage", "transform", "--worker-id", "t1", log=logs["tr"]),
            popen(pf.spec, "--stage", "sink", "--worker-id", "s2", log=logs["s2"]),
        ]
        wait_log(logs["s1"], "pause point sink.after_prepare hit #3", s1, timeout=120)
        # s1's session expires (session.timeout.ms) and s2 recovers every partition
        _wait_recovered(logs["s2"], procs[-1], 4, timeout=60)
        s1.send_signal(signal.SIGCONT)
        wait_log(logs["s1"], "batch aborted", s1, timeout=60)  # its transaction was refused
        # The zombie's prepared uploads existed and were discarded: by s2's recovery, or by
        # the zombie itself when its transaction was refused (when s2 recovered a partition
        # before the zombie prepared on it: s1's session can lapse on a loaded machine).
        by_s2 = [int(n) for n in re.findall(r"recovered .*?(\d+) staging file\(s\) discarded", logs["s2"].read_text())]
        by_s1 = [
            int(n)
            for n in re.findall(r"discarded (\d+) prepared part\(s\) of the aborted batch", logs["s1"].read_text())
        ]
        assert any(by_s2) or any(by_s1), f"no discard of the zombie's uploads: s2 recoveries {by_s2}, s1 aborts {by_s1}"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            n = sum(len(v.splitlines()) for k, v in bucket_objects(s3, bucket).items() if "/_staging/" not in k)
            if n >= rows:
                break
            time.sleep(0.5)
        time.sleep(3)
    finally:
        stop(*procs)
    assert_s3_exactly_once(kafka, pf, s3, _ids(rows))


def test_store_bounce_mid_run_stops_or_rides_through_and_loses_nothing(kafka: KafkaEnv, tmp_path: Path) -> None:
    """The S3 store is SIGKILLed mid-run and restarted 6 s later (its own private
    instance). The sink either rides through on the client's retries or stops with an
    error naming the sink and the bucket; a restart then finishes exactly once, with the
    uploads pending at the kill completed or discarded, never left behind."""
    from tests.s3env import TEST_BASE_PORT, start_s3

    rows = 12_000
    env_gen = start_s3(TEST_BASE_PORT + 20)
    s3 = next(env_gen)
    try:
        bucket = s3.new_bucket()
        name = f"s3b-{uid()}"
        src = f"  - {{name: gen, type: generator, topic: {name}.raw, rows: {rows}, seed: 11, rate_per_s: 1500}}\n"
        pf = write_s3_pipeline(tmp_path, name, kafka, s3, bucket, rows=rows, multipart_threshold=0, source_block=src)
        log = tmp_path / "run.log"
        proc = popen(pf.spec, "--worker-id", "w1", "--exit-when-done", log=log)
        wait_log(log, "sink lake: recovered", proc, timeout=60)
        time.sleep(3)
        s3.server.kill()
        time.sleep(6)
        s3.server.start(timeout=60)
        code = proc.wait(240)
        text = log.read_text()
        if code != 0:
            assert "sink lake stopped: sink lake: S3" in text and bucket in text, text[-3000:]
        finished = run(pf.spec, "--worker-id", "w1")
        assert finished.returncode == 0, finished.stderr[-3000:]
        assert_s3_exactly_once(kafka, pf, s3, _ids(rows))
    finally:
        env_gen.close()


@pytest.mark.slow
def test_soak_random_sigkills_into_s3(kafka: KafkaEnv, s3: S3Env, tmp_path: Path) -> None:
    """Soak, outside the default suite (``-m slow``): the random-kill run of the file sink
    (tests/crash/test_chaos.py) into the S3 sink, multipart path: 20 SIGKILLs at random
    moments, then a run to completion; every row exactly once, nothing pending."""
    import random

    rows = 60_000
    name = f"s3soak-{uid()}"
    src = f"  - {{name: gen, type: generator, topic: {name}.raw, rows: {rows}, seed: 11, rate_per_s: 2000}}\n"
    pf = write_s3_pipeline(
        tmp_path, name, kafka, s3, s3.new_bucket(), rows=rows, part_rows=2000, multipart_threshold=0, source_block=src
    )
    rng = random.Random(20261201)
    log = tmp_path / "run.log"
    for _ in range(20):
        proc = popen(pf.spec, "--worker-id", "w1", "--exit-when-done", log=log)
        time.sleep(rng.uniform(1.5, 4.0))
        proc.kill()
        proc.wait(30)
    finished = run(pf.spec, "--worker-id", "w1", timeout=400)
    assert finished.returncode == 0, finished.stderr[-3000:]
    objects = assert_s3_exactly_once(kafka, pf, s3, _ids(rows))
    assert_objects_are_their_ranges(kafka, pf, objects, "ndjson")
