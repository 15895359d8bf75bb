"""Broker-fault suite helpers: a read_committed verifier, fault steps, per-fault outcomes.

A run: one paced pipeline (generator → transform → file sink, ``ledgerflow run`` as a
subprocess, worker ``w1``), an independent ``Verifier`` thread consuming the output
topic read_committed the whole time, and a list of ``Fault`` steps applied in turn.
For each fault the runner records the time from the fault's end to the next
committed batch (the verifier sees new output records *and* the sink finalizes new
rows), or why it never came: the pipeline process exited (the stage and error lines
from its log are quoted) or stalled. A pipeline that died is restarted by the runner
so the remaining faults still run, and that fault is marked failed: the suite is
about stages healing themselves, so any restart by the harness is a failure.

At the end ``check`` reports, per run: rows lost and duplicated (by token id), sink
rows byte-identical to an undisturbed run, hanging transactions on every broker
(``kafka-transactions find-hanging``), records the verifier saw that the committed log
does not hold (aborted data returned to a read_committed reader), and per-key order.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from app.codecs.tokens import TokenCodec
from tests.conftest import KafkaEnv
from tests.harness import PipelineFiles, popen, sink_lines, stop, token_ids, write_pipeline

RECOVERY_LIMIT_S = float(
    os.environ.get("LF_FAULT_RECOVERY_LIMIT_S", "90")
)  # healing a hanging transaction waits for it to outlive transaction.timeout.ms
# the default suite stops applying faults after this many did not heal (cost bound);
# LF_FAULT_MAX_FAILURES=0 applies every fault regardless (for docs/reliability.md)
MAX_FAILURES = int(os.environ.get("LF_FAULT_MAX_FAILURES", "3"))
_EVENT_TIME = re.compile(rb'"_event_time_ms":-?\d+,?')


def comparable(lines: list[bytes]) -> list[bytes]:
    """Sink rows sorted, the generator's wall-clock ``_event_time_ms`` taken out: the only
    bytes of a row that differ between two runs of the same pipeline."""
    return sorted(_EVENT_TIME.sub(b"", ln) for ln in lines)


def paced_pipeline(tmp: Path, name: str, kafka: KafkaEnv, rows: int, rate: int) -> PipelineFiles:
    """Generator (keyed by customer, ``rate`` rows/s) → project → NDJSON file sink, 3 partitions."""
    src = (
        f"  - {{name: gen, type: generator, topic: {name}.raw, rows: {rows}, seed: 11, "
        f"rate_per_s: {rate}, key_field: customer}}\n"
    )
    return write_pipeline(tmp, name, kafka, rows=rows, part_rows=2000, max_rows=1000, source_block=src)


class Verifier(threading.Thread):
    """Consumes every partition of ``topic`` read_committed from the start until stopped,
    recording (partition, offset, key, token id) of each record it is given."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        super().__init__(name=f"verifier-{topic}", daemon=True)
        self.bootstrap, self.topic, self.partitions = bootstrap, topic, partitions
        self.seen: list[tuple[int, int, bytes | None, str]] = []
        self.last_arrival = 0.0  # monotonic time of the newest record
        self.errors: list[str] = []
        self._halted = threading.Event()
        self._codec = TokenCodec()

    def run(self) -> None:
        c = _committed_consumer(self.bootstrap)
        c.assign([TopicPartition(self.topic, p, 0) for p in range(self.partitions)])
        try:
            while not self._halted.is_set():
                for msg in c.consume(1000, 0.5):
                    if msg.error():
                        if msg.error().code() != -191:  # not _PARTITION_EOF
                            self.errors.append(str(msg.error()))
                        continue
                    tok = dict(self._codec.decode(msg.value()))
                    self.seen.append((msg.partition(), msg.offset(), msg.key(), str(tok["token_id"])))
                    self.last_arrival = time.monotonic()
        finally:
            c.close()

    def halt(self) -> None:
        self._halted.set()
        self.join(30)


def _committed_consumer(bootstrap: str) -> Consumer:
    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"verifier-{uuid.uuid4().hex[:8]}",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": True,
            "log_level": 0,
        }
    )


def committed_log(bootstrap: str, topic: str, partitions: int, timeout: float = 120) -> set[tuple[int, int, str]]:
    """(partition, offset, token id) of every committed record, read to the end after the run."""
    codec = TokenCodec()
    c = _committed_consumer(bootstrap)
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: set[tuple[int, int, str]] = set()
    at_end: set[int] = set()
    deadline = time.monotonic() + timeout
    try:
        while len(at_end) < partitions:
            assert time.monotonic() < deadline, f"committed read of {topic} did not reach the end in {timeout}s"
            for msg in c.consume(1000, 1.0):
                if msg.error():
                    if msg.error().code() == -191:
                        at_end.add(msg.partition())
                    continue
                out.add((msg.partition(), msg.offset(), str(dict(codec.decode(msg.value()))["token_id"])))
    finally:
        c.close()
    return out


