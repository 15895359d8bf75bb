"""Operator views: `ledgerflow journal tail` and `ledgerflow inspect`."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click

from app.config.pipeline import PipelineSpec, load_pipeline, resolve_bootstrap
from app.config.yamlsrc import SpecError
from app.journal.events import decode_event
from app.journal.keys import sink_prefix
from app.journal.reader import load_journal
from app.kafka.admin import Admin
from app.kafka.clients import BatchConsumer
from app.kafka.local_broker import ensure_bootstrap
from app.kafka.readers import count_records
from app.runtime.stage import group_id
from app.sinks.files import FileSink


def _client_config(spec: PipelineSpec) -> dict[str, Any]:
    """The spec's client settings (SASL/TLS), secrets resolved; a missing secret names its reference."""
    try:
        return spec.kafka.client_config()
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group("journal")
def journal_group() -> None:
    """Read the pipeline's journal (committed durability events)."""


@journal_group.command("tail")
@click.argument("pipeline", type=click.Path(exists=True, dir_okay=False))
@click.option("--follow", "-f", is_flag=True, help="Keep printing new events.")
@click.option("--compacted", is_flag=True, help="Only the latest event per key.")
def tail_cmd(pipeline: str, follow: bool, compacted: bool) -> None:
    """Print decoded journal events, one JSON object per line."""
    try:
        spec = load_pipeline(Path(pipeline))
    except SpecError as exc:
        raise click.ClickException(str(exc)) from exc
    bootstrap = ensure_bootstrap(resolve_bootstrap(spec))
    extra = _client_config(spec)
    if compacted:
        for ev in load_journal(bootstrap, spec.journal, extra=extra).values():
            click.echo(json.dumps(asdict(ev), default=str))
        return
    consumer = BatchConsumer(bootstrap, f"ledgerflow-journal-tail-{time.time_ns()}", extra=extra)
    consumer.subscribe([spec.journal])
    idle = 0
    try:
        while follow or idle < 10:
            recs = consumer.consume(1000, 0.3)
            idle = 0 if recs else idle + 1
            for rec in recs:
                if rec.value is None:
                    click.echo(json.dumps({"key": (rec.key or b"").decode(), "tombstone": True}))
                    continue
                ev = decode_event(rec.value)
                click.echo(json.dumps({"offset": rec.offset, **asdict(ev)}, default=str))
    finally:
        consumer.close()


@click.command("inspect")
@click.argument("pipeline", type=click.Path(exists=True, dir_okay=False))
def inspect_cmd(pipeline: str) -> None:
    """Per sink partition: committed offset, end offset, last committed/finalized part,
    staging leftovers; DLQ size."""
    try:
        spec = load_pipeline(Path(pipeline))
    except SpecError as exc:
        raise click.ClickException(str(exc)) from exc
    bootstrap = ensure_bootstrap(resolve_bootstrap(spec))
    extra = _client_config(spec)
    admin = Admin(bootstrap, extra)
    events = load_journal(bootstrap, spec.journal, extra=extra)
    for tr in spec.transforms:
        _group_view(admin, group_id(spec.pipeline, "transform", tr.name), tr.input, f"transform {tr.name}", extra)
        if tr.interval_join is not None:  # its right topic's offsets are committed for the same group
            group = group_id(spec.pipeline, "transform", tr.name)
            _group_view(admin, group, tr.interval_join.right, f"transform {tr.name} (interval_join right)", extra)
    for sink in spec.sinks:
        _group_view(admin, group_id(spec.pipeline, "sink", sink.name), sink.input, f"sink {sink.name}", extra)
        if sink.type != "file":
            continue
        writer = FileSink(sink.name, Path(sink.resolved_path), sink.format)
        for p in admin.partitions_of(sink.input):
            parts = [
                ev
                for k, ev in events.items()
                if k.startswith(sink_prefix(sink.name, sink.input, p)) and ev.part is not None
            ]
            parts.sort(key=lambda ev: ev.part.first_offset if ev.part else 0)
            committed = [ev for ev in parts if ev.kind == "part_committed"]
            finalized = [ev for ev in parts if ev.kind == "part_finalized"]
            last = finalized[-1].part if finalized else None
            click.echo(
                f"  partition {p}: parts finalized {len(finalized)}, "
                f"committed-not-finalized {len(committed)}, "
                f"last finalized {last.first_offset if last else '-'}..{last.last_offset if last else '-'}, "
                f"staging leftovers {len(writer.leftover_staging(sink.input, p))}"
            )
    try:
        dlq_end = sum(admin.end_offsets([(spec.dlq, p) for p in admin.partitions_of(spec.dlq)]).values())
    except KeyError:
        dlq_end = 0
    click.echo(f"dlq {spec.dlq}: {dlq_end} offsets (records + transaction markers)")
    for key, ev in sorted(events.items()):
        if ev.kind == "source_checkpoint" and ev.checkpoint is not None:
            cp = ev.checkpoint
            click.echo(f"source checkpoint {key}: offset {cp.offset}, rows {cp.rows}")


