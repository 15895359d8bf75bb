"""Pure logic of the local cluster, the fault proxy and replication defaults (no broker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.config.topics import TopicSpec, default_replication_factor, plan_topic_changes
from app.faults.proxy import Mode, parse_mode, parse_route
from app.kafka.local_broker import parse_proc_net_tcp
from app.kafka.local_cluster import ClusterLayout


def test_layout_ports_are_disjoint_and_proxied() -> None:
    lay = ClusterLayout(29092, 3, proxy=True)
    assert lay.bootstrap == "127.0.0.1:29092,127.0.0.1:29093,127.0.0.1:29094"
    assert [lay.broker_client_port(n) for n in lay.nodes] == [29192, 29193, 29194]
    assert lay.control_port == 29492
    ports = lay.all_ports()
    assert len(ports) == len(set(ports)) == 13
    props = lay.server_properties(2, Path("/d"))
    assert "advertised.listeners=CLIENT://127.0.0.1:29093,INTERNAL://127.0.0.1:29293" in props
    assert "listeners=CLIENT://127.0.0.1:29193,INTERNAL://127.0.0.1:29293,CONTROLLER://127.0.0.1:29393" in props
    assert "inter.broker.listener.name=INTERNAL" in props
    assert "controller.quorum.voters=1@127.0.0.1:29392,2@127.0.0.1:29393,3@127.0.0.1:29394" in props
    for line in (
        "transaction.state.log.replication.factor=3",
        "transaction.state.log.min.isr=2",
        "offsets.topic.replication.factor=3",
        "default.replication.factor=3",
        "min.insync.replicas=2",
    ):
        assert line in props.splitlines()
    direct = ClusterLayout(29092, 2, proxy=False)
    assert direct.broker_client_port(1) == direct.client_port(1) == 29092
    assert "min.insync.replicas=2" in direct.server_properties(1, Path("/d")).splitlines()
    assert "default.replication.factor=2" in direct.server_properties(1, Path("/d"))


def test_proxy_modes_and_routes() -> None:
    assert parse_mode("cut") == Mode("cut")
    assert parse_mode("slow:250") == Mode("slow", 250) and str(Mode("slow", 250)) == "slow:250"
    assert parse_mode(" heal ") == Mode("heal")
    for bad in ("slow", "slow:0", "slow:x", "cut:1", "drop"):
        with pytest.raises(ValueError):
            parse_mode(bad)
    assert parse_route("29092=29192") == (29092, 29192)
    with pytest.raises(ValueError, match="LISTEN_PORT=TARGET_PORT"):
        parse_route("29092:29192")


def test_proc_net_tcp_listeners() -> None:
    table = (
        "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
        "   0: 0100007F:4AC4 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1\n"
        "   1: 0100007F:4AC4 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4343 1\n"
        "   2: 0100007F:4AC5 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1\n"
    )
    assert parse_proc_net_tcp(table, 19140) == {4242}  # 0x4AC4; the ESTABLISHED row is not a listener
    assert parse_proc_net_tcp(table, 1) == set()


def test_replication_factor_defaults_to_min_3_brokers() -> None:
    assert [default_replication_factor(b) for b in (1, 2, 3, 5)] == [1, 2, 3, 3]
    specs = [TopicSpec(name="a", partitions=3), TopicSpec(name="b", partitions=1, configs={"min.insync.replicas": "1"})]
    plan = plan_topic_changes(specs, {}, brokers=3)
    assert [(s.name, s.replication_factor, s.configs.get("min.insync.replicas")) for s in plan.create] == [
        ("a", 3, "2"),
        ("b", 3, "1"),
    ]
    two = plan_topic_changes(specs, {}, brokers=2)
    assert [(s.replication_factor, s.configs.get("min.insync.replicas")) for s in two.create] == [(2, None), (2, "1")]
    one = plan_topic_changes(specs[:1], {}, brokers=1)
    assert one.create[0].replication_factor == 1 and "min.insync.replicas" not in one.create[0].configs


def test_rf_above_broker_count_is_refused_naming_topic_rf_and_brokers() -> None:
    plan = plan_topic_changes([TopicSpec(name="orders", partitions=3, replication_factor=3)], {}, brokers=2)
    assert plan.create == []
    assert plan.refused == [
        "topic orders: replication factor 3 needs at least 3 brokers, the cluster has 2 live; lower replication_factor "
        "in the spec (or leave it out: the default is min(3, brokers)) or start more brokers"
    ]
