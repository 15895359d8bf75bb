"""`ledgerflow kafka ...`: the local broker or replicated cluster, faults, and Kafka's own tools.

``up`` starts one node (default) or ``--brokers N`` combined nodes behind the fault
proxy; ``down``, ``status`` and ``logs`` act on whichever the data dir holds (a
``cluster.json`` there means the cluster, every node); ``fault NODE ACTION`` hurts one
cluster node (kill, term, stop, cont, restart) or its client proxy (cut, blackhole,
slow:MS, heal).
"""

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
from app.kafka.local_cluster import DEFAULT_CLUSTER_HEAP_MB, LocalCluster


def _data(data_dir: str | None) -> Path:
    return Path(data_dir or os.environ.get("LEDGERFLOW_KAFKA_DATA", ".ledgerflow/kafka"))


def _broker(data_dir: str | None, port: int | None, *, secure: bool | None = None) -> LocalBroker:
    """The data dir's broker; ``secure`` None: secured when its data dir was formatted so."""
    p = port or int(os.environ.get("LEDGERFLOW_KAFKA_PORT", DEFAULT_PORT))
    d = _data(data_dir)
    if secure is None:
        secure = (d / "secure" / "formatted").exists()
    return LocalBroker(d, port=p, secure=secure)


def _cluster(data_dir: str | None) -> LocalCluster | None:
    """The cluster recorded in the data dir (``cluster.json``), if any."""
    return LocalCluster.from_state(_data(data_dir))


_data_opt = click.option("--data-dir", default=None, help="Broker data dir [.ledgerflow/kafka].")
_port_opt = click.option("--port", type=int, default=None, help=f"Broker port [{DEFAULT_PORT}]; controller = port+1.")


@click.group("kafka")
def kafka_group() -> None:
    """Run a local Apache Kafka broker or replicated cluster (no Docker needed)."""


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
@click.option("--brokers", type=int, default=1, show_default=True, help="Nodes; >1 starts a replicated cluster.")
@click.option(
    "--heap-mb", type=int, default=None, help=f"Heap per node [512; {DEFAULT_CLUSTER_HEAP_MB} per cluster node]."
)
@click.option("--no-proxy", is_flag=True, help="Cluster without the fault proxy in front of the client listeners.")
@click.option(
    "--secure",
    is_flag=True,
    help="Add a SASL_SSL listener on port+2: SCRAM-SHA-512 users, a throwaway CA, ACLs enforced (docs/security.md).",
)
def up_cmd(
    data_dir: str | None, port: int | None, brokers: int, heap_mb: int | None, no_proxy: bool, secure: bool
) -> None:
    """Start the broker, or a cluster with --brokers 3 (idempotent: a running one is left alone)."""
    t0 = time.monotonic()
    if secure and (brokers > 1 or _cluster(data_dir) is not None):
        raise click.ClickException("--secure is for the single-node broker (the cluster has no SASL_SSL listener yet)")
    if brokers > 1 or _cluster(data_dir) is not None:
        existing = _cluster(data_dir)
        if existing is not None and existing.running() and existing.layout.brokers != brokers:
            raise click.ClickException(
                f"a {existing.layout.brokers}-node cluster already runs from {existing.data_dir}; "
                "`ledgerflow kafka down` first to change --brokers"
            )
        cluster = LocalCluster(
            _data(data_dir),
            brokers=brokers,
            port=port or int(os.environ.get("LEDGERFLOW_KAFKA_PORT", DEFAULT_PORT)),
            heap_mb=heap_mb or DEFAULT_CLUSTER_HEAP_MB,
            proxy=not no_proxy,
        )
        try:
            started = cluster.up()
        except BrokerError as exc:
            raise click.ClickException(str(exc)) from exc
        verb = f"started in {time.monotonic() - t0:.1f}s" if started else "already up"
        click.echo(
            f"{verb}: Apache Kafka {cluster.version} cluster of {brokers} nodes on {cluster.bootstrap} "
            f"(proxy {'on' if cluster.layout.proxy else 'off'}); data {cluster.data_dir}"
        )
        return
    broker = _broker(data_dir, port, secure=secure)
    broker.heap_mb = heap_mb or broker.heap_mb
    try:
        state, started = broker.up()
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from exc
    if state.sasl_port:
        click.echo(
            f"secured listener: SASL_SSL {state.secure_bootstrap} (SCRAM-SHA-512); CA {broker.secure_dir / 'ca.pem'}; "
            f"super user admin, password in {broker.secure_dir / 'admin.password'}"
        )
    if started:
        click.echo(
            f"started Apache Kafka {state.version} on {state.bootstrap} (pid {state.pid}) "
            f"in {time.monotonic() - t0:.1f}s; data {state.data_dir}; log {state.log_file}"
        )
    elif Path(state.data_dir) != broker.data_dir:
        click.echo(
            f"already up: reusing the ledgerflow Kafka {state.version} on {state.bootstrap} "
            f"started from {state.data_dir} (pid {state.pid})"
        )
    else:
        click.echo(f"already up: Apache Kafka {state.version} on {state.bootstrap} (pid {state.pid})")


