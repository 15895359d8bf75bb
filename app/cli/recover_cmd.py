"""`ledgerflow recover --abort-hanging [--dry-run] PIPELINE`: clear hanging transactions.

Looks at every partition the pipeline reads or writes (journal, DLQ, inputs, outputs,
changelogs, and the ``__consumer_offsets`` partitions of its groups), prints each
hanging transaction (Kafka's ``find-hanging`` rule, older than the pipeline's
``commit.transaction_timeout_ms`` unless ``--max-age-ms`` says otherwise), aborts the
pipeline's own ones unless ``--dry-run``, records each abort as a
``hanging_txn_aborted`` journal event, and exits 1 while a foreign one remains (its
abort command is printed), 0 otherwise.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from app.config.pipeline import PipelineSpec, load_pipeline, resolve_bootstrap
from app.config.yamlsrc import SpecError
from app.journal.writer import Correlation
from app.kafka.hanging import (
    OFFSETS_TOPIC,
    TP,
    ForeignHangingTransaction,
    HangingTxn,
    HealReport,
    classify,
    heal_hanging,
    offsets_partition,
    write_events,
)
from app.kafka.local_broker import ensure_bootstrap
from app.kafka.txn_tool import HangingToolError
from app.runtime.ownership import group_ids, owned_topics

log = logging.getLogger("ledgerflow.recover")


def pipeline_partitions(spec: PipelineSpec, bootstrap: str, extra: Mapping[str, Any]) -> list[TP]:
    """Every existing partition of the pipeline's topics, plus the offsets partitions
    of its groups (partition count of ``__consumer_offsets`` read from metadata)."""
    from confluent_kafka.admin import AdminClient

    topics = spec.all_topics() | owned_topics(spec)
    meta = AdminClient({"bootstrap.servers": bootstrap, **extra}).list_topics(timeout=15)
    parts: set[TP] = set()
    for name in topics:
        tm = meta.topics.get(name)
        if tm is not None and tm.error is None:
            parts.update((name, p) for p in tm.partitions)
    offsets = meta.topics.get(OFFSETS_TOPIC)
    if offsets is not None and offsets.error is None and offsets.partitions:
        n = len(offsets.partitions)
        parts.update((OFFSETS_TOPIC, offsets_partition(g, n)) for g in group_ids(spec))
    return sorted(parts)


def _line(txn: HangingTxn, ownership: str, action: str) -> str:
    who = txn.transactional_id or (f"group {txn.offsets_group}" if txn.offsets_group else "unknown producer")
    return (
        f"{txn.topic}/{txn.partition}\tproducer id {txn.producer_id}\tstart offset {txn.start_offset}\t"
        f"age {txn.age_ms / 1000:.0f}s\t{ownership} ({who})\t{action}"
    )


@click.command("recover")
@click.argument("pipeline", type=click.Path(exists=True, dir_okay=False))
@click.option("--abort-hanging", is_flag=True, help="Find hanging transactions; abort the pipeline's own.")
@click.option("--dry-run", is_flag=True, help="Only print what would be aborted.")
@click.option(
    "--max-age-ms",
    type=int,
    default=None,
    help="Only transactions idle longer than this [the pipeline's commit.transaction_timeout_ms].",
)
@click.option("--worker-id", default=None, help="Worker id in journal events [a random one].")
def recover_cmd(
    pipeline: str, abort_hanging: bool, dry_run: bool, max_age_ms: int | None, worker_id: str | None
) -> None:
    """Operator recovery. --abort-hanging: find hanging transactions on the pipeline's
    partitions, abort its own (journal event hanging_txn_aborted each), exit 1 while a
    foreign one remains and print the command that aborts it."""
    if not abort_hanging:
        raise click.UsageError("nothing to do: pass --abort-hanging")
    try:
        spec = load_pipeline(Path(pipeline))
        extra: dict[str, Any] = spec.kafka.client_config()
    except (SpecError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    bootstrap = ensure_bootstrap(resolve_bootstrap(spec))
    worker = worker_id or f"recover-{uuid.uuid4().hex[:8]}"
    corr = Correlation(spec.pipeline, "recover", worker, uuid.uuid4().hex[:12])
    owned = owned_topics(spec)
    parts = pipeline_partitions(spec, bootstrap, extra)
    age = spec.commit.transaction_timeout_ms if max_age_ms is None else max_age_ms
    foreign_error: ForeignHangingTransaction | None = None
    try:
        report = heal_hanging(
            bootstrap,
            pipeline=spec.pipeline,
            partitions=parts,
            owned_topics=owned,
            max_age_ms=age,
            corr=corr,
            extra=extra,
            dry_run=dry_run,
        )
    except ForeignHangingTransaction as exc:
        foreign_error, report = exc, exc.report
    except HangingToolError as exc:
        raise click.ClickException(str(exc)) from exc
    _print(report, spec.pipeline, owned)
    write_events(bootstrap, spec.journal, report.events, pipeline=spec.pipeline, worker_id=worker, extra=extra)
    click.echo(
        f"{len(parts)} partition(s) checked: {len(report.found)} hanging, "
        f"{len(report.aborted)} aborted, {len(report.foreign)} foreign"
        + (" (dry run: nothing aborted)" if dry_run else ""),
        err=True,
    )
    if foreign_error is not None:
        raise click.ClickException(str(foreign_error))


def _print(report: HealReport, pipeline: str, owned: set[str]) -> None:
    aborted = {t.key for t in report.aborted}
    resolved = {t.key for t in report.already_resolved}
    foreign = {t.key for t in report.foreign}
    for txn in report.found:
        ours = classify(txn, pipeline, owned)
        if ours == "foreign":
            action = "left alone: foreign" if txn.key in foreign else "gone on a second look"
        elif report.dry_run:
            action = "would abort (dry run)"
        else:
            action = "aborted" if txn.key in aborted else ("already resolved" if txn.key in resolved else "-")
        click.echo(_line(txn, ours, action))


def clear_hanging_on_start(spec: PipelineSpec, bootstrap: str, extra: Mapping[str, Any], worker_id: str) -> None:
    """Before a run starts, on every partition the pipeline reads or writes: abort every
    open transaction of the pipeline that no coordinator holds any more (journal event
    each). No age threshold for ours: a stage whose new producer wrote beside such a
    transaction would commit its records with its own (the same producer id). A foreign
    one older than ``commit.transaction_timeout_ms`` (Kafka's find-hanging rule) stops
    the run with the command that aborts it. A tool failure only warns: the stall path
    checks again."""
    corr = Correlation(spec.pipeline, "recover", worker_id, uuid.uuid4().hex[:12])
    try:
        report = heal_hanging(
            bootstrap,
            pipeline=spec.pipeline,
            partitions=pipeline_partitions(spec, bootstrap, extra),
            owned_topics=owned_topics(spec),
            max_age_ms=0,
            corr=corr,
            extra=extra,
            raise_on_foreign=False,
        )
    except HangingToolError as exc:
        log.warning("hanging-transaction check on start failed: %s", exc)
        return
    if report.events:
        write_events(bootstrap, spec.journal, report.events, pipeline=spec.pipeline, worker_id=worker_id, extra=extra)
    old = [t for t in report.foreign if t.age_ms > spec.commit.transaction_timeout_ms]
    if old:
        raise click.ClickException(str(ForeignHangingTransaction(bootstrap, old, report)))
