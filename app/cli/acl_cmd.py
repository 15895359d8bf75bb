"""`ledgerflow acl plan PIPELINE`: the exact ACLs a pipeline needs, as `kafka-acls`
commands to paste, or applied through the Admin API with ``--apply``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from app.cli.run_cmd import _load
from app.config.pipeline import PipelineSpec


def _principal(spec: PipelineSpec, given: str | None) -> str:
    if given:
        return given
    user = spec.kafka.config.get("sasl.username")
    if isinstance(user, str) and user:
        return f"User:{user}"
    raise click.ClickException(
        f"pipeline {spec.pipeline}: no --principal and no kafka.config.sasl.username in the spec to take it from"
    )


def _read_properties(path: str) -> dict[str, Any]:
    """librdkafka settings from a ``key=value`` file (# comments); values stay strings."""
    out: dict[str, Any] = {}
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise click.ClickException(f"--admin-config: cannot read {path}: {exc.strerror}") from exc
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "=" not in line:
            raise click.ClickException(f"{path}:{n}: expected key=value")
        key, value = line.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _admin_link(bootstrap: str | None, admin_config: str | None) -> tuple[str, dict[str, Any]]:
    """Where and as whom to apply: ``--bootstrap`` + ``--admin-config``, else the super
    user of the local secured broker (``kafka up --secure``)."""
    if admin_config is not None:
        if not bootstrap:
            raise click.ClickException("--admin-config needs --bootstrap")
        return bootstrap, _read_properties(admin_config)
    from app.kafka.local_broker import BrokerError, LocalBroker

    data = Path(os.environ.get("LEDGERFLOW_KAFKA_DATA", ".ledgerflow/kafka"))
    broker = LocalBroker(data, secure=True)
    state = broker.state()
    if state is None or not state.sasl_port:
        raise click.ClickException(
            f"--apply: no --admin-config given and no secured local broker runs from {data} (`kafka up --secure`)"
        )
    try:
        return bootstrap or state.secure_bootstrap, broker.admin_settings()
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from exc


@click.group("acl")
def acl_group() -> None:
    """ACLs for a cluster that allows nothing no ACL allows (docs/security.md)."""


@acl_group.command("plan")
@click.argument("pipeline", type=click.Path(exists=True, dir_okay=False))
@click.option("--principal", default=None, help="User:NAME [the spec's kafka.config sasl.username].")
@click.option("--principal-per-stage", is_flag=True, help="One principal per stage: <principal>-<stage>-<name>.")
@click.option("--create-topics", is_flag=True, help="Also CREATE on the topics `run` creates when missing.")
@click.option("--apply", "apply_", is_flag=True, help="Apply through the Admin API instead of printing commands.")
@click.option("--bootstrap", default=None, help="Cluster for the printed commands and --apply.")
@click.option("--command-config", default="admin.properties", show_default=True, help="For the printed commands.")
@click.option("--admin-config", default=None, help="librdkafka key=value file of the principal that applies.")
def plan_cmd(
    pipeline: str,
    principal: str | None,
    principal_per_stage: bool,
    create_topics: bool,
    apply_: bool,
    bootstrap: str | None,
    command_config: str,
    admin_config: str | None,
) -> None:
    """Print (or --apply) the ACLs PIPELINE needs: READ inputs; WRITE outputs, journal and
    DLQ; WRITE+DESCRIBE on the transactional-id prefix; READ on each group."""
    from app.security.acl_plan import kafka_acls_commands, plan

    spec = _load(pipeline)
    try:
        acls = plan(spec, _principal(spec, principal), per_stage=principal_per_stage, create_topics=create_topics)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    if not apply_:
        target = bootstrap or spec.kafka.bootstrap_servers or "BOOTSTRAP"
        for acl, line in zip(acls, kafka_acls_commands(acls, target, command_config), strict=True):
            click.echo(f"# {acl.why}")
            click.echo(line)
        return
    from app.security.acl_admin import AclError, apply_acls

    where, settings = _admin_link(bootstrap, admin_config)
    try:
        n = apply_acls(where, settings, acls)
    except AclError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"applied {n} ACL(s) for pipeline {spec.pipeline} on {where}")
