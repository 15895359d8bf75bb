"""`ledgerflow registry ...`: a local Apicurio Registry for the demo and the tests.

``resolve`` fetches the runnable distribution from Maven Central into the cache
(once); ``up`` starts it in the background on loopback (compatibility BACKWARD,
Confluent API at ``/apis/ccompat/v7``) and waits until it lists its subjects;
``down`` stops it; ``status`` says whether it runs and answers. ``--storage
kafkasql`` keeps subjects and ids in a topic of the local (or given) Kafka cluster,
so they survive a restart; ``mem`` forgets them.
"""

from __future__ import annotations

import os
from pathlib import Path

import click

from app.registry.server import (
    DEFAULT_PORT,
    RegistryServer,
    RegistryServerError,
    answers,
    registry_version,
    resolve_registry,
)


def _server(data_dir: str | None, port: int, storage: str = "mem", bootstrap: str | None = None) -> RegistryServer:
    path = Path(data_dir or os.environ.get("LEDGERFLOW_REGISTRY_DATA", ".ledgerflow/registry"))
    return RegistryServer(path, port=port, storage=storage, bootstrap=bootstrap)


_data_opt = click.option("--data-dir", default=None, help="State and log dir [.ledgerflow/registry].")
_port_opt = click.option(
    "--port", type=int, default=DEFAULT_PORT, show_default=True, envvar="LEDGERFLOW_REGISTRY_PORT", help="HTTP port."
)


@click.group("registry")
def registry_group() -> None:
    """Run a local schema registry (Apicurio Registry, Confluent-compatible API)."""


@registry_group.command("resolve")
def resolve_cmd() -> None:
    """Fetch Apicurio Registry from Maven Central into the cache (no-op when cached)."""
    try:
        click.echo(str(resolve_registry()))
    except RegistryServerError as exc:
        raise click.ClickException(str(exc)) from exc


@registry_group.command("up")
@_data_opt
@_port_opt
@click.option(
    "--storage",
    type=click.Choice(["mem", "kafkasql"]),
    default="kafkasql",
    show_default=True,
    help="kafkasql: subjects survive restarts (journal topic on the Kafka cluster); mem: forgotten on stop.",
)
@click.option("--bootstrap-servers", default=None, help="Kafka for kafkasql storage [the local broker].")
def up_cmd(data_dir: str | None, port: int, storage: str, bootstrap_servers: str | None) -> None:
    """Start the registry in the background; prints its URL."""
    bootstrap = None
    if storage == "kafkasql":
        from app.kafka.local_broker import BrokerError, ensure_bootstrap

        try:
            bootstrap = ensure_bootstrap(bootstrap_servers)
        except BrokerError as exc:
            raise click.ClickException(str(exc)) from exc
    server = _server(data_dir, port, storage, bootstrap)
    try:
        state, started = server.up()
    except RegistryServerError as exc:
        raise click.ClickException(str(exc)) from exc
    verb = "started" if started else "already running:"
    click.echo(f"registry {verb} Apicurio Registry {state.version} ({state.storage}) at {state.url}")


@registry_group.command("down")
@_data_opt
@_port_opt
def down_cmd(data_dir: str | None, port: int) -> None:
    """Stop the registry started by ``up``."""
    if _server(data_dir, port).down():
        click.echo("registry stopped")
    else:
        click.echo("no registry running from this data dir")


@registry_group.command("status")
@_data_opt
@_port_opt
def status_cmd(data_dir: str | None, port: int) -> None:
    """Whether the registry runs and answers (exit 1 when not)."""
    state = _server(data_dir, port).state()
    if state is None:
        click.echo(f"no registry running from this data dir (Apicurio Registry {registry_version()})")
        raise SystemExit(1)
    ok = answers(state.port)
    click.echo(f"pid {state.pid} {state.storage} {state.url} {'answers' if ok else 'NOT answering'}")
    if not ok:
        raise SystemExit(1)
