"""`ledgerflow topics diff | apply`: topics as code."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from app.config.topics import load_topic_specs
from app.config.yamlsrc import SpecError
from app.kafka.admin import Admin
from app.kafka.local_broker import BrokerError, ensure_bootstrap
from app.runtime import topics as topics_mod


def _setup(paths: tuple[str, ...], bootstrap: str | None) -> tuple[Admin, list]:  # type: ignore[type-arg]
    try:
        specs = load_topic_specs([Path(p) for p in (paths or ("topics",))])
    except SpecError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        admin = Admin(ensure_bootstrap(bootstrap))
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from exc
    return admin, specs


_paths = click.argument("paths", nargs=-1, type=click.Path(exists=True))
_bootstrap = click.option(
    "--bootstrap-server",
    "bootstrap",
    default=None,
    help="Default: KAFKA_BOOTSTRAP_SERVERS or the local broker.",
)


@click.group("topics")
def topics_group() -> None:
    """Topic specs in topics/*.yaml, applied idempotently."""


@topics_group.command("diff")
@_paths
@_bootstrap
def diff_cmd(paths: tuple[str, ...], bootstrap: str | None) -> None:
    """Print what `apply` would change (exit 0 when nothing, 2 when something)."""
    admin, specs = _setup(paths, bootstrap)
    plan = topics_mod.plan(admin, specs)
    click.echo(plan.render() if not plan.is_empty else "no changes")
    sys.exit(0 if plan.is_empty else 2)


@topics_group.command("apply")
@_paths
@_bootstrap
def apply_cmd(paths: tuple[str, ...], bootstrap: str | None) -> None:
    """Create missing topics, add partitions, fix config drift; refuse shrinking."""
    admin, specs = _setup(paths, bootstrap)
    try:
        plan = topics_mod.apply(admin, specs)
    except topics_mod.TopicsRefused as exc:
        raise click.ClickException(f"refused, nothing applied:\n{exc}") from exc
    click.echo(plan.render() if not plan.is_empty else "no changes")
