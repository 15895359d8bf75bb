"""Builds the stage runners of a pipeline spec and runs them until done or stopped.

``--stage all`` runs every source, transform and sink of the spec in one process
(one thread each; librdkafka releases the GIL while it waits). Scale-out runs one
stage per process/container with ``--stage`` and a distinct ``--worker-id``.

Stopping: the first SIGTERM/SIGINT asks every runner to finish (or abandon) its
open batch within the grace period and exit 0; a second signal exits at once,
which is safe because nothing uncommitted is ever visible.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from app.codecs.decoders import Decoder, token_decoder
from app.codecs.external import external_decoder
from app.codecs.registry import RegistryEncoder, SchemaCache, registry_payload_decoder
from app.codecs.tokens import TokenCodec
from app.config.pipeline import (
    COLUMNAR_STEP_KINDS,
    REGISTRY_FORMATS,
    AggregateOp,
    DedupeOp,
    LookupJoinOp,
    PipelineSpec,
    PostgresSink,
    StatefulFunction,
    Transform,
    resolve_bootstrap,
)
from app.config.pipeline import IcebergSink as IcebergSinkSpec
from app.config.pipeline import S3Sink as S3SinkSpec
from app.config.topics import TopicSpec, load_topic_specs
from app.journal.writer import Correlation
from app.kafka.admin import Admin
from app.kafka.local_broker import ensure_bootstrap
from app.observability.hooks import Hooks, NullHooks
from app.observability.logs import bind, register_secret
from app.registry.client import Registry, registry_config
from app.runtime import topics as topics_mod
from app.runtime.batch import WorkerFenced
from app.runtime.healing import StageRefused, refusal
from app.runtime.ownership import owned_topics
from app.runtime.sink_runner import PartLimits, SinkRunner
from app.runtime.source_runner import SourceRunner
from app.runtime.stage import Progress, StageContext
from app.runtime.transform_runner import TransformRunner
from app.security.preflight import secured, wait_for_access
from app.sinks.base import Sink, SinkUnavailable
from app.sinks.files import FileSink
from app.sinks.s3 import build_s3_sink
from app.sources.base import Source
from app.sources.file_tail import FileTailSource
from app.sources.generator import GeneratorSource
from app.state.changelog import changelog_topic, ensure_changelog
from app.state.manager import StateManager
from app.transforms.chain import (
    StepFn,
    cast_step,
    compile_chain,
    filter_step,
    flat_map_step,
    load_callable,
    map_batch_step,
    map_step,
    project_step,
    route_step,
)
from app.transforms.join_setup import interval_join, lookup_join
from app.transforms.sessions import SessionAggregate
from app.transforms.stateful import Aggregate, Dedupe, StatefulOp, UserStateful

if TYPE_CHECKING:
    from app.transforms.columnar import ColumnarChain

log = logging.getLogger("ledgerflow.run")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_FENCED = 3
STAGES = ("source", "transform", "sink", "all")


class SpecSecretError(RuntimeError):
    """A secret the spec refers to cannot be resolved (names the setting and source)."""


class MissingTopics(RuntimeError):
    """Topics the spec uses do not exist on the cluster (names each and where it is used)."""


class Runner(Protocol):
    name: str
    progress: Progress

    def run(self) -> None: ...


@dataclass
class Worker:
    stage: str
    runner: Runner
    thread: threading.Thread | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


def default_worker_id() -> str:
    return os.environ.get("LEDGERFLOW_WORKER_ID") or socket.gethostname()


def ensure_topics(bootstrap: str, spec: PipelineSpec, extra: dict[str, Any]) -> None:
    """Apply the spec's topic files, then make sure the journal (compacted) and DLQ exist."""
    admin = Admin(bootstrap, extra)
    specs: list[TopicSpec] = load_topic_specs(list(spec.topic_files)) if spec.topic_files else []
    named = {s.name for s in specs}
    if spec.journal not in named:
        specs.append(
            TopicSpec(
                name=spec.journal,
                partitions=1,
                replication_factor=None,  # min(3, brokers), like every topic the spec leaves open
                configs={"cleanup.policy": "compact", "min.compaction.lag.ms": "86400000"},
            )
        )
    if spec.dlq not in named:
        specs.append(TopicSpec(name=spec.dlq, partitions=1, replication_factor=None, configs={}))
    existing = admin.describe_topics([s.name for s in specs])
    missing = [s for s in specs if s.name not in existing or s.name in named]
    topics_mod.apply(admin, missing)
    declared = {s.name for s in specs}  # exist now: found above or just created
    uses = {t: where for t, where in spec.topic_uses().items() if t not in declared}
    found = admin.describe_topics(sorted(uses)) if uses else {}
    absent = [f"{t} (used by {', '.join(uses[t])})" for t in sorted(uses) if t not in found]
    if absent:
        raise MissingTopics(
            "topic(s) not found on the cluster: "
            + "; ".join(absent)
            + ". Declare them in a topics file listed under 'topics:' (or run: ledgerflow topics apply FILE)."
        )


