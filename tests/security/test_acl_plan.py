"""`acl plan` as pure logic: what each stage of a spec is granted, derived from the
naming code (no broker)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from app.cli.main import cli
from app.config.pipeline import PipelineSpec, load_pipeline
from app.journal.writer import Correlation
from app.kafka.clients import THROWAWAY_GROUP_PREFIX
from app.runtime.stage import transactional_id
from app.security.acl_plan import Acl, kafka_acls_commands, plan, txn_prefix
from app.state.changelog import changelog_topic

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "pipelines" / "demo.yaml"


def _spec(tmp_path: Path, pipeline: str, transform: str, stateful: str) -> PipelineSpec:
    """A one-transform pipeline reading ``<pipeline>.in`` with the given stateful operator."""
    f = tmp_path / "p.yaml"
    f.write_text(
        f"pipeline: {pipeline}\ntransforms:\n  - name: {transform}\n    input: {pipeline}.in\n"
        f"    output: {pipeline}.out\n    stateful: {stateful}\n"
    )
    return load_pipeline(f)


def _set(acls: list[Acl]) -> set[tuple[str, str, str, str, bool]]:
    return {(a.principal, a.resource, a.name, a.operation, a.prefixed) for a in acls}


def test_the_demo_plan_is_exactly_what_its_stages_use() -> None:
    u = "User:demo"
    got = _set(plan(load_pipeline(DEMO), u))
    assert got == {
        (u, "topic", "demo.orders", "Write", False),
        (u, "topic", "demo.orders", "Read", False),
        (u, "topic", "demo.orders_shaped", "Write", False),
        (u, "topic", "demo.orders_shaped", "Read", False),
        (u, "topic", "demo.journal", "Write", False),
        (u, "topic", "demo.journal", "Read", False),
        (u, "topic", "demo.dlq", "Write", False),
        (u, "topic", "demo.dlq", "Read", False),
        (u, "group", "ledgerflow.demo.transform.shape", "Read", False),
        (u, "group", "ledgerflow.demo.sink.lake", "Read", False),
        (u, "group", THROWAWAY_GROUP_PREFIX, "Read", True),
        (u, "transactional-id", "ledgerflow.demo.", "Write", True),
        (u, "transactional-id", "ledgerflow.demo.", "Describe", True),
    }


def test_per_stage_principals_get_only_their_stage_and_prefixes_cover_every_worker() -> None:
    spec = load_pipeline(DEMO)
    acls = plan(spec, "demo", per_stage=True)
    sink = _set([a for a in acls if a.principal == "User:demo-sink-lake"])
    assert ("User:demo-sink-lake", "topic", "demo.orders_shaped", "Read", False) in sink
    assert not any(r == "topic" and op == "Write" and n == "demo.orders_shaped" for _p, r, n, op, _x in sink)
    assert not any(n == "demo.orders" for _p, _r, n, _o, _x in sink)
    prefix = txn_prefix("demo", "sink", "lake")
    assert ("User:demo-sink-lake", "transactional-id", prefix, "Write", True) in sink
    for worker in ("w1", "pod-7"):
        assert transactional_id(Correlation("demo", "sink", worker, "r"), "lake").startswith(prefix)
        assert transactional_id(Correlation("demo", "transform", worker, "r"), "shape").startswith(txn_prefix("demo"))
    assert "ledgerflow.demo.source.orders".startswith(txn_prefix("demo", "source", "orders"))


def test_a_stateful_transform_gets_its_changelog_and_create_topics_adds_create(tmp_path: Path) -> None:
    spec = _spec(tmp_path, "st", "agg", "{aggregate: {functions: [count]}}")
    acls = _set(plan(spec, "User:s", create_topics=True))
    cl = changelog_topic("st", "agg")
    assert {("User:s", "topic", cl, "Read", False), ("User:s", "topic", cl, "Write", False)} <= acls
    assert {("User:s", "topic", t, "Create", False) for t in ("st.out", "st.journal", "st.dlq", cl)} <= acls
    assert not any(op == "Create" for *_r, op, _x in _set(plan(spec, "User:s")))


def test_the_commands_paste_into_kafka_acls() -> None:
    (line,) = kafka_acls_commands(
        [Acl("User:a", "transactional-id", "ledgerflow.p.", "Write", prefixed=True)], "kafka:9093", "admin.conf"
    )
    assert line == (
        "kafka-acls --bootstrap-server kafka:9093 --command-config admin.conf --add --allow-principal User:a "
        "--operation Write --transactional-id ledgerflow.p. --resource-pattern-type prefixed"
    )
    out = CliRunner().invoke(cli, ["acl", "plan", str(DEMO), "--principal", "User:demo", "--bootstrap", "k:9093"])
    assert out.exit_code == 0, out.output
    commands = [ln for ln in out.output.splitlines() if ln.startswith("kafka-acls ")]
    assert len(commands) == 13 and all("--bootstrap-server k:9093" in c for c in commands)
    missing = CliRunner().invoke(cli, ["acl", "plan", str(DEMO)])
    assert missing.exit_code == 1
    assert "pipeline demo: no --principal and no kafka.config.sasl.username" in missing.output


def test_a_lookup_join_reads_its_table_topic_and_never_writes_it(tmp_path: Path) -> None:
    acls = _set(plan(_spec(tmp_path, "lj", "enrich", "{lookup_join: {table: lj.customers, type: left}}"), "User:j"))
    assert ("User:j", "topic", "lj.customers", "Read", False) in acls
    assert not any(n == "lj.customers" and op != "Read" for _p, r, n, op, _x in acls if r == "topic")
