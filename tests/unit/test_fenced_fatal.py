"""A produce after the producer was fenced fails with librdkafka's generic fatal error;
the producer's watch names it as the fencing librdkafka reported (pure logic)."""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, KafkaException

from app.kafka.clients import AccessWatch
from app.kafka.errors import FatalKafkaError, Identity

GENERIC = KafkaException(KafkaError(KafkaError._FATAL, "Local: Fatal error", fatal=True))


def test_a_generic_fatal_error_is_fatal_until_fencing_was_reported() -> None:
    watch = AccessWatch(Identity(), forward=False)
    error = watch.classify("produce", GENERIC)
    assert isinstance(error, FatalKafkaError) and not error.fenced


def test_the_fatal_error_callback_reporting_fencing_makes_it_fenced() -> None:
    watch = AccessWatch(Identity(), forward=False)
    watch.on_error(KafkaError(KafkaError._FENCED, "This instance has been fenced by a newer instance", fatal=True))
    error = watch.classify("produce", GENERIC)
    assert isinstance(error, FatalKafkaError) and error.fenced and "fenced by a newer instance" in str(error)


def test_the_fatal_log_line_reporting_fencing_makes_it_fenced() -> None:
    watch = AccessWatch(Identity(), forward=False)
    watch.log(logging.INFO, "%s", "This instance has been fenced by a newer instance")  # not the fatal line
    before = watch.classify("produce", GENERIC)
    assert isinstance(before, FatalKafkaError) and not before.fenced
    line = "[thrd:main]: Fatal error: Local: This instance has been fenced by a newer instance: Failed to add"
    watch.log(logging.CRITICAL, "%s %s", "FATAL", line)
    error = watch.classify("produce", GENERIC)
    assert isinstance(error, FatalKafkaError) and error.fenced