def _steps(transform: Any) -> list[StepFn]:
    """The stateless steps (an interval join, always first, is the transform's state)."""
    out: list[StepFn] = []
    for step in transform.steps:
        kind = step.kind
        if kind == "interval_join":
            continue
        if kind == "filter":
            out.append(filter_step(step.field, step.op, step.value))
        elif kind == "map":
            out.append(map_step(load_callable(step.function)))
        elif kind == "map_batch":
            out.append(map_batch_step(load_callable(step.function), step.function))
        elif kind == "flat_map":
            out.append(flat_map_step(load_callable(step.function)))
        elif kind == "project":
            out.append(project_step(step.fields, step.rename))
        elif kind == "route":
            out.append(route_step(step.field, dict(step.routes), step.default))
        elif kind == "cast":
            out.append(cast_step(dict(step.fields)))
        else:  # pragma: no cover - the spec model admits no other kinds
            raise ValueError(f"transform {transform.name}: unknown step kind {kind!r}")
    return out


def _columnar(tr: Transform, labels: list[str]) -> ColumnarChain | None:
    """The transform's columnar chain, if it can have one. pyarrow is imported only
    then: a stage without a columnar transform or a lake sink never loads it."""
    if not (
        tr.columnar
        and not tr.has_state
        and tr.output_format == "token"
        and tr.input_format in ("token", "json")
        and tr.steps
        and all(st.kind in COLUMNAR_STEP_KINDS for st in tr.steps)
    ):
        return None
    from app.transforms.columnar import compile_columnar

    return compile_columnar(tr.name, tr.steps, tr.output, tr.input_format, labels)


def _stateful_op(tr: Transform) -> StatefulOp:
    op = tr.stateful
    if isinstance(op, DedupeOp):
        return Dedupe(op.field, op.ttl_ms, op.time_field)
    if isinstance(op, AggregateOp):
        w = op.window
        if w is not None and w.type == "session":
            assert w.gap_ms is not None
            return SessionAggregate(
                tr.name,
                key_field=op.key_field,
                value_field=op.value_field,
                functions=list(op.functions),
                gap_ms=w.gap_ms,
                lateness_ms=w.allowed_lateness_ms,
                time_field=op.time_field,
                late_topic=None if op.late == "dlq" else op.late,
            )
        return Aggregate(
            tr.name,
            key_field=op.key_field,
            value_field=op.value_field,
            functions=list(op.functions),
            size_ms=w.size_ms if w else None,
            advance_ms=w.advance_ms if w else None,
            lateness_ms=w.allowed_lateness_ms if w else 0,
            time_field=op.time_field,
            late_topic=None if op.late == "dlq" else op.late,
        )
    assert isinstance(op, StatefulFunction)  # lookup_join is built by app.transforms.join_setup
    return UserStateful(load_callable(op.function))


