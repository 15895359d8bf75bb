"""`ledgerflow run | validate | demo`."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from app.config.pipeline import PipelineSpec, load_pipeline
from app.config.yamlsrc import SpecError
from app.observability.prometheus import PrometheusHooks, serve
from app.runtime.supervisor import STAGES, MissingTopics, SpecSecretError, Supervisor
from app.security.preflight import KafkaAccessError
from app.sinks.base import SinkUnavailable

log = logging.getLogger("ledgerflow.cli")
REPO_ROOT = Path(__file__).resolve().parents[2]


def _load(path: str) -> PipelineSpec:
    try:
        return load_pipeline(Path(path))
    except SpecError as exc:
        raise click.ClickException(str(exc)) from exc


class ProgressView:
    """Live rows/s, lag and commits: a rich table on a terminal, a log line otherwise."""

    def __init__(self, tty: bool) -> None:
        self.tty = tty
        self.last_log = 0.0
        self.live: Any = None
        self.prev: dict[str, tuple[float, int]] = {}

    def rows(self, sup: Supervisor) -> list[tuple[str, int, float, int, int, str]]:
        now = time.monotonic()
        out = []
        for w in sup.workers:
            p = w.runner.progress
            key = f"{w.stage}/{w.runner.name}"
            t0, n0 = self.prev.get(key, (p.started, 0))
            rate = (p.rows_in - n0) / max(now - t0, 1e-6)
            self.prev[key] = (now, p.rows_in)
            state = "done" if w.done.is_set() else "running"
            out.append((key, p.rows_in, rate, p.dlq, p.commits, state))
        return out

    def __call__(self, sup: Supervisor) -> None:
        if self.tty:
            from rich.live import Live
            from rich.table import Table

            table = Table(title=f"pipeline {sup.spec.pipeline} (worker {sup.worker_id})")
            for col in ("stage", "rows committed", "rows/s", "dlq", "commits", "state"):
                table.add_column(col)
            for key, n, rate, dlq, commits, state in self.rows(sup):
                table.add_row(key, f"{n:,}", f"{rate:,.0f}", str(dlq), str(commits), state)
            if self.live is None:
                self.live = Live(table, refresh_per_second=4, transient=False)
                self.live.start()
            else:
                self.live.update(table)
            if all(w.done.is_set() for w in sup.workers) or sup.stop.is_set():
                self.live.stop()
            return
        now = time.monotonic()
        if now - self.last_log >= 5 or all(w.done.is_set() for w in sup.workers):
            self.last_log = now
            for key, n, rate, dlq, commits, state in self.rows(sup):
                log.info(
                    "progress %s: %d rows committed, %.0f rows/s, %d dlq, %d commits, %s",
                    key,
                    n,
                    rate,
                    dlq,
                    commits,
                    state,
                )


def run_spec(
    spec: PipelineSpec,
    *,
    stage: str,
    worker_id: str | None,
    exit_when_done: bool,
    metrics_port: int | None,
    metrics_host: str = "127.0.0.1",
    grace_s: float = 30.0,
    hooks: PrometheusHooks | None = None,
) -> int:
    hooks = hooks or PrometheusHooks(spec.pipeline)
    if metrics_port is not None:
        serve(hooks, metrics_host, metrics_port)
    sup = Supervisor(
        spec, stage=stage, worker_id=worker_id, exit_when_done=exit_when_done, hooks=hooks, grace_s=grace_s
    )
    try:
        sup.build()
    except (SpecSecretError, MissingTopics, SinkUnavailable, KafkaAccessError) as exc:
        raise click.ClickException(str(exc)) from exc
    if os.environ.get("LEDGERFLOW_HANGING_CHECK", "1") != "0":
        from app.cli.recover_cmd import clear_hanging_on_start

        clear_hanging_on_start(spec, sup.bootstrap, spec.kafka.client_config(), sup.worker_id)
    hooks.expect_assignment = {(w.stage, w.runner.name) for w in sup.workers if w.stage in ("transform", "sink")}
    hooks.built = True
    view = ProgressView(sys.stderr.isatty())

    def tick(s: Supervisor) -> None:
        hooks.tick()
        view(s)

    return sup.run(on_tick=tick)


@click.command("run")
@click.argument("pipeline", type=click.Path(exists=True, dir_okay=False))
@click.option("--stage", type=click.Choice(STAGES), default="all", show_default=True, envvar="LEDGERFLOW_STAGE")
@click.option(
    "--worker-id",
    default=None,
    envvar="LEDGERFLOW_WORKER_ID",
    help="Stable id of this worker (default: hostname). Distinct per replica.",
)
@click.option("--exit-when-done", is_flag=True, help="Return once finite sources are exhausted and drained.")
@click.option("--metrics-port", type=int, default=None, envvar="LEDGERFLOW_METRICS_PORT")
@click.option("--metrics-host", default="0.0.0.0", show_default=True, envvar="LEDGERFLOW_METRICS_HOST")
@click.option("--grace", type=float, default=30.0, show_default=True, help="Seconds to finish open batches on SIGTERM.")
def run_cmd(
    pipeline: str,
    stage: str,
    worker_id: str | None,
    exit_when_done: bool,
    metrics_port: int | None,
    metrics_host: str,
    grace: float,
) -> None:
    """Run PIPELINE (all stages, or one with --stage)."""
    spec = _load(pipeline)
    sys.exit(
        run_spec(
            spec,
            stage=stage,
            worker_id=worker_id,
            exit_when_done=exit_when_done,
            metrics_port=metrics_port,
            metrics_host=metrics_host,
            grace_s=grace,
        )
    )


@click.command("validate")
@click.argument("pipeline", type=click.Path(exists=True, dir_okay=False))
def validate_cmd(pipeline: str) -> None:
    """Check PIPELINE; errors name the file, line and field."""
    spec = _load(pipeline)
    from app.runtime.supervisor import _steps

    for tr in spec.transforms:
        try:
            _steps(tr)
        except ValueError as exc:
            raise click.ClickException(f"{pipeline}: transforms.{tr.name}: {exc}") from exc
    click.echo(
        f"{pipeline}: ok: pipeline {spec.pipeline}: {len(spec.sources)} source(s), "
        f"{len(spec.transforms)} transform(s), {len(spec.sinks)} sink(s)"
    )


@click.command("demo")
@click.option("--pipeline", "pipeline", default=str(REPO_ROOT / "pipelines" / "demo.yaml"), show_default=True)
@click.option(
    "--sink",
    "target",
    type=click.Choice(["files", "s3", "iceberg"]),
    default="files",
    show_default=True,
    help="Where the rows land: Parquet files, a local S3 store (SeaweedFS, started here), "
    "or an Iceberg table (SQLite catalog, local warehouse).",
)
def demo_cmd(pipeline: str, target: str) -> None:
    """Run the demo pipeline end to end (generator → transform → a sink) on the local
    broker, then count what landed. Re-running it adds nothing: exactly once."""
    from app.cli.demo_lake import lake_target

    spec = _load(pipeline)
    with lake_target(spec, target) as (spec, path, count):
        pipeline = path or pipeline
        hooks = PrometheusHooks(spec.pipeline)
        t0 = time.monotonic()
        code = run_spec(spec, stage="all", worker_id="demo", exit_when_done=True, metrics_port=None, hooks=hooks)
        elapsed = time.monotonic() - t0
        if code != 0:
            sys.exit(code)
        if count is not None:
            click.echo(count())
    _demo_report(spec, pipeline, hooks, elapsed)


def _demo_report(spec: PipelineSpec, pipeline: str, hooks: PrometheusHooks, elapsed: float) -> None:
    import pyarrow.parquet as pq

    for sink in spec.sinks:
        if sink.type != "file":
            continue
        out = Path(sink.resolved_path)
        files = sorted(p for p in out.rglob("*") if p.is_file() and "_staging" not in p.parts)
        ids: set[str] = set()
        rows = 0
        for f in files:
            if f.suffix == ".parquet":
                col = pq.read_table(f, columns=["_token_id"]).column(0).to_pylist()
            else:
                col = [json.loads(line)["_token_id"] for line in f.read_text().splitlines()]
            rows += len(col)
            ids.update(col)
        click.echo(f"sink {sink.name}: {rows:,} rows in {len(files)} part file(s) under {out}")
        click.echo(f"sink {sink.name}: {len(ids):,} distinct token ids ({rows - len(ids)} duplicates)")
    # rows this run committed (counters move only after a commit point), not the spec's total
    committed = sum(
        hooks.registry.get_sample_value(
            "ledgerflow_rows_out_total", {"pipeline": spec.pipeline, "stage": "source", "name": s.name}
        )
        or 0
        for s in spec.sources
    )
    for tr in spec.transforms:
        sample = f"transform {tr.name}: "
        counts = []
        for metric in hooks.registry.collect():
            if metric.name != "ledgerflow_rows_filtered":
                continue
            for smp in metric.samples:
                if smp.name.endswith("_total") and smp.labels.get("name") == tr.name and smp.value:
                    counts.append(f"{smp.value:,.0f} rows dropped by step {smp.labels['step']}")
        rows_in = hooks.registry.get_sample_value(
            "ledgerflow_rows_in_total", {"pipeline": spec.pipeline, "stage": "transform", "name": tr.name}
        )
        rows_out = hooks.registry.get_sample_value(
            "ledgerflow_rows_out_total", {"pipeline": spec.pipeline, "stage": "transform", "name": tr.name}
        )
        if rows_in and rows_out is not None:  # only what this run committed
            click.echo(
                f"{sample}{rows_in:,.0f} rows in, {rows_out:,.0f} rows out; {'; '.join(counts) or 'no rows dropped'}"
            )
    if committed:
        click.echo(
            f"demo finished in {elapsed:.1f}s: {committed:,.0f} source rows committed this run "
            f"({committed / max(elapsed, 1e-9):,.0f} rows/s end to end)"
        )
    else:
        click.echo(
            f"demo finished in {elapsed:.1f}s: every source row was already committed by an earlier run, "
            "so this run added nothing (exactly once)"
        )
    click.echo(f"journal: ledgerflow journal tail {pipeline}   state: ledgerflow inspect {pipeline}")
