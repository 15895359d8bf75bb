"""Prometheus implementation of the runtime hooks, and the HTTP endpoint.

One registry per process. Updates happen once per committed batch (never per row);
row counters are only touched from ``on_commit``, which the seam calls after the
commit point (invariant I4). Per-partition series are removed when the partition is
revoked, so a scaled-out group does not report stale lag from former owners.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from app import __version__

if TYPE_CHECKING:
    from app.journal.events import PartInfo
    from app.runtime.batch import CommitReport

TP = tuple[str, int]


class _AgeCollector(Collector):
    """Ages computed at scrape time: checkpoint age, open-transaction age, loop age."""

    def __init__(self, hooks: PrometheusHooks) -> None:
        self.h = hooks

    def collect(self) -> Iterator[GaugeMetricFamily]:
        now = time.monotonic()
        h = self.h
        ck = GaugeMetricFamily(
            "ledgerflow_checkpoint_age_seconds",
            "Seconds since the last commit point covering this partition (or source)",
            labels=["pipeline", "stage", "name", "topic", "partition"],
        )
        with h.lock:
            for (stage, name, topic, part), t in h.last_commit.items():
                ck.add_metric([h.pipeline, stage, name, topic, part], now - t)
            txn = GaugeMetricFamily(
                "ledgerflow_transaction_open_seconds",
                "Age of the currently open Kafka transaction (0 when none)",
                labels=["pipeline", "stage", "name"],
            )
            for (stage, name), opened in h.txn_open.items():
                txn.add_metric([h.pipeline, stage, name], 0.0 if opened is None else now - opened)
        loop = GaugeMetricFamily(
            "ledgerflow_loop_age_seconds", "Seconds since a runner loop last ran", labels=["pipeline"]
        )
        loop.add_metric([h.pipeline], now - h.last_loop)
        yield ck
        yield txn
        yield loop


class PrometheusHooks:
    def __init__(self, pipeline: str, registry: CollectorRegistry | None = None) -> None:
        self.pipeline = pipeline
        self.registry = registry or CollectorRegistry()
        self.lock = threading.Lock()
        labels = ["pipeline", "stage", "name"]
        plabels = [*labels, "topic", "partition"]
        r = self.registry
        self.rows_in = Counter("ledgerflow_rows_in", "Input rows covered by committed transactions", labels, registry=r)
        self.rows_out = Counter("ledgerflow_rows_out", "Rows committed to outputs or sinks", labels, registry=r)
        self.dlq_rows = Counter("ledgerflow_dlq_rows", "Rows committed to the DLQ", [*labels, "reason"], registry=r)
        self.filtered = Counter(
            "ledgerflow_rows_filtered", "Input rows a transform step dropped, committed", [*labels, "step"], registry=r
        )
        self.reinits = Counter(
            "ledgerflow_producer_reinit",
            "Transactional producers re-created after a fence, timeout or lost state (no restart)",
            [*labels, "reason"],
            registry=r,
        )
        self.consumer_reinits = Counter(
            "ledgerflow_consumer_reinit",
            "Group consumers re-created after a fatal consumer error (no restart)",
            [*labels, "reason"],
            registry=r,
        )
        self.txn = Counter("ledgerflow_transactions", "Transactions by outcome", [*labels, "outcome"], registry=r)
        self.commit_seconds = Histogram(
            "ledgerflow_commit_seconds",
            "Time from begin to commit of one transaction",
            labels,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.batch_rows = Histogram(
            "ledgerflow_batch_rows",
            "Input rows per committed transaction",
            labels,
            buckets=(1, 10, 100, 1000, 5000, 10000, 50000, 100000),
            registry=r,
        )
        self.parts = Counter("ledgerflow_parts", "Sink parts by phase", [*labels, "phase"], registry=r)
        self.rebalances = Counter(
            "ledgerflow_rebalances", "Partition assignment changes", [*labels, "kind"], registry=r
        )
        self.recoveries = Counter("ledgerflow_recovery_actions", "Recovery actions", [*labels, "action"], registry=r)
        self.staging = Gauge(
            "ledgerflow_staging_leftovers", "Staging files found unreferenced at the last recovery", labels, registry=r
        )
        self.lag = Gauge("ledgerflow_consumer_lag", "Committed records not yet consumed", plabels, registry=r)
        self.restored = Counter(
            "ledgerflow_state_restored_records", "Changelog records applied to local state stores", labels, registry=r
        )
        self.restore_remaining = Gauge(
            "ledgerflow_state_restore_remaining",
            "Changelog records still to restore for a partition's store (0 once it is up to date)",
            [*labels, "partition"],
            registry=r,
        )
        self.info = Gauge("ledgerflow_info", "Build information", ["pipeline", "version"], registry=r)
        self.info.labels(pipeline, __version__).set(1)
        self.last_commit: dict[tuple[str, str, str, str], float] = {}
        self.txn_open: dict[tuple[str, str], float | None] = {}
        self.last_loop = time.monotonic()
        self.assigned: set[tuple[str, str]] = set()
        self.expect_assignment: set[tuple[str, str]] = set()
        self.built = False
        r.register(_AgeCollector(self))

    @property
    def ready(self) -> bool:
        """Built, and every consuming runner got its first assignment (recovery runs inside it)."""
        return self.built and self.expect_assignment <= self.assigned

    def on_commit(self, report: CommitReport) -> None:
        stage, name = report.stage, report.name
        lab = (self.pipeline, stage, name)
        self.rows_in.labels(*lab).inc(report.rows_in)
        self.rows_out.labels(*lab).inc(report.rows_out)
        for reason, n in report.dlq.items():
            self.dlq_rows.labels(*lab, reason).inc(n)
        for step, n in report.filtered.items():
            self.filtered.labels(*lab, step).inc(n)
        self.txn.labels(*lab, "committed").inc()
        self.commit_seconds.labels(*lab).observe(report.seconds)
        self.batch_rows.labels(*lab).observe(report.rows_in)
        if report.parts:
            self.parts.labels(*lab, "committed").inc(report.parts)
        now = time.monotonic()
        with self.lock:
            for topic, part, _off in report.offsets:
                self.last_commit[(stage, name, topic, str(part))] = now
            if report.checkpoints:
                self.last_commit[(stage, name, "", "")] = now

    def on_abort(self, stage: str, name: str, reason: str) -> None:
        self.txn.labels(self.pipeline, stage, name, "aborted").inc()

    def on_fenced(self, stage: str, name: str) -> None:
        self.txn.labels(self.pipeline, stage, name, "fenced").inc()

    def on_part_finalized(self, stage: str, name: str, part: PartInfo) -> None:
        self.parts.labels(self.pipeline, stage, name, "finalized").inc()

    def on_rebalance(self, stage: str, name: str, kind: str, partitions: int) -> None:
        self.rebalances.labels(self.pipeline, stage, name, kind).inc()

    def on_recovery(self, stage: str, name: str, action: str) -> None:
        self.recoveries.labels(self.pipeline, stage, name, action).inc()

    def on_txn_open(self, stage: str, name: str, open_: bool) -> None:
        with self.lock:
            self.txn_open[(stage, name)] = time.monotonic() if open_ else None

    def on_lag(self, stage: str, name: str, lags: dict[TP, int]) -> None:
        for (topic, part), lag in lags.items():
            self.lag.labels(self.pipeline, stage, name, topic, str(part)).set(lag)

    def on_partitions_gone(self, stage: str, name: str, partitions: list[TP]) -> None:
        with self.lock:
            for topic, part in partitions:
                self.last_commit.pop((stage, name, topic, str(part)), None)
                with contextlib.suppress(KeyError):
                    self.lag.remove(self.pipeline, stage, name, topic, str(part))
                with contextlib.suppress(KeyError):
                    self.restore_remaining.remove(self.pipeline, stage, name, str(part))

    def on_staging_leftovers(self, stage: str, name: str, count: int) -> None:
        self.staging.labels(self.pipeline, stage, name).set(count)

    def on_assigned(self, stage: str, name: str) -> None:
        self.assigned.add((stage, name))

    def on_unready(self, stage: str, name: str) -> None:
        """Healing a lost producer: not ready until it is back (``on_assigned``)."""
        self.assigned.discard((stage, name))

    def on_producer_reinit(self, stage: str, name: str, reason: str) -> None:
        self.reinits.labels(self.pipeline, stage, name, reason).inc()

    def on_consumer_reinit(self, stage: str, name: str, reason: str) -> None:
        self.consumer_reinits.labels(self.pipeline, stage, name, reason).inc()

    def on_restore(self, stage: str, name: str, partition: int, applied: int, remaining: int) -> None:
        if applied:
            self.restored.labels(self.pipeline, stage, name).inc(applied)
        self.restore_remaining.labels(self.pipeline, stage, name, str(partition)).set(remaining)

    def tick(self) -> None:
        """Called by the supervisor loop: feeds /healthz and the loop-age gauge."""
        self.last_loop = time.monotonic()


def serve(hooks: PrometheusHooks, host: str, port: int, stuck_after_s: float = 60.0) -> ThreadingHTTPServer:
    """Serve /metrics, /healthz (the loop ran within ``stuck_after_s``) and /readyz
    (assignment received and recovery done) on a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/metrics"):
                body, ctype, code = generate_latest(hooks.registry), CONTENT_TYPE_LATEST, 200
            elif self.path.startswith("/healthz"):
                ok = time.monotonic() - hooks.last_loop < stuck_after_s
                body, ctype, code = (b"ok\n" if ok else b"loop stuck\n"), "text/plain", 200 if ok else 503
            elif self.path.startswith("/readyz"):
                ready = hooks.ready
                body, ctype, code = (b"ready\n" if ready else b"not ready\n"), "text/plain", 200 if ready else 503
            else:
                body, ctype, code = b"not found\n", "text/plain", 404
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            return None

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