def _decoder(fmt: str, schema: str | None, schemas: Callable[[], SchemaCache] | None = None) -> Decoder:
    if fmt == "token":
        return token_decoder(TokenCodec())
    if fmt in REGISTRY_FORMATS:  # Confluent-framed: writer schema by the id in each record
        if schemas is None:
            raise ValueError(f"input_format {fmt} needs a registry")
        return external_decoder(fmt, None, registry_payload_decoder(fmt, schemas()))
    return external_decoder(fmt, schema)


class _RegistryLink:
    """The process's one registry client and schema cache, built (and probed: a registry
    that does not answer at start is an error naming its URL) when a stage first needs it."""

    def __init__(self, spec: PipelineSpec) -> None:
        self.spec = spec
        self._registry: Registry | None = None
        self._cache: SchemaCache | None = None

    def registry(self) -> Registry:
        if self._registry is None:
            if self.spec.registry is None:
                raise ValueError("this pipeline uses a schema registry format but has no 'registry:' block")
            try:
                cfg = registry_config(self.spec.registry)
            except ValueError as exc:
                raise SpecSecretError(str(exc)) from exc
            reg = Registry(cfg)
            reg.probe()
            self._registry = reg
        return self._registry

    def schemas(self) -> SchemaCache:
        if self._cache is None:
            self._cache = SchemaCache(self.registry())
        return self._cache

    def encoder(self, tr: Transform) -> RegistryEncoder | None:
        if tr.output_format == "token":
            return None
        return RegistryEncoder(
            self.registry(),
            tr.output_format,
            schema_file=tr.output_schema,
            strategy=tr.subject_strategy,
            auto_register=tr.auto_register,
        )


def _source(src: Any) -> Source:
    if src.type == "generator":
        return GeneratorSource(
            src.name, rows=src.rows, seed=src.seed, key_field=src.key_field, rate_per_s=src.rate_per_s
        )
    return FileTailSource(
        src.name,
        glob=src.resolved_path,
        fmt=src.format,
        key_field=src.key_field,
        fingerprint_bytes=src.fingerprint_bytes,
    )