@kafka_group.command("down")
@_data_opt
@_port_opt
@click.option("--timeout", type=float, default=30.0, show_default=True, help="Seconds before SIGKILL.")
def down_cmd(data_dir: str | None, port: int | None, timeout: float) -> None:
    """Stop the broker, or every node of the cluster: SIGTERM, then SIGKILL after --timeout."""
    cluster = _cluster(data_dir)
    if cluster is not None:
        click.echo("stopped" if cluster.down(timeout=timeout) else "not running")
        return
    broker = _broker(data_dir, port)
    click.echo("stopped" if broker.down(timeout=timeout) else "not running")


@kafka_group.command("status")
@_data_opt
@_port_opt
def status_cmd(data_dir: str | None, port: int | None) -> None:
    """Print whether the broker (every cluster node) runs and answers; exit 1 when not all do."""
    cluster = _cluster(data_dir)
    if cluster is not None:
        info = cluster.describe()
        click.echo(f"cluster: Apache Kafka {info['version']} on {info['bootstrap']}, proxy pid {info['proxy_pid']}")
        for n in info["nodes"]:
            click.echo(
                f"node {n['node']}: {n['state']}{'' if n['live'] else ' (not live)'}, pid {n['pid']}, "
                f"port {n['client_port']}, proxy {n['proxy']}, log {n['log']}"
            )
        sys.exit(0 if all(n["live"] for n in info["nodes"]) else 1)
    broker = _broker(data_dir, port)
    state = broker.state()
    if state is None:
        click.echo(f"not running (data dir {broker.data_dir})")
        sys.exit(1)
    ok = answers_metadata(state.bootstrap)
    secured = f", SASL_SSL {state.secure_bootstrap}" if state.sasl_port else ""
    click.echo(
        f"{'up' if ok else 'NOT ANSWERING'}: Apache Kafka {state.version} on {state.bootstrap}{secured} "
        f"pid {state.pid}, up {time.time() - state.started_at:.0f}s, log {state.log_file}"
    )
    sys.exit(0 if ok else 1)


@kafka_group.command("logs")
@_data_opt
@_port_opt
@click.option("-n", "--lines", type=int, default=50, show_default=True)
@click.option("-f", "--follow", is_flag=True)
@click.option("--node", type=int, default=None, help="Cluster: one node's log (default: every node's).")
def logs_cmd(data_dir: str | None, port: int | None, lines: int, follow: bool, node: int | None) -> None:
    """Show the broker log (a cluster: each node's, or --node N; --follow needs one log)."""
    cluster = _cluster(data_dir)
    if cluster is not None:
        nodes = [node] if node else list(cluster.layout.nodes)
        for n in nodes:
            click.echo(f"==> node {n}: {cluster.log_file(n)} <==")
            click.echo(cluster.tail(n, lines))
        if not follow:
            return
        if len(nodes) != 1:
            raise click.ClickException("--follow needs --node N")
        log_file = cluster.log_file(nodes[0])
    else:
        broker = _broker(data_dir, port)
        click.echo(broker.tail(lines))
        log_file = broker.log_file
    if follow:
        with open(log_file, "rb") as fh:
            fh.seek(0, 2)
            while True:
                chunk = fh.read()
                if chunk:
                    sys.stdout.write(chunk.decode(errors="replace"))
                    sys.stdout.flush()
                else:
                    time.sleep(0.5)


