"""Hanging transactions on a real broker: created, seen stalling readers, healed.

A hanging transaction is made the way broker crashes make them: transactional
producers write to partitions (and commit consumer offsets) and die with their
transactions open; the broker is stopped, its ``__transaction_state`` partitions are
deleted (the coordinator forgets every transaction) and it is started again. The data
partitions keep open transactions no coordinator will ever finish.

These tests run their own broker (own data dir, ports 19392/19393), so restarting it
never disturbs the session broker other tests share.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaException

from app.journal.reader import load_journal
from app.journal.writer import Correlation
from app.kafka.admin import Admin
from app.kafka.hanging import (
    OFFSETS_TOPIC,
    ForeignHangingTransaction,
    HangingTxn,
    abort_hanging,
    find_hanging,
    heal_hanging,
    offsets_partition,
    write_events,
)
from app.kafka.local_broker import LocalBroker

pytestmark = pytest.mark.serial  # its own broker, stopped and restarted under timeouts

REPO = Path(__file__).resolve().parents[2]
PORT = 19392

_OPEN_TXN = """
import json, os, sys
from confluent_kafka import Consumer, Producer, TopicPartition
bs, txn_id, writes, offsets = json.loads(sys.argv[1])
p = Producer({"bootstrap.servers": bs, "transactional.id": txn_id, "transaction.timeout.ms": 120000})
p.init_transactions(60)
p.begin_transaction()
for topic, partition, n in writes:
    for i in range(n):
        p.produce(topic, b"uncommitted-%d" % i, b"k", partition=partition)
p.flush(30)
if offsets:
    group, topic, partition, offset = offsets
    c = Consumer({"bootstrap.servers": bs, "group.id": group})
    p.send_offsets_to_transaction([TopicPartition(topic, partition, offset)], c.consumer_group_metadata(), 30)