class Supervisor:
    """Owns the runner threads of one process and its stop/exit protocol."""

    def __init__(
        self,
        spec: PipelineSpec,
        *,
        stage: str = "all",
        worker_id: str | None = None,
        exit_when_done: bool = False,
        hooks: Hooks | None = None,
        grace_s: float = 30.0,
    ) -> None:
        if stage not in STAGES:
            raise ValueError(f"--stage must be one of {', '.join(STAGES)}, not {stage!r}")
        self.spec = spec
        self.stage = stage
        self.worker_id = worker_id or default_worker_id()
        self.run_id = uuid.uuid4().hex[:12]
        self.exit_when_done = exit_when_done
        self.hooks: Hooks = hooks or NullHooks()
        self.grace_s = grace_s
        self.stop = threading.Event()
        self.workers: list[Worker] = []
        self.bootstrap = ""

    def build(self) -> None:
        spec = self.spec
        self.bootstrap = ensure_bootstrap(resolve_bootstrap(spec))
        try:
            extra: dict[str, Any] = spec.kafka.client_config()
        except ValueError as exc:
            raise SpecSecretError(str(exc)) from exc
        for key in spec.kafka.secrets:
            if key in spec.kafka.SECRET_KEYS:  # a user name by reference stays readable: errors name it
                register_secret(str(extra[key]))
        if secured(extra):  # a refused principal is one clear error, not a metadata timeout
            wait_for_access(self.bootstrap, extra, float(os.environ.get("LEDGERFLOW_CONNECT_WAIT_S", "30")))
        ensure_topics(self.bootstrap, spec, extra)
        sources_done, transforms_done = threading.Event(), threading.Event()
        want = (lambda s: True) if self.stage == "all" else (lambda s: s == self.stage)

        owned = frozenset(owned_topics(spec))
        link = _RegistryLink(spec)

        def ctx(stage: str, upstream: threading.Event | None) -> StageContext:
            return StageContext(
                corr=Correlation(spec.pipeline, stage, self.worker_id, self.run_id),
                bootstrap=self.bootstrap,
                kafka_extra=extra,
                journal_topic=spec.journal,
                dlq_topic=spec.dlq,
                interval_s=spec.commit.interval_ms / 1000,
                max_rows=spec.commit.max_rows,
                transaction_timeout_ms=spec.commit.transaction_timeout_ms,
                stop=self.stop,
                exit_when_done=self.exit_when_done,
                upstream_done=upstream if self.stage == "all" else None,
                owned_topics=owned,
            )

        if want("source"):
            for src in spec.sources:
                self.workers.append(
                    Worker(
                        "source",
                        SourceRunner(
                            ctx("source", None),
                            name=src.name,
                            source=_source(src),
                            topic=src.topic,
                            hooks=self.hooks,
                        ),
                    )
                )
        if want("transform"):
            for tr in spec.transforms:
                labels = [f"{tr.name}.{i}:{st.kind}" for i, st in enumerate(tr.steps) if st.kind != "interval_join"]
                chain = compile_chain(tr.name, _steps(tr), tr.output, labels)
                columnar = _columnar(tr, labels)
                state: StateManager | None = None
                right: tuple[str, Decoder] | None = None
                if tr.has_state:
                    ij = tr.interval_join
                    op: StatefulOp
                    if ij is not None:  # refuses a right topic that is not co-partitioned
                        op = interval_join(tr, ij, Admin(self.bootstrap, extra))
                        right = (ij.right, _decoder(ij.right_format or tr.input_format, None, link.schemas))
                    elif isinstance(tr.stateful, LookupJoinOp):
                        op = lookup_join(
                            tr, tr.stateful, self.bootstrap, extra, Path(spec.state_dir), spec.pipeline, self.worker_id
                        )
                    else:
                        op = _stateful_op(tr)
                    cl_topic = changelog_topic(spec.pipeline, tr.store_name)
                    n_parts = ensure_changelog(Admin(self.bootstrap, extra), cl_topic, tr.input)
                    state = StateManager(
                        bootstrap=self.bootstrap,
                        extra=extra,
                        state_dir=Path(spec.state_dir),
                        pipeline=spec.pipeline,
                        worker_id=self.worker_id,
                        store_name=tr.store_name,
                        changelog_topic=cl_topic,
                        op=op,
                        restore_chunk=spec.restore_chunk,
                        standby_partitions=n_parts if tr.standby_replicas else 0,
                    )
                runner = TransformRunner(
                    ctx("transform", sources_done),
                    name=tr.name,
                    input_topic=tr.input,
                    chain=chain,
                    decoder=_decoder(tr.input_format, tr.input_schema, link.schemas),
                    hooks=self.hooks,
                    state=state,
                    encoder=link.encoder(tr),
                    columnar=columnar,
                    right=right,
                )
                self.workers.append(Worker("transform", runner))
        if want("sink"):
            for sk in spec.sinks:
                limits = PartLimits(
                    sk.part.max_rows,
                    sk.part.max_bytes,
                    sk.part.max_age_ms / 1000,
                    sk.idle_ms / 1000,
                    sk.part.max_open_rows,
                )
                sink: Sink
                if isinstance(sk, PostgresSink):
                    from app.sinks.pg_sink import PostgresSink as PgSink  # psycopg only where used
                    from app.sinks.postgres import Column, PostgresWriter

                    db = PostgresWriter(
                        sk.name,
                        sk.resolved_dsn(),
                        sk.table,
                        [Column(c.name, c.type, c.field) for c in sk.columns],
                        sk.key,
                        create_table=sk.create_table,
                        statement_timeout_ms=sk.statement_timeout_ms,
                        use_copy=sk.use_copy,
                    )
                    db.ensure_schema()
                    sink = PgSink(db)
                elif isinstance(sk, S3SinkSpec):
                    sink = build_s3_sink(sk)
                elif isinstance(sk, IcebergSinkSpec):
                    from app.sinks.iceberg import build_iceberg_sink

                    sink = build_iceberg_sink(sk)
                else:
                    sink = FileSink(sk.name, Path(sk.resolved_path), sk.format, max_row_bytes=sk.max_row_bytes)
                runner_s = SinkRunner(
                    ctx("sink", transforms_done),
                    name=sk.name,
                    input_topic=sk.input,
                    decoder=_decoder(sk.input_format, sk.input_schema, link.schemas),
                    sink=sink,
                    limits=limits,
                    hooks=self.hooks,
                )
                self.workers.append(Worker("sink", runner_s))
        self._sources_done, self._transforms_done = sources_done, transforms_done

    def _start(self, w: Worker) -> None:
        corr = {"pipeline": self.spec.pipeline, "stage": w.stage, "worker_id": self.worker_id, "run_id": self.run_id}

        def target() -> None:
            bind(**corr)
            try:
                w.runner.run()
            except BaseException as exc:
                w.error = exc
                self.stop.set()
            finally:
                w.done.set()
                self._update_upstream()

        w.thread = threading.Thread(target=target, name=f"{w.stage}-{w.runner.name}", daemon=True)
        w.thread.start()

    def _update_upstream(self) -> None:
        if all(w.done.is_set() for w in self.workers if w.stage == "source"):
            self._sources_done.set()
            if all(w.done.is_set() for w in self.workers if w.stage == "transform"):
                self._transforms_done.set()

    def run(self, on_tick: Callable[[Supervisor], None] | None = None) -> int:
        """Run until every runner returned (finite runs) or a signal/failure stops them."""
        if not self.workers:
            self.build()
        # Batches create and drop ~10 objects per row; the default gen-0 threshold (700)
        # makes the cyclic GC rescan live batches thousands of times per second.
        # Rows hold no reference cycles, so collect far less often, and freeze the
        # long-lived startup objects out of the scans.
        gc.collect()
        gc.freeze()
        gc.set_threshold(100_000, 50, 100)
        if not self.workers:
            log.error("pipeline %s has nothing to run for --stage %s", self.spec.pipeline, self.stage)
            return EXIT_ERROR
        signals = {"count": 0}

        def on_signal(signum: int, _frame: object) -> None:
            signals["count"] += 1
            if signals["count"] > 1:
                sys.stderr.write("ledgerflow: second signal, exiting now (nothing uncommitted is visible)\n")
                os._exit(130)
            log.info("signal %d: finishing open batches (grace %.0fs)", signum, self.grace_s)
            self.stop.set()

        in_main = threading.current_thread() is threading.main_thread()
        if in_main:
            old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        for w in self.workers:
            self._start(w)
        self._update_upstream()
        stop_deadline: float | None = None
        try:
            while not all(w.done.is_set() for w in self.workers):
                if on_tick is not None:
                    on_tick(self)
                if self.stop.is_set():
                    stop_deadline = stop_deadline or time.monotonic() + self.grace_s
                    if time.monotonic() > stop_deadline:
                        log.error("grace period over; exiting with batches still open (they abort)")
                        break
                time.sleep(0.2)
        finally:
            if in_main:
                for s, h in old.items():
                    signal.signal(s, h)
        if on_tick is not None:
            on_tick(self)
        return self._exit_code()

    def _exit_code(self) -> int:
        code = EXIT_OK
        for w in self.workers:
            if w.error is None:
                continue
            denied = refusal(w.error)
            if denied is not None and not isinstance(w.error, StageRefused):  # e.g. refused at the first init
                log.error("%s %s stopped: refused by the cluster: %s", w.stage, w.runner.name, denied.what)
                code = max(code, EXIT_ERROR) if code != EXIT_FENCED else code
            elif isinstance(w.error, WorkerFenced):
                log.error("%s %s stopped: %s", w.stage, w.runner.name, w.error)
                code = max(code, EXIT_FENCED)
            elif isinstance(w.error, (SinkUnavailable, StageRefused)):  # the message names what failed
                log.error("%s %s stopped: %s", w.stage, w.runner.name, w.error)
                code = max(code, EXIT_ERROR) if code != EXIT_FENCED else code
            else:
                log.error("%s %s failed: %r", w.stage, w.runner.name, w.error, exc_info=w.error)
                code = max(code, EXIT_ERROR) if code != EXIT_FENCED else code
        return code