@kafka_group.command("fault")
@_data_opt
@click.argument("node", type=int)
@click.argument("action")
def fault_cmd(data_dir: str | None, node: int, action: str) -> None:
    """Hurt cluster node NODE. ACTION: kill, term, stop, cont, restart (SIGKILL, SIGTERM,
    SIGSTOP, SIGCONT, start again on the same data dir) or a client-proxy mode: cut,
    blackhole, slow:MS (MS milliseconds added per chunk), heal."""
    cluster = _cluster(data_dir)
    if cluster is None:
        raise click.ClickException(f"no cluster in {_data(data_dir)}; start one with `ledgerflow kafka up --brokers 3`")
    try:
        click.echo(cluster.fault(node, action))
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from exc


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
    cluster = _cluster(None)
    if bootstrap is None and cluster is not None:
        bootstrap = cluster.bootstrap
    broker = _broker(None, None)
    try:
        cmd = broker.tool_command(tool, list(args), bootstrap=bootstrap)
    except BrokerError as exc:
        raise click.ClickException(str(exc)) from exc
    sys.exit(subprocess.call(cmd))


@kafka_group.group("user")
def user_group() -> None:
    """SCRAM-SHA-512 users of the secured broker (`kafka up --secure`), through the Admin API."""


@user_group.command("add")
@_data_opt
@_port_opt
@click.argument("name")
@click.option(
    "--password-env", default=None, help="Take the password from this environment variable (else one is generated)."
)
def user_add_cmd(data_dir: str | None, port: int | None, name: str, password_env: str | None) -> None:
    """Create user NAME (or set its password). The password is never printed: a generated
    one is stored in <data-dir>/secure/NAME.password (mode 0600)."""
    from app.security.scram import ScramError, ensure_password, password_file, upsert_user

    broker = _broker(data_dir, port, secure=True)
    if password_env is not None:
        password = os.environ.get(password_env)
        if not password:
            raise click.ClickException(f"--password-env: environment variable {password_env} is not set")
        where = f"${password_env}"
    else:
        password, where = ensure_password(broker.secure_dir, name), str(password_file(broker.secure_dir, name))
    try:
        upsert_user(broker.secure_bootstrap, broker.admin_settings(), name, password)
    except (ScramError, BrokerError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"user {name}: SCRAM-SHA-512 credential set (password from {where})")


@user_group.command("delete")
@_data_opt
@_port_opt
@click.argument("name")
def user_delete_cmd(data_dir: str | None, port: int | None, name: str) -> None:
    """Delete user NAME's credential; its sessions fail at their next re-authentication."""
    from app.security.scram import ScramError, delete_user

    broker = _broker(data_dir, port, secure=True)
    try:
        delete_user(broker.secure_bootstrap, broker.admin_settings(), name)
    except (ScramError, BrokerError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"user {name}: deleted")


@kafka_group.command("client-config")
@click.argument("pipeline", type=click.Path(exists=True, dir_okay=False))
def client_config_cmd(pipeline: str) -> None:
    """Print the librdkafka settings PIPELINE's clients get, one `key=value` a line; a
    secret shows where it comes from (`<secret from env VAR>`), never its value."""
    from app.cli.run_cmd import _load
    from app.config.pipeline import resolve_bootstrap

    spec = _load(pipeline)
    click.echo(f"bootstrap.servers={resolve_bootstrap(spec) or '<local broker>'}")
    for key, value in sorted(spec.kafka.config.items()):
        click.echo(f"{key}={value}")
    for key, ref in sorted(spec.kafka.secrets.items()):
        where = f"env {ref.env}" if ref.env is not None else f"file {ref.file}"
        click.echo(f"{key}=<secret from {where}>")


@kafka_group.command("certs")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--host", "hosts", multiple=True, default=["localhost"], show_default=True, help="Name(s) in the cert.")
def certs_cmd(directory: str, hosts: tuple[str, ...]) -> None:
    """Write a throwaway CA (ca.pem, ca.key) and a broker keystore for HOST (server.p12 and
    its password file) into DIRECTORY, unless they exist: for a broker ledgerflow does not
    start itself (deploy/docker-compose.secure.yml). Not for production."""
    from app.security.certs import ensure_tls

    tls = ensure_tls(Path(directory), list(hosts))
    click.echo(f"CA {tls.ca_cert}; keystore {tls.keystore} (password in {tls.keystore_password_file})")