def _group_view(admin: Admin, group: str, topic: str, label: str, extra: dict[str, Any]) -> None:
    try:
        parts = [(topic, p) for p in admin.partitions_of(topic)]
    except KeyError:
        click.echo(f"{label}: input topic {topic} does not exist")
        return
    ends = admin.end_offsets(parts, committed_only=True)
    # the last committed offsets: a live stage always has a transaction open
    committed = admin.group_offsets(group, parts, require_stable=False)
    # lag in records, not offsets: transaction markers occupy offsets too
    lags = count_records(admin.bootstrap, {tp: (committed.get(tp, 0), ends[tp]) for tp in parts}, extra=extra)
    click.echo(f"{label} (group {group}, input {topic}):")
    for tp in parts:
        c = committed.get(tp)
        click.echo(f"  partition {tp[1]}: committed {c if c is not None else '-'}, end {ends[tp]}, lag {lags[tp]}")
    click.echo(f"  total lag {sum(lags.values())}")


@click.group("dlq")
def dlq_group() -> None:
    """Inspect and replay the dead-letter queue."""


def _dlq_records(spec_path: str) -> tuple[object, str, list[tuple[int, int, dict[str, object]]]]:
    from app.codecs.dlq import decode_dlq
    from app.kafka.readers import read_topic_to_end

    try:
        spec = load_pipeline(Path(spec_path))
    except SpecError as exc:
        raise click.ClickException(str(exc)) from exc
    bootstrap = ensure_bootstrap(resolve_bootstrap(spec))
    recs = read_topic_to_end(bootstrap, spec.dlq)
    return spec, bootstrap, [(r.partition, r.offset, decode_dlq(r.value)) for r in recs if r.value]


@dlq_group.command("show")
@click.argument("pipeline", type=click.Path(exists=True, dir_okay=False))
@click.option("--limit", type=int, default=50, show_default=True)
@click.option("--reason", default=None, help="Only this error class.")
def dlq_show(pipeline: str, limit: int, reason: str | None) -> None:
    """Print DLQ records: error class, message, stage, origin, original value (truncated)."""
    _spec, _b, recs = _dlq_records(pipeline)
    shown = 0
    for part, off, d in recs:
        if reason and d["error_class"] != reason:
            continue
        value = bytes(d["original_value"])  # type: ignore[call-overload]
        click.echo(
            json.dumps(
                {
                    "dlq": f"{part}/{off}",
                    "error_class": d["error_class"],
                    "stage": d["stage"],
                    "origin": d["origin"],
                    "error": str(d["error_message"])[:300],
                    "value": value[:200].decode(errors="replace"),
                }
            )
        )
        shown += 1
        if shown >= limit:
            break
    click.echo(f"{shown} shown of {len(recs)} DLQ records", err=True)


@dlq_group.command("replay")
@click.argument("pipeline", type=click.Path(exists=True, dir_okay=False))
@click.option("--reason", default=None, help="Only this error class.")
@click.option("--to", "to_topic", default=None, help="Target topic (default: each record's topic of origin).")
@click.option("--dry-run", is_flag=True)
def dlq_replay(pipeline: str, reason: str | None, to_topic: str | None, dry_run: bool) -> None:
    """Re-produce original records from the DLQ, exactly once: each transaction also
    advances the replay's consumer group on the DLQ, so a re-run skips what was sent.

    Each selection (``--reason``, ``--to``) has its own group, so records one selection
    passes over (another error class, no topic of origin) stay there for another."""
    from app.codecs.dlq import decode_dlq
    from app.kafka.clients import TxnProducer

    try:
        spec = load_pipeline(Path(pipeline))
    except SpecError as exc:
        raise click.ClickException(str(exc)) from exc
    bootstrap = ensure_bootstrap(resolve_bootstrap(spec))
    group = f"ledgerflow.{spec.pipeline}.dlq-replay"
    if reason:
        group += f".reason.{reason}"
    if to_topic:
        group += f".to.{to_topic}"
    consumer = BatchConsumer(bootstrap, group)
    consumer.subscribe([spec.dlq])
    producer = None if dry_run else TxnProducer(bootstrap, f"{group}.{time.time_ns()}")
    if producer is not None:
        producer.init()
    sent = skipped = no_origin = idle = 0
    try:
        while idle < 10:
            recs = consumer.consume(1000, 0.5)
            if not recs:
                idle += 1
                continue
            idle = 0
            out: list[tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]] = []
            for rec in recs:
                d = decode_dlq(rec.value or b"")
                origin = d["origin"]
                target = to_topic or origin.get("topic")
                if reason and d["error_class"] != reason:
                    skipped += 1
                    continue
                if not target:
                    no_origin += 1
                    continue
                headers = [(h["key"], h["value"] or b"") for h in d["original_headers"]]
                out.append((target, d["original_key"], d["original_value"], headers))
            if dry_run:
                for target, _k, v, _h in out:
                    click.echo(f"would replay to {target}: {v[:120]!r}")
                sent += len(out)
                continue
            assert producer is not None
            producer.begin()
            for target, k, v, h in out:
                producer.produce(target, v, k, h or None)
            last: dict[tuple[str, int], int] = {}
            for rec in recs:
                last[(rec.topic, rec.partition)] = rec.offset + 1
            producer.send_offsets([(t, p, o) for (t, p), o in last.items()], consumer)
            producer.commit()
            sent += len(out)
    finally:
        consumer.close()
    click.echo(
        f"{'would replay' if dry_run else 'replayed'} {sent} record(s), skipped {skipped} of other error classes; "
        f"progress in consumer group {group}"
    )
    if no_origin:
        click.echo(
            f"{no_origin} record(s) have no topic of origin (source-stage DLQ records): "
            "replay them with --to <source topic>",
            err=True,
        )