@dataclass
class Fault:
    """One fault step: ``start`` hurts, ``end`` undoes (restart, SIGCONT, heal);
    ``hold_s`` seconds between them."""

    kind: str
    target: str
    start: Callable[[], object]
    end: Callable[[], object]
    hold_s: float


@dataclass
class Outcome:
    kind: str
    target: str
    recovery_s: float | None = None
    failure: str | None = None  # why it did not recover on its own

    def render(self) -> str:
        if self.failure:
            return f"{self.kind} ({self.target}): fails: {self.failure}"
        return f"{self.kind} ({self.target}): recovered in {self.recovery_s:.1f}s"


@dataclass
class FaultRun:
    """A pipeline run with faults applied in turn; ``outcomes`` holds one per fault."""

    kafka: KafkaEnv
    pf: PipelineFiles
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    verifier: Verifier | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    restarts: int = 0

    def start(self) -> None:
        self.proc = popen(self.pf.spec, "--worker-id", "w1", "--exit-when-done", log=self.log)
        self.verifier = Verifier(self.kafka.bootstrap, self.pf.clean, 3)
        self.verifier.start()

    def wait_rows(self, n: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while len(sink_lines(self.pf.out)) < n:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"pipeline exited {self.proc.returncode} before {n} rows: {self.stage_errors()}")
            assert time.monotonic() < deadline, f"fewer than {n} sink rows after {timeout}s"
            time.sleep(0.3)

    def stage_errors(self) -> str:
        """The stage failure lines of the pipeline log ('transform shape stopped: fenced ...')."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        lines = [ln for ln in text.splitlines() if re.search(r" (stopped|failed): |Error|error:", ln)]
        keep = [ln[-300:] for ln in lines if "Traceback" not in ln][-6:]
        return " | ".join(keep) or f"no stage error logged; log tail: {text[-600:]}"

    def apply(self, fault: Fault) -> Outcome:
        """Apply one fault and measure recovery; restarts a dead or stalled pipeline."""
        assert self.proc is not None and self.verifier is not None
        out = Outcome(fault.kind, fault.target)
        if len(sink_lines(self.pf.out)) >= self.pf.rows:
            out.failure = "pipeline had already finished (raise rows)"
            self.outcomes.append(out)
            return out
        log_mark = self.log.stat().st_size if self.log.exists() else 0
        try:
            target = fault.start()
            if isinstance(target, str):
                out.target = fault.target = target
            time.sleep(fault.hold_s)
        finally:
            fault.end()
        ended = time.monotonic()
        rows_at_end = len(sink_lines(self.pf.out))
        arrivals_at_end = len(self.verifier.seen)
        while time.monotonic() - ended < RECOVERY_LIMIT_S:
            if self.proc.poll() is not None:
                break
            moved_out = len(self.verifier.seen) > arrivals_at_end
            moved_sink = len(sink_lines(self.pf.out)) > rows_at_end
            if moved_out and moved_sink:
                out.recovery_s = time.monotonic() - ended
                break
            if len(sink_lines(self.pf.out)) >= self.pf.rows:  # finished during the fault
                out.recovery_s = time.monotonic() - ended
                break
            time.sleep(0.2)
        if out.recovery_s is None:
            tail = self.log.read_text(errors="replace")[log_mark:] if self.log.exists() else ""
            if self.proc.poll() is not None:
                out.failure = f"pipeline exited {self.proc.returncode}: {self.stage_errors()}"
            else:
                errs = [ln[-250:] for ln in tail.splitlines() if "rror" in ln or "fenced" in ln][-4:]
                out.failure = f"no committed batch within {RECOVERY_LIMIT_S:.0f}s of the fault's end" + (
                    f"; log: {' | '.join(errs)}" if errs else ""
                )
            self.restart_pipeline()
        self.outcomes.append(out)
        return out

    def restart_pipeline(self) -> None:
        """The harness's manual step: a new pipeline process (counted; a failure of healing)."""
        assert self.proc is not None
        stop(self.proc, timeout=30)
        self.restarts += 1
        self.proc = popen(self.pf.spec, "--worker-id", "w1", "--exit-when-done", log=self.log)

    def failures(self) -> int:
        return sum(1 for o in self.outcomes if o.failure)

    def finish(self, timeout: float = 180) -> None:
        """Let the pipeline finish: a clean stop (SIGTERM, open batches committed or
        aborted) and a rerun of the same spec without the source's rate limit, so the rows
        the paced source has not produced yet come at full speed; restart it once more if
        it died. Not a fault step: the source resumes from its committed checkpoint."""
        assert self.proc is not None and self.verifier is not None
        if self.proc.poll() is None:
            stop(self.proc, timeout=60)
        text = self.pf.spec.read_text()
        self.pf.spec.write_text(re.sub(r", rate_per_s: \d+", "", text))
        self.proc = popen(self.pf.spec, "--worker-id", "w1", "--exit-when-done", log=self.log)
        deadline = time.monotonic() + timeout
        retried = False
        while time.monotonic() < deadline:
            code = self.proc.poll()
            if code == 0:
                break
            if code is not None:
                self.outcomes.append(Outcome("finish", "-", failure=f"pipeline exited {code}: {self.stage_errors()}"))
                if retried:  # a second death: the run cannot converge without an operator
                    break
                retried = True
                self.restart_pipeline()
            time.sleep(0.5)
        else:
            stop(self.proc)
            self.outcomes.append(Outcome("finish", "-", failure=f"pipeline not done after {timeout:.0f}s"))
        time.sleep(2)  # let the verifier read the last transactions
        self.verifier.halt()


