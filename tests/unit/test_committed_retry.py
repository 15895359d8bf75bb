"""Reading committed offsets while the group coordinator moves: the consumer asks
again instead of failing the stage (pure retry logic over librdkafka's errors; the
broker-fault suite shows it against a paused coordinator on a real cluster)."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from app.kafka.clients import BatchConsumer
from app.kafka.errors import AbortableKafkaError


class _Coordinator:
    """Answers ``committed`` with the given errors first, then with offset 7."""

    def __init__(self, *errors: int) -> None:
        self.errors = list(errors)
        self.calls = 0

    def committed(self, tps: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        self.calls += 1
        if self.errors:
            raise KafkaException(KafkaError(self.errors.pop(0), "coordinator moving"))
        return [TopicPartition(tp.topic, tp.partition, 7) for tp in tps]

    def close(self) -> None:
        pass


def _consumer(fake: Any) -> BatchConsumer:
    consumer = BatchConsumer("127.0.0.1:9", "g-retry")
    consumer._c.close()
    consumer._c = fake
    return consumer


def test_not_coordinator_is_asked_again_until_the_coordinator_answers() -> None:
    fake = _Coordinator(KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS)
    assert _consumer(fake).committed([("t", 0)]) == {("t", 0): 7}
    assert fake.calls == 3


def test_a_coordinator_that_never_comes_back_fails_after_the_window() -> None:
    fake = _Coordinator(*[KafkaError.NOT_COORDINATOR] * 100)
    with pytest.raises(AbortableKafkaError, match="NOT_COORDINATOR"):
        _consumer(fake).committed([("t", 0)], within_s=0.5)
    assert 2 <= fake.calls < 100


def test_other_errors_are_not_retried() -> None:
    fake = _Coordinator(KafkaError.UNKNOWN_TOPIC_OR_PART)
    with pytest.raises(AbortableKafkaError):
        _consumer(fake).committed([("t", 0)])
    assert fake.calls == 1
