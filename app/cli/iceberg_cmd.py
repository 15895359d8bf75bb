"""`ledgerflow iceberg compact`: table maintenance for the pipeline's Iceberg sinks."""

from __future__ import annotations

from pathlib import Path

import click

from app.config.pipeline import IcebergSink, PipelineSpec, load_pipeline
from app.config.yamlsrc import SpecError


@click.group("iceberg")
def iceberg_group() -> None:
    """Maintain the Iceberg tables of a pipeline's iceberg sinks."""


def _sinks(spec: PipelineSpec, name: str | None) -> list[IcebergSink]:
    sinks = [s for s in spec.sinks if isinstance(s, IcebergSink)]
    if name is not None:
        sinks = [s for s in sinks if s.name == name]
        if not sinks:
            raise click.ClickException(f"pipeline {spec.pipeline} has no iceberg sink named {name!r}")
    if not sinks:
        raise click.ClickException(f"pipeline {spec.pipeline} has no iceberg sink")
    return sinks


@iceberg_group.command("compact")
@click.argument("pipeline", type=click.Path(exists=True, dir_okay=False))
@click.option("--sink", "sink_name", default=None, help="Only this sink [every iceberg sink of the pipeline].")
@click.option(
    "--target-mb",
    type=click.FloatRange(min=0, min_open=True),
    default=128.0,
    show_default=True,
    help="Size of the files written; files under half of it are rewritten.",
)
@click.option(
    "--expire-older-than-hours",
    type=click.FloatRange(min=0),
    default=None,
    help="Then expire snapshots older than this (metadata only; the current snapshot is kept).",
)
def compact_cmd(pipeline: str, sink_name: str | None, target_mb: float, expire_older_than_hours: float | None) -> None:
    """Rewrite each table's small data files into fewer larger ones in one snapshot that
    carries the sinks' offsets unchanged: rows stay identical, recovery reads the same
    offsets, and running sinks go on (their next commit re-reads the table and retries)."""
    from app.sinks.iceberg import IcebergUnavailable, compact, expire_cutoff, open_catalog

    try:
        spec = load_pipeline(Path(pipeline))
    except (SpecError, ValueError) as exc:
        raise click.ClickException(str(exc)) from exc
    for sk in _sinks(spec, sink_name):
        try:
            catalog, _where = open_catalog(sk)
            table = catalog.load_table(sk.table)
            done = compact(
                table, target_bytes=int(target_mb * (1 << 20)), expire_before=expire_cutoff(expire_older_than_hours)
            )
        except (IcebergUnavailable, ValueError, RuntimeError) as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(
            f"sink {sk.name}: table {sk.table}: {done.files_before} -> {done.files_after} data files, "
            f"{done.rows_rewritten} rows rewritten, {done.expired} snapshot(s) expired"
        )
