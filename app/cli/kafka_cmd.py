"""`ledgerflow kafka ...`: the local broker and Kafka's own operator tools."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import click

from app.kafka.local_broker import (
    DEFAULT_PORT,
    TOOLS,
    BrokerError,
    LocalBroker,
    answers_metadata,
    kafka_version,
    resolve_jars,
)


def _broker(data_dir: str | None, port: int | None) -> LocalBroker:
    d = Path(data_dir or os.environ.get("LEDGERFLOW_KAFKA_DATA", ".ledgerflow/kafka"))
    p = port or int(os.environ.get("LEDGERFLOW_KAFKA_PORT", DEFAULT_PORT))
    return LocalBroker(d, port=p)


_data_opt = click.option("--data-dir", default=None, help="Broker data dir [.ledgerflow/kafka].")
_port_opt = click.option("--port", type=int, default=None, help=f"Broker port [{DEFAULT_PORT}]; controller = port+1.")


@click.group("kafka")
def kafka_group() -> None:
    """Run a local single-node Apache Kafka broker (no Docker needed)."""


@kafka_group.command("resolve")
def resolve_cmd() -> None:
    """Resolve the Kafka jars from Maven Central into the cache (no-op when cached)."""
    try:
        libs = resolve_jars()
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"Apache Kafka {kafka_version()} jars: {libs}", err=True)


@kafka_group.command("up")
@_data_opt
@_port_opt
@click.option("--heap-mb", type=int, default=512, show_default=True)
def up_cmd(data_dir: str | None, port: int | None, heap_mb: int) -> None:
    """Start the broker (idempotent: a running broker is left alone)."""
    broker = _broker(data_dir, port)
    broker.heap_mb = heap_mb
    t0 = time.monotonic()
    try:
        state, started = broker.up()
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from exc
    if started:
        click.echo(
            f"started Apache Kafka {state.version} on {state.bootstrap} (pid {state.pid}) "
            f"in {time.monotonic() - t0:.1f}s; data {state.data_dir}; log {state.log_file}"
        )
    else:
        click.echo(f"already up: Apache Kafka {state.version} on {state.bootstrap} (pid {state.pid})")


@kafka_group.command("down")
@_data_opt
@_port_opt
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds before SIGKILL.")
def down_cmd(data_dir: str | None, port: int | None, timeout: float) -> None:
    """Stop the broker: SIGTERM, then SIGKILL after --timeout."""
    broker = _broker(data_dir, port)
    click.echo("stopped" if broker.down(timeout=timeout) else "not running")


@kafka_group.command("status")
@_data_opt
@_port_opt
def status_cmd(data_dir: str | None, port: int | None) -> None:
    """Print whether the broker runs and answers; exit 1 when it does not."""
    broker = _broker(data_dir, port)
    state = broker.state()
    if state is None:
        click.echo(f"not running (data dir {broker.data_dir})")
        sys.exit(1)
    ok = answers_metadata(state.bootstrap)
    click.echo(
        f"{'up' if ok else 'NOT ANSWERING'}: Apache Kafka {state.version} on {state.bootstrap} "
        f"pid {state.pid}, up {time.time() - state.started_at:.0f}s, log {state.log_file}"
    )
    sys.exit(0 if ok else 1)


@kafka_group.command("logs")
@_data_opt
@_port_opt
@click.option("-n", "--lines", type=int, default=50, show_default=True)
@click.option("-f", "--follow", is_flag=True)
def logs_cmd(data_dir: str | None, port: int | None, lines: int, follow: bool) -> None:
    """Show the broker log."""
    broker = _broker(data_dir, port)
    click.echo(broker.tail(lines))
    if follow:
        with open(broker.log_file, "rb") as fh:
            fh.seek(0, 2)
            while True:
                chunk = fh.read()
                if chunk:
                    sys.stdout.write(chunk.decode(errors="replace"))
                    sys.stdout.flush()
                else:
                    time.sleep(0.5)


@kafka_group.command(
    "tool",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
)
@click.argument("tool", type=click.Choice(sorted(TOOLS)))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def tool_cmd(tool: str, args: tuple[str, ...]) -> None:
    """Run a stock Kafka tool (kafka-topics, kafka-consumer-groups, kafka-transactions, ...)
    from the same jars. --bootstrap-server defaults to KAFKA_BOOTSTRAP_SERVERS or the
    local broker. Example: ledgerflow kafka tool consumer-groups --describe --all-groups"""
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker = _broker(None, None)
    try:
        cmd = broker.tool_command(tool, list(args), bootstrap=bootstrap)
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(subprocess.call(cmd))
