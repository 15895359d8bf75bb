"""`ledgerflow s3 ...`: the local S3 store (SeaweedFS) for the demo and the tests.

``resolve`` builds the ``weed`` binary into the cache (once, about 4 minutes);
``up`` starts ``weed mini`` in the background on loopback and waits until a put
succeeds; ``down`` stops it. The store keeps its data in the data dir, so a
restarted store still holds every object and pending upload.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import click

from app.lake.seaweed import DEFAULT_BASE_PORT, SeaweedError, SeaweedServer, weed_binary


def _data(data_dir: str | None) -> Path:
    return Path(data_dir or os.environ.get("LEDGERFLOW_S3_DATA", ".ledgerflow/s3"))


_data_opt = click.option("--data-dir", default=None, help="Store data dir [.ledgerflow/s3].")
_port_opt = click.option(
    "--port", type=int, default=DEFAULT_BASE_PORT, show_default=True, help="First of 10 ports; S3 = port+6."
)


@click.group("s3")
def s3_group() -> None:
    """Run a local S3-compatible store (SeaweedFS) for the lake sinks."""


@s3_group.command("resolve")
def resolve_cmd() -> None:
    """Build the SeaweedFS binary into the cache (no-op when cached)."""
    try:
        click.echo(str(weed_binary()))
    except SeaweedError as exc:
        raise click.ClickException(str(exc)) from exc


@s3_group.command("up")
@_data_opt
@_port_opt
@click.option("--bucket", "buckets", multiple=True, help="Create this bucket (repeatable).")
def up_cmd(data_dir: str | None, port: int, buckets: tuple[str, ...]) -> None:
    """Start the store in the background; prints its endpoint."""
    server = SeaweedServer(_data(data_dir).resolve(), port)
    try:
        server.start()
        for b in buckets:
            server.create_bucket(b)
    except SeaweedError as exc:
        server.stop()
        raise click.ClickException(str(exc)) from exc
    assert server.proc is not None
    (server.data_dir / "weed.pid").write_text(str(server.proc.pid))
    click.echo(f"S3 endpoint {server.endpoint} (path-style; keys in {server.data_dir / 's3-identities.json'})")


@s3_group.command("down")
@_data_opt
def down_cmd(data_dir: str | None) -> None:
    """Stop the store started by ``up``."""
    pid_file = _data(data_dir).resolve() / "weed.pid"
    if not pid_file.exists():
        click.echo("no store running from this data dir")
        return
    pid = int(pid_file.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
        for _ in range(100):
            os.kill(pid, 0)
            time.sleep(0.2)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pid_file.unlink()
    click.echo("store stopped")
