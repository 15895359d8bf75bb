"""Admin operations: topic state for topics-as-code, offsets for recovery and checks."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import (
    IsolationLevel,
    KafkaError,
    KafkaException,
    TopicPartition,
)
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    OffsetSpec,
)

from app.kafka.clients import BatchConsumer

log = logging.getLogger("ledgerflow.kafka")
_DYNAMIC_TOPIC_CONFIG = 1  # librdkafka ConfigSource: set on the topic itself


class Admin:
    """Synchronous wrapper over ``AdminClient``; every call waits for its result."""

    def __init__(self, bootstrap: str, extra: Mapping[str, Any] | None = None) -> None:
        self.bootstrap = bootstrap
        conf: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": log}
        conf.update(extra or {})
        self._extra = dict(extra or {})
        self._a = AdminClient(conf)
        self._readers: dict[tuple[str, bool], BatchConsumer] = {}

    def close(self) -> None:
        """Close the offset readers ``group_offsets`` keeps (the admin client needs no close)."""
        readers, self._readers = self._readers, {}
        for consumer in readers.values():
            consumer.close()

    # -- topics ----------------------------------------------------------------
    def broker_count(self) -> int:
        """Live (registered, unfenced) brokers the cluster reports in its metadata."""
        meta = self._a.list_topics(timeout=15)
        return max(1, len(meta.brokers))

    def describe_topics(self, names: Sequence[str]) -> dict[str, tuple[int, int]]:
        """name -> (partitions, replication factor) for the topics that exist."""
        meta = self._a.list_topics(timeout=15)
        out: dict[str, tuple[int, int]] = {}
        for name in names:
            t = meta.topics.get(name)
            if t is None or t.error is not None or not t.partitions:
                continue
            rf = len(next(iter(t.partitions.values())).replicas)
            out[name] = (len(t.partitions), rf)
        return out

    def non_default_configs(self, names: Sequence[str]) -> dict[str, dict[str, str]]:
        """Topic configs set explicitly on the topic (not broker/static defaults)."""
        if not names:
            return {}
        resources = [ConfigResource(ConfigResource.Type.TOPIC, n) for n in names]
        futures = self._a.describe_configs(resources, request_timeout=15)
        out: dict[str, dict[str, str]] = {}
        for res, fut in futures.items():
            entries = fut.result()
            out[res.name] = {k: str(v.value) for k, v in entries.items() if int(v.source) == _DYNAMIC_TOPIC_CONFIG}
        return out

    def create_topic(self, name: str, partitions: int, replication_factor: int, configs: Mapping[str, str]) -> None:
        fut = self._a.create_topics(
            [
                NewTopic(
                    name,
                    num_partitions=partitions,
                    replication_factor=replication_factor,
                    config=dict(configs),
                )
            ],
            request_timeout=30,
        )[name]
        try:
            fut.result()
        except KafkaException as exc:  # another worker created it first: same outcome
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise

    def alter_config(self, name: str, key: str, value: str) -> None:
        res = ConfigResource(
            ConfigResource.Type.TOPIC,
            name,
            incremental_configs=[ConfigEntry(key, value, incremental_operation=AlterConfigOpType.SET)],
        )
        for fut in self._a.incremental_alter_configs([res]).values():
            fut.result()

    def add_partitions(self, name: str, total: int) -> None:
        self._a.create_partitions([NewPartitions(name, total)])[name].result()

    def delete_topics(self, names: Sequence[str]) -> None:
        if names:
            for fut in self._a.delete_topics(list(names), operation_timeout=30).values():
                try:
                    fut.result()
                except KafkaException as exc:
                    log.warning("delete topic: %s", exc)

    # -- offsets ---------------------------------------------------------------
    def end_offsets(
        self, partitions: Sequence[tuple[str, int]], *, committed_only: bool = False
    ) -> dict[tuple[str, int], int]:
        """High watermark (or the last stable offset with ``committed_only``) per partition."""
        if not partitions:
            return {}
        level = IsolationLevel.READ_COMMITTED if committed_only else IsolationLevel.READ_UNCOMMITTED
        req = {TopicPartition(t, p): OffsetSpec.latest() for t, p in partitions}
        futs = self._a.list_offsets(req, isolation_level=level, request_timeout=15)
        return {(tp.topic, tp.partition): int(f.result().offset) for tp, f in futs.items()}

    def partitions_of(self, topic: str) -> list[int]:
        meta = self._a.list_topics(topic, timeout=15)
        t = meta.topics.get(topic)
        if t is None or t.error is not None:
            raise KeyError(f"topic {topic!r} does not exist")
        return sorted(t.partitions)

    def group_offsets(
        self, group: str, partitions: Sequence[tuple[str, int]], *, require_stable: bool = True, timeout: float = 15.0
    ) -> dict[tuple[str, int], int]:
        """Committed next-offset per partition of ``group`` (partitions without one omitted).

        With ``require_stable`` the broker holds back the answer while the group's offsets
        wait in an open transaction (retried until ``timeout``, then a ``LedgerKafkaError``);
        without it the last committed offset is returned, pending transactional offsets
        never included: what a poller of a continuously transactional group needs.

        Read with ``BatchConsumer.committed`` of a consumer of ``group`` that never
        subscribes (so never joins), not with ``AdminClient.list_consumer_group_offsets``:
        librdkafka's admin path dereferences a missing group handle when the coordinator
        answers NOT_COORDINATOR and kills the process with SIGSEGV (librdkafka issue 5040,
        seen here against Kafka 4.3 while a group was being created); the consumer path
        looks the coordinator up again and retries. The reader is kept for the next call
        on the same group (pollers call this several times a second)."""
        if not partitions:
            return {}
        reader = self._readers.get((group, require_stable))
        if reader is None:
            # librdkafka asks for stable offsets exactly when the consumer reads committed
            level = "read_committed" if require_stable else "read_uncommitted"
            reader = BatchConsumer(self.bootstrap, group, extra={**self._extra, "isolation.level": level})
            self._readers[(group, require_stable)] = reader
        return {tp: off for tp, off in reader.committed(partitions, timeout).items() if off is not None}