p.flush(30)
os._exit(0)  # die with the transaction open, like a SIGKILLed worker
"""


class HangBroker:
    """A private broker whose coordinator can be made to forget every transaction."""

    def __init__(self, data_dir: Path) -> None:
        self.broker = LocalBroker(data_dir, port=PORT, heap_mb=384)
        self.bootstrap = self.broker.bootstrap

    def open_transaction(
        self, txn_id: str, writes: list[tuple[str, int, int]], offsets: tuple[str, str, int, int] | None = None
    ) -> None:
        arg = json.dumps([self.bootstrap, txn_id, writes, offsets])
        subprocess.run([sys.executable, "-c", _OPEN_TXN, arg], check=True, timeout=120)

    def forget_transactions(self) -> None:
        """Stop, delete ``__transaction_state-*``, start: open transactions now hang."""
        self.broker.down()
        for part in (self.broker.data_dir / "logs").glob("__transaction_state-*"):
            shutil.rmtree(part)
        self.broker.up(timeout=120)

    def clear_all(self) -> None:
        """Abort whatever still hangs anywhere on the broker (test isolation)."""
        for txn in find_hanging(self.bootstrap, broker_ids=[1], max_age_ms=0):
            abort_hanging(self.bootstrap, txn)


@pytest.fixture(scope="module")
def hb() -> Iterator[HangBroker]:
    data_dir = Path(tempfile.mkdtemp(prefix="ledgerflow-test-hanging-"))
    env = HangBroker(data_dir)
    try:
        env.broker.up(timeout=120)
    except Exception as exc:  # fail, never skip
        shutil.rmtree(data_dir, ignore_errors=True)
        pytest.fail(f"no Kafka broker for the hanging-transaction tests: {exc}", pytrace=False)
    try:
        yield env
    finally:
        env.broker.down()
        shutil.rmtree(data_dir, ignore_errors=True)


@pytest.fixture
def scenario(hb: HangBroker) -> Iterator[dict[str, str]]:
    """Topics of one pipeline ``hp<tag>``: input (read, not owned), output, journal, DLQ."""
    p = f"hp{uuid.uuid4().hex[:8]}"
    names = {"pipeline": p, "in": f"{p}.in", "out": f"{p}.out", "journal": f"{p}.journal", "dlq": f"{p}.dlq"}
    admin = Admin(hb.bootstrap)
    admin.create_topic(names["in"], 1, 1, {})
    admin.create_topic(names["out"], 3, 1, {})
    admin.create_topic(names["journal"], 1, 1, {})
    admin.create_topic(names["dlq"], 1, 1, {})
    names["group"] = f"ledgerflow.{p}.transform.t"
    yield names
    hb.clear_all()


def _make_hanging(hb: HangBroker, s: dict[str, str], *, foreign: bool) -> None:
    p = s["pipeline"]
    writes = [(s["out"], 0, 3), (s["out"], 1, 2), (s["out"], 2, 1), (s["journal"], 0, 1)]
    hb.open_transaction(f"ledgerflow.{p}.transform.t.w1", writes, (s["group"], s["in"], 0, 0))
    if foreign:
        hb.open_transaction(f"someone-else.{p}.w9", [(s["in"], 0, 2)])
    hb.forget_transactions()


def _lso_behind(bootstrap: str, tps: list[tuple[str, int]]) -> dict[tuple[str, int], tuple[int, int]]:
    """Partitions whose last stable offset is behind the high watermark. Asked again for up
    to 30 s while the just-restarted broker still answers with a stale leader epoch."""
    admin = Admin(bootstrap)
    deadline = time.monotonic() + 30
    while True:
        try:
            lso = admin.end_offsets(tps, committed_only=True)
            hwm = admin.end_offsets(tps)
            return {tp: (lso[tp], hwm[tp]) for tp in tps if lso[tp] < hwm[tp]}
        except KafkaException:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)


def test_heal_hanging_aborts_ours_and_names_foreign(hb: HangBroker, scenario: dict[str, str]) -> None:
    s, p = scenario, scenario["pipeline"]
    _make_hanging(hb, s, foreign=True)
    offsets_tp = (OFFSETS_TOPIC, offsets_partition(s["group"], 10))
    parts = [(s["out"], 0), (s["out"], 1), (s["out"], 2), (s["journal"], 0), (s["in"], 0), (s["dlq"], 0), offsets_tp]
    owned = {s["out"], s["journal"], s["dlq"]}

    # before: the LSO sits at each open transaction, a read_committed read of the journal stalls
    data_tps = [tp for tp in parts if tp[0] != OFFSETS_TOPIC]
    assert set(_lso_behind(hb.bootstrap, data_tps)) == {tp for tp in data_tps if tp[0] != s["dlq"]}
    with pytest.raises(TimeoutError, match="open transaction"):
        load_journal(hb.bootstrap, s["journal"], timeout=5)
    found = find_hanging(hb.bootstrap, parts, max_age_ms=0)
    assert {(t.topic, t.partition) for t in found} == set(parts) - {(s["dlq"], 0)}
    assert all(t.transactional_id is None for t in found)  # the coordinator forgot them
    assert next(t for t in found if t.topic == OFFSETS_TOPIC).offsets_group == s["group"]
    assert find_hanging(hb.bootstrap, parts, max_age_ms=3_600_000) == []  # younger than the threshold

    corr = Correlation(p, "transform", "w1", "run1")
    with pytest.raises(ForeignHangingTransaction) as info:
        heal_hanging(hb.bootstrap, pipeline=p, partitions=parts, owned_topics=owned, max_age_ms=0, corr=corr)
    foreign = next(t for t in found if t.topic == s["in"])
    msg = str(info.value)
    for piece in (s["in"], f"producer id {foreign.producer_id}", f"offset {foreign.start_offset}"):
        assert piece in msg
    assert (
        f"ledgerflow kafka tool transactions --bootstrap-server {hb.bootstrap} abort "
        f"--topic {s['in']} --partition 0 --start-offset {foreign.start_offset}"
    ) in msg
    report = info.value.report
    assert {(t.topic, t.partition) for t in report.aborted} == set(parts) - {(s["dlq"], 0), (s["in"], 0)}
    assert [(t.topic, t.partition) for t in report.foreign] == [(s["in"], 0)]

    # after: ours are gone, the foreign one is untouched, readers pass the LSO
    assert _lso_behind(hb.bootstrap, data_tps) == {(s["in"], 0): (0, 2)}
    assert [(t.topic, t.partition) for t in find_hanging(hb.bootstrap, parts, max_age_ms=0)] == [(s["in"], 0)]
    write_events(hb.bootstrap, s["journal"], report.events, pipeline=p, worker_id="w1")
    events = load_journal(hb.bootstrap, s["journal"], timeout=30)
    aborted = {k: ev for k, ev in events.items() if ev.kind == "hanging_txn_aborted"}
    assert set(aborted) == {t.key for t in report.aborted}
    for t in report.aborted:
        d = aborted[t.key].detail or {}
        assert (d["topic"], d["partition"], d["producer_id"], d["start_offset"]) == (
            t.topic,
            str(t.partition),
            str(t.producer_id),
            str(t.start_offset),
        )
        assert int(d["age_ms"]) == t.age_ms
    offsets_txn = next(t for t in found if t.topic == OFFSETS_TOPIC)
    assert (aborted[offsets_txn.key].detail or {})["offsets_group"] == s["group"]
    assert not any(rec.value and b"uncommitted" in rec.value for rec in _read_all(hb.bootstrap, s["out"]))


def _read_all(bootstrap: str, topic: str) -> list[object]:
    from app.kafka.readers import read_topic_to_end

    recs: list[object] = list(read_topic_to_end(bootstrap, topic, timeout=30))
    return recs


def _ids(txns: list[HangingTxn]) -> set[tuple[str, int, int, int]]:
    return {(t.topic, t.partition, t.producer_id, t.start_offset) for t in txns}


def _spec(tmp: Path, hb: HangBroker, s: dict[str, str]) -> Path:
    path = tmp / "pipeline.yaml"
    path.write_text(
        f"pipeline: {s['pipeline']}\n"
        f"kafka:\n  bootstrap_servers: {hb.bootstrap}\n"
        "commit:\n  transaction_timeout_ms: 1000\n"
        f"transforms:\n  - name: t\n    input: {s['in']}\n    output: {s['out']}\n"
    )
    return path


def _recover(spec: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "app.cli.main", "recover", "--abort-hanging", *args, str(spec)]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)


def test_recover_cli_dry_run_then_abort_then_foreign_by_hand(
    hb: HangBroker, scenario: dict[str, str], tmp_path: Path
) -> None:
    s = scenario
    _make_hanging(hb, s, foreign=True)
    spec = _spec(tmp_path, hb, s)
    parts = [(s["out"], 0), (s["out"], 1), (s["out"], 2), (s["journal"], 0), (s["in"], 0)]
    parts.append((OFFSETS_TOPIC, offsets_partition(s["group"], 10)))
    before = find_hanging(hb.bootstrap, parts, max_age_ms=0)
    assert len(before) == 6

    dry = _recover(spec, "--dry-run", "--max-age-ms", "0")
    assert dry.returncode == 1, dry.stdout + dry.stderr
    assert dry.stdout.count("would abort (dry run)") == 5 and "left alone: foreign" in dry.stdout
    assert _ids(find_hanging(hb.bootstrap, parts, max_age_ms=0)) == _ids(before)  # nothing aborted

    run = _recover(spec, "--max-age-ms", "0")
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stdout.count("\taborted") == 5, run.stdout
    foreign = next(t for t in before if t.topic == s["in"])
    cmd = (
        f"ledgerflow kafka tool transactions --bootstrap-server {hb.bootstrap} abort "
        f"--topic {s['in']} --partition 0 --start-offset {foreign.start_offset}"
    )
    assert cmd in run.stderr
    assert [(t.topic, t.partition) for t in find_hanging(hb.bootstrap, parts, max_age_ms=0)] == [(s["in"], 0)]
    events = load_journal(hb.bootstrap, s["journal"], timeout=30)
    got = {(ev.detail or {})["producer_id"] + "@" + k for k, ev in events.items() if ev.kind == "hanging_txn_aborted"}
    assert got == {f"{t.producer_id}@{t.key}" for t in before if t.topic != s["in"]}
    assert all(ev.stage == "recover" for ev in events.values() if ev.kind == "hanging_txn_aborted")

    # the operator runs the printed command for the foreign one; then recover is clean
    by_hand = subprocess.run(
        [sys.executable, "-m", "app.cli.main", *cmd.split()[1:]], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert by_hand.returncode == 0, by_hand.stderr
    clean = _recover(spec, "--max-age-ms", "0")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert "0 hanging" in clean.stderr
    assert _lso_behind(hb.bootstrap, [tp for tp in parts if tp[0] != OFFSETS_TOPIC]) == {}