@dataclass
class Report:
    rows: int
    lost: list[str]
    lost_upstream: list[str]  # lost ids the committed output topic never held (source/transform)
    duplicated: list[str]
    differs_from_reference: bool
    hanging: dict[int, list[str]]
    aborted_seen: list[tuple[int, int, str]]
    order_violations: list[str]
    verifier_dupes: int

    def problems(self) -> list[str]:
        out = []
        if self.lost:
            up = len(self.lost_upstream)
            out.append(
                f"{len(self.lost)} rows lost, e.g. {self.lost[:5]}: {up} never reached the committed output "
                f"topic (lost by source/transform), {len(self.lost) - up} were there but not in the sink"
            )
        if self.duplicated:
            out.append(f"{len(self.duplicated)} rows duplicated in the sink, e.g. {self.duplicated[:5]}")
        if self.differs_from_reference:
            out.append("sink rows are not byte-identical to the undisturbed run")
        hanging = {b: rows for b, rows in self.hanging.items() if rows}
        if hanging:
            out.append(f"hanging transactions: {hanging}")
        if self.aborted_seen:
            out.append(
                f"verifier saw {len(self.aborted_seen)} records not in the committed log: {self.aborted_seen[:5]}"
            )
        if self.verifier_dupes:
            out.append(f"{self.verifier_dupes} token ids appear twice in the committed output topic")
        if self.order_violations:
            out.append(f"per-key order broken: {self.order_violations[:5]}")
        return out


def check(run: FaultRun, reference_rows: list[bytes], hanging: Callable[[], dict[int, list[str]]]) -> Report:
    """Everything the suite asserts about a finished run, as data (no assertion here)."""
    assert run.verifier is not None
    lines = sink_lines(run.pf.out)
    ids = token_ids(lines)
    expected = {f"gen:{i}" for i in range(run.pf.rows)}
    counts: dict[str, int] = {}
    for i in ids:
        counts[i] = counts.get(i, 0) + 1
    committed = committed_log(run.kafka.bootstrap, run.pf.clean, 3)
    seen = {(p, o, t) for p, o, _k, t in run.verifier.seen}
    by_id: dict[str, int] = {}
    for _p, _o, t in committed:
        by_id[t] = by_id.get(t, 0) + 1
    order: list[str] = []
    last: dict[tuple[int, bytes | None], tuple[int, int]] = {}
    for p, o, k, t in sorted(run.verifier.seen, key=lambda r: (r[0], r[1])):
        n = int(t.split(":")[1])
        prev = last.get((p, k))
        if prev is not None and n <= prev[0]:
            order.append(f"partition {p} key {k!r}: gen:{n} at offset {o} after gen:{prev[0]} at {prev[1]}")
        last[(p, k)] = (n, o)
    lost = sorted(expected - set(ids))
    return Report(
        rows=len(ids),
        lost=lost,
        lost_upstream=[i for i in lost if i not in by_id],
        duplicated=sorted(i for i, c in counts.items() if c > 1),
        differs_from_reference=comparable(lines) != reference_rows,
        hanging=hanging(),
        aborted_seen=sorted(seen - committed),
        order_violations=order,
        verifier_dupes=sum(c - 1 for c in by_id.values() if c > 1),
    )
