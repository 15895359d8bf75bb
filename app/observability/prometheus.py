"""Prometheus implementation of the runtime hooks, and the HTTP endpoint.

One registry per process. Every update happens once per committed batch; row
counters are only touched from ``on_commit``, which the seam calls after the
commit point (invariant I4).
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

if TYPE_CHECKING:
    from app.runtime.commit import Batch
    from app.sinks.base import PreparedPart


class PrometheusHooks:
    def __init__(self, pipeline: str, registry: CollectorRegistry | None = None) -> None:
        self.pipeline = pipeline
        self.registry = registry or CollectorRegistry()
        labels = ["pipeline", "stage", "name"]
        r = self.registry
        self.rows_in = Counter("ledgerflow_rows_in", "Input rows covered by committed transactions", labels, registry=r)
        self.rows_out = Counter("ledgerflow_rows_out", "Rows committed to outputs or sink parts", labels, registry=r)
        self.dlq_rows = Counter("ledgerflow_dlq_rows", "Rows committed to the DLQ", labels, registry=r)
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
        self.last_loop = time.monotonic()
        self.ready = False

    def on_commit(self, stage: str, name: str, batch: Batch, seconds: float) -> None:
        lab = (self.pipeline, stage, name)
        out = sum(len(o.values) for o in batch.outputs) + sum(p.rows for p in batch.parts) + batch.rows_written
        self.rows_in.labels(*lab).inc(batch.rows_in)
        self.rows_out.labels(*lab).inc(out)
        if batch.dlq:
            self.dlq_rows.labels(*lab).inc(len(batch.dlq))
        self.txn.labels(*lab, "committed").inc()
        self.commit_seconds.labels(*lab).observe(seconds)
        self.batch_rows.labels(*lab).observe(batch.rows_in)
        if batch.parts:
            self.parts.labels(*lab, "committed").inc(len(batch.parts))

    def on_abort(self, stage: str, name: str, reason: str) -> None:
        self.txn.labels(self.pipeline, stage, name, "aborted").inc()

    def on_fenced(self, stage: str, name: str) -> None:
        self.txn.labels(self.pipeline, stage, name, "fenced").inc()

    def on_part_finalized(self, stage: str, name: str, part: PreparedPart) -> None:
        self.parts.labels(self.pipeline, stage, name, "finalized").inc()

    def on_rebalance(self, stage: str, name: str, kind: str, partitions: int) -> None:
        self.rebalances.labels(self.pipeline, stage, name, kind).inc()

    def on_recovery(self, stage: str, name: str, action: str) -> None:
        self.recoveries.labels(self.pipeline, stage, name, action).inc()

    def tick(self) -> None:
        """Called by runner loops: feeds /healthz."""
        self.last_loop = time.monotonic()


def serve(hooks: PrometheusHooks, host: str, port: int, stuck_after_s: float = 60.0) -> ThreadingHTTPServer:
    """Serve /metrics, /healthz (loop ran recently) and /readyz on a daemon thread."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/metrics"):
                body, ctype, code = generate_latest(hooks.registry), CONTENT_TYPE_LATEST, 200
            elif self.path.startswith("/healthz"):
                ok = time.monotonic() - hooks.last_loop < stuck_after_s
                body, ctype, code = (b"ok\n" if ok else b"loop stuck\n"), "text/plain", 200 if ok else 503
            elif self.path.startswith("/readyz"):
                body, ctype, code = (
                    (b"ready\n" if hooks.ready else b"not ready\n"),
                    "text/plain",
                    (200 if hooks.ready else 503),
                )
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
