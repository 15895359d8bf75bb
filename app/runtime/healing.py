"""A lost producer is a state of the runner, not the end of the process.

After a broker restart, a coordinator move or a lost connection, a transactional
producer can be fenced (its epoch bumped), see its transaction timed out, or be in
an unknown state. None of that means another instance owns the work. ``Healer``
decides from facts, then either stops the stage or re-creates the producer:

* **Facts.** Every runner writes ``run_started`` (key ``run/<run id>/<stage>/<name>``,
  with its worker id) in its first transaction. If the journal holds a
  ``run_started`` of the same stage, name and worker id from another run that
  started later than this one, a newer live instance holds this transactional id:
  ``WorkerFenced`` names both runs and the stage stops (I5). If the journal cannot
  be read, the producer is healed: ``init_transactions`` fences whoever is older, so
  two instances can never both commit, and the older one finds the newer's
  ``run_started`` on its next heal.
* **Healing.** Readiness goes false; a new producer is created and registered with
  ``init_transactions`` (which also completes or aborts the transaction the lost
  producer left), retried with exponential backoff up to ``attempts`` times; one log
  line and ``ledgerflow_producer_reinit_total{reason}`` per recovery. The runner then
  rewinds to its last committed offsets or checkpoints and recovers its sink, so a
  transaction whose commit outcome was unknown is resolved from Kafka, never guessed.
* **Bounded.** More than ``max_heals`` heals without a successful commit in between
  stops the stage with the last error.
* **Refused.** A producer lost because the cluster refused the principal
  (``AccessDenied``: a revoked ACL or credential, a certificate problem) parks the
  stage instead: readiness false, ONE error line naming what was refused, then the
  producer is re-created with backoff (1 s doubling to 30 s) in case an operator
  restores access; after ``access_wait_s`` (``LEDGERFLOW_ACCESS_WAIT_S``, default
  300 s) without a commit the stage stops with ``StageRefused``. Nothing commits
  while refused, so nothing is lost or half-applied.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaException

from app.journal.events import JournalEvent
from app.journal.keys import run_key
from app.journal.reader import load_journal
from app.journal.writer import Correlation, info_event
from app.kafka.admin import Admin
from app.kafka.clients import TxnProducer
from app.kafka.errors import AccessDenied, LedgerKafkaError, RetriableKafkaError, classify
from app.observability.hooks import Hooks
from app.runtime.batch import ProducerLost, WorkerFenced
from app.runtime.commit import CommitSeam
from app.runtime.stage import StageContext

log = logging.getLogger("ledgerflow.heal")

DEFAULT_ACCESS_WAIT_S = 300.0
# How long a journal read keeps asking while its broker is away (a bounce: metadata or
# the partitions' leaders time out, connections are refused) before the stage stops.
BROKER_AWAY_WAIT_S = 90.0
_AWAY_NAMES = {"_TRANSPORT", "_TIMED_OUT", "_ALL_BROKERS_DOWN", "LEADER_NOT_AVAILABLE", "NOT_LEADER_OR_FOLLOWER"}


def _broker_away(error: LedgerKafkaError) -> bool:
    """Whether ``error`` says the broker is unreachable for now (never a refusal or a fatal error)."""
    if isinstance(error, AccessDenied):
        return False
    return isinstance(error, RetriableKafkaError) or error.name in _AWAY_NAMES


class StageRefused(RuntimeError):
    """The cluster kept refusing the stage's principal past the access wait: the stage
    stops; the message names the stage and what was refused."""


def refusal(exc: BaseException | None) -> AccessDenied | None:
    """The ``AccessDenied`` an exception is, or was raised from."""
    while exc is not None:
        if isinstance(exc, AccessDenied):
            return exc
        exc = exc.__cause__
    return None


def run_started(corr: Correlation, name: str, started_ms: int) -> JournalEvent:
    """The event that says which run of a worker holds a transactional id since when."""
    detail = {"worker_id": corr.worker_id, "started_ms": str(started_ms), "name": name}
    return info_event(corr, "run_started", run_key(corr.run_id, corr.stage, name), detail)


def run_stopped(corr: Correlation, name: str, started_ms: int) -> JournalEvent:
    """Written in the last transaction of a runner that stops cleanly (input done or a
    signal); a run with ``run_started`` and no ``run_stopped`` ended by a crash."""
    detail = {"worker_id": corr.worker_id, "started_ms": str(started_ms), "name": name}
    return info_event(corr, "run_stopped", run_key(corr.run_id, corr.stage, name), detail)


def newer_instance(
    events: Mapping[str, JournalEvent], corr: Correlation, name: str, started_ms: int, *, any_worker: bool = False
) -> JournalEvent | None:
    """The ``run_started`` of another run of this stage, name and worker (any worker when
    the transactional id is per stage, as a source's is) that started after
    ``started_ms`` (a live successor), if the journal holds one."""
    best: JournalEvent | None = None
    for ev in events.values():
        if ev.kind != "run_started" or ev.run_id == corr.run_id or ev.stage != corr.stage:
            continue
        detail = ev.detail or {}
        if (not any_worker and ev.worker_id != corr.worker_id) or detail.get("name") != name:
            continue
        if int(detail.get("started_ms", "0")) > started_ms and (best is None or ev.ts_ms > best.ts_ms):
            best = ev
    return best


class Healer:
    """Re-creates a runner's transactional producer after a ``ProducerLost``."""

    def __init__(
        self,
        seam: CommitSeam,
        make_producer: Callable[[], TxnProducer],
        journal: Callable[[float], Mapping[str, JournalEvent]],
        hooks: Hooks,
        stopping: Callable[[], bool],
        *,
        write_partitions: Callable[[], list[tuple[str, int]]] | None = None,
        bootstrap: str = "",
        extra: Mapping[str, Any] | None = None,
        owned_topics: frozenset[str] = frozenset(),
        any_worker: bool = False,
        attempts: int = 12,
        max_heals: int = 20,
        init_timeout_s: float = 20.0,
        access_wait_s: float | None = None,
    ) -> None:
        self.seam = seam
        self.make_producer = make_producer
        self.journal = journal
        self.hooks = hooks
        self.stopping = stopping
        self.attempts = attempts
        self.max_heals = max_heals
        self.init_timeout_s = init_timeout_s
        self.any_worker = any_worker
        self.write_partitions = write_partitions
        self.cleared_at = -1e9
        self.bootstrap = bootstrap
        self.extra = dict(extra or {})
        self.owned_topics = owned_topics
        self.check_wait_s = 20.0  # the zombie check never waits long for the journal
        self.started_ms = int(time.time() * 1000)
        self.heals_since_commit = 0
        env_wait = os.environ.get("LEDGERFLOW_ACCESS_WAIT_S")
        self.access_wait_s = access_wait_s if access_wait_s is not None else float(env_wait or DEFAULT_ACCESS_WAIT_S)
        self.refused_since: float | None = None
        self.refused_what = ""
        self.access_delay = 1.0

    def committed(self) -> None:
        """A transaction committed: the heal budget and the access wait start over."""
        self.heals_since_commit = 0
        if self.refused_since is not None:
            log.warning("%s %s: access restored; committing again", self.seam.stage, self.seam.name)
        self.refused_since = None
        self.access_delay = 1.0

    def park(self, denied: AccessDenied) -> None:
        """Wait out a refusal with backoff; ``StageRefused`` once ``access_wait_s`` is spent.
        The first refusal logs the one error; the retries log at info."""
        stage, name = self.seam.stage, self.seam.name
        self.hooks.on_unready(stage, name)
        now = time.monotonic()
        if self.refused_since is None:
            self.refused_since = now
            self.refused_what = denied.what  # a later client may know less about the resource
            log.error(
                "%s %s: refused by the cluster: %s; retrying with backoff for up to %.0fs",
                stage,
                name,
                denied.what,
                self.access_wait_s,
            )
        waited = now - self.refused_since
        if waited >= self.access_wait_s:
            raise StageRefused(f"{stage} {name}: refused by the cluster for {waited:.0f}s: {denied.what}") from denied
        delay = min(self.access_delay, self.access_wait_s - waited)
        self.access_delay = min(self.access_delay * 2, 30.0)
        log.info("%s %s: still refused (%s); next try in %.1fs", stage, name, denied.name, delay)
        deadline = time.monotonic() + delay
        while time.monotonic() < deadline and not self.stopping():
            time.sleep(min(0.2, delay))

    def heal(self, lost: ProducerLost) -> None:
        """Raise ``WorkerFenced`` if a newer instance holds the work; otherwise return
        with a fresh, registered producer in the seam (the caller rewinds)."""
        seam = self.seam
        stage, name, corr = seam.stage, seam.name, seam.corr
        self.hooks.on_unready(stage, name)
        denied = refusal(lost)
        if denied is not None:
            self.park(denied)
        else:
            self.check_not_superseded(lost)
            self.count_heal(lost)
        delay = 0.5
        attempt = 0
        while attempt < self.attempts:
            attempt += 1
            if self.stopping():
                raise lost
            producer = self.make_producer()
            try:
                producer.init(timeout=self.init_timeout_s)
            except AccessDenied as exc:
                producer.close()
                self.park(exc)
                attempt -= 1  # refusals are bounded by the access wait, not the attempts
                continue
            except LedgerKafkaError as exc:
                producer.close()
                if attempt == self.attempts:
                    raise WorkerFenced(f"{lost}; re-creating the producer failed {attempt} times: {exc}") from exc
                log.warning("%s %s: new producer not registered yet (%s); retry in %.1fs", stage, name, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            seam.replace_producer(producer)
            self.clear_left_open()
            self.hooks.on_producer_reinit(stage, name, lost.reason)
            log.warning(
                "%s %s: producer %s during %s (worker %s, run %s); re-created it and rewinding to the last commit",
                stage,
                name,
                lost.reason,
                lost.operation,
                corr.worker_id,
                corr.run_id,
            )
            return
        raise AssertionError("unreachable")  # the last attempt returns or raises

    def clear_left_open(self) -> None:
        """Right after the new producer registered: a transaction of the lost one that the
        coordinator forgot stays open on the partitions it wrote, and a later commit of the
        same producer id would commit its records too (duplicates). Whatever of this
        pipeline is still open there, the coordinator holding none of it, is aborted now
        (Kafka's find-hanging rule with no age threshold), before anything is produced."""
        if self.write_partitions is None:
            return
        self.cleared_at = time.monotonic()
        from app.kafka.hanging import heal_hanging
        from app.kafka.txn_tool import HangingToolError

        corr = self.seam.corr
        try:
            parts = self.write_partitions()
            report = heal_hanging(
                self.bootstrap,
                pipeline=corr.pipeline,
                partitions=parts,
                owned_topics=self.owned_topics,
                max_age_ms=0,
                corr=corr,
                extra=self.extra,
                raise_on_foreign=False,
            )
        except (HangingToolError, LedgerKafkaError, KeyError, RuntimeError) as exc:
            log.warning(
                "%s %s: checking for transactions the lost producer left open failed: %s",
                corr.stage,
                self.seam.name,
                exc,
            )
            return
        if report.events:
            self.seam.queue(report.events)

    def after_abort(self) -> None:
        """A batch was aborted: if the transaction was refused because an earlier one of
        this pipeline is still open where it writes (a pending offset commit on the
        group's partition, say), clear that before the batch is redone. At most every 15 s."""
        if time.monotonic() - self.cleared_at >= 15.0:
            self.clear_left_open()

    def count_heal(self, cause: Exception) -> None:
        """One more heal; ``WorkerFenced`` once the budget without a commit is spent."""
        self.heals_since_commit += 1
        if self.heals_since_commit > self.max_heals:
            raise WorkerFenced(f"{cause} (gave up after {self.max_heals} re-creations without a commit)") from cause

    def check_not_superseded(self, lost: Exception) -> None:
        """``WorkerFenced`` if the journal shows a newer live run holding this work."""
        corr, name = self.seam.corr, self.seam.name
        try:
            events = self.journal(self.check_wait_s)
        except Exception as exc:  # unreadable now (broker down): init_transactions still fences the older
            log.warning("%s %s: journal unreadable while checking for a newer instance: %s", corr.stage, name, exc)
            return
        newer = newer_instance(events, corr, name, self.started_ms, any_worker=self.any_worker)
        if newer is not None:
            self.hooks.on_fenced(corr.stage, name)
            raise WorkerFenced(
                f"{corr.stage} {name}: worker {corr.worker_id} run {corr.run_id} is a zombie: worker "
                f"{newer.worker_id} run {newer.run_id} started later with the same transactional id "
                f"{self.seam.producer.transactional_id} ({lost})"
            ) from lost


def read_journal(
    ctx: StageContext, queue: Callable[[list[JournalEvent]], None], wait_s: float = 300.0
) -> dict[str, JournalEvent]:
    """``load_journal_healing`` for a stage: its journal, DLQ, identity and timeouts."""
    return load_journal_healing(
        ctx.bootstrap,
        ctx.journal_topic,
        ctx.dlq_topic,
        corr=ctx.corr,
        extra=ctx.kafka_extra,
        max_age_ms=ctx.transaction_timeout_ms,
        queue=queue,
        wait_s=wait_s,
    )


def load_journal_healing(
    bootstrap: str,
    journal_topic: str,
    dlq_topic: str,
    *,
    corr: Correlation,
    extra: Mapping[str, Any],
    max_age_ms: int,
    queue: Callable[[list[JournalEvent]], None],
    wait_s: float = 300.0,
    attempt_s: float = 15.0,
) -> dict[str, JournalEvent]:
    """The journal's latest events. A read that stalls behind an open transaction
    (``attempt_s``) checks for hanging ones: the pipeline's own are aborted (their
    ``hanging_txn_aborted`` events go to ``queue``, for the next transaction) and the
    read goes on; it keeps trying, checking again each round, until ``wait_s`` (an open
    transaction is only hanging once it is older than ``max_age_ms``), then raises
    ``TimeoutError``. A foreign hanging transaction raises with the command that aborts it.
    A read that fails because the broker is away (``_broker_away``: a bounce makes metadata
    or partition leaders time out) is made again each second for up to
    ``BROKER_AWAY_WAIT_S``, within ``wait_s``; any other Kafka error is raised at once."""
    from app.kafka.hanging import ForeignHangingTransaction, heal_hanging
    from app.kafka.txn_tool import HangingToolError

    deadline = time.monotonic() + wait_s
    away_since: float | None = None  # when this read first found the broker away
    while True:
        left = deadline - time.monotonic()
        try:
            return load_journal(bootstrap, journal_topic, extra=extra, timeout=max(1.0, min(attempt_s, left)))
        except KafkaException as exc:
            error = classify("read journal", exc)
            now = time.monotonic()
            away_since = now if away_since is None else away_since
            if not _broker_away(error) or now >= deadline or now - away_since >= BROKER_AWAY_WAIT_S:
                raise
            log.warning("journal %s: %s; the broker may be restarting, reading again in 1 s", journal_topic, error)
            time.sleep(1.0)
            continue
        except TimeoutError as stalled:
            if time.monotonic() >= deadline:
                raise
            try:
                parts = [(journal_topic, p) for p in Admin(bootstrap, extra).partitions_of(journal_topic)]
                report = heal_hanging(
                    bootstrap,
                    pipeline=corr.pipeline,
                    partitions=parts,
                    owned_topics={journal_topic, dlq_topic},
                    max_age_ms=max_age_ms,
                    corr=corr,
                    extra=extra,
                )
            except ForeignHangingTransaction:
                raise
            except (HangingToolError, LedgerKafkaError, KeyError, RuntimeError) as exc:  # broker unreachable now
                log.warning("journal read stalled (%s); hanging-transaction check failed: %s", stalled, exc)
                continue
            if report.aborted:
                log.warning("journal read stalled; aborted %d hanging transaction(s)", len(report.aborted))
                queue(report.events)
