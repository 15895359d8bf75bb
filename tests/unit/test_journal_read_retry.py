"""A journal read while the broker is away (a bounce: metadata or partition leaders time
out) asks again instead of failing the stage; refusals and other errors are not retried
(pure retry logic over librdkafka's errors; the broker-fault suite's single-broker hard
bounces show it against a real broker)."""

from __future__ import annotations

from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from app.journal.writer import Correlation
from app.runtime import healing


class _Journal:
    """``load_journal`` that fails with the given error codes first, then answers."""

    def __init__(self, *errors: int) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self, *_a: Any, **_kw: Any) -> dict[str, Any]:
        self.calls += 1
        if self.errors:
            raise KafkaException(KafkaError(self.errors.pop(0), "Failed to query partition leaders"))
        return {"k": "event"}


def _read(monkeypatch: pytest.MonkeyPatch, journal: _Journal) -> Any:
    monkeypatch.setattr(healing, "load_journal", journal)
    monkeypatch.setattr(healing.time, "sleep", lambda _s: None)
    corr = Correlation(pipeline="p", stage="sink", worker_id="w", run_id="r")
    return healing.load_journal_healing(
        "127.0.0.1:9", "p.journal", "p.dlq", corr=corr, extra={}, max_age_ms=60_000, queue=lambda _e: None
    )


def test_a_broker_away_is_asked_again_until_the_journal_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    journal = _Journal(KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError.LEADER_NOT_AVAILABLE)
    assert _read(monkeypatch, journal) == {"k": "event"}
    assert journal.calls == 4


def test_a_broker_that_stays_away_fails_after_the_window(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(healing, "BROKER_AWAY_WAIT_S", 0.2)
    journal = _Journal(*[KafkaError._TIMED_OUT] * 1_000_000)
    with pytest.raises(KafkaException, match="partition leaders"):
        _read(monkeypatch, journal)
    assert journal.calls >= 2


@pytest.mark.parametrize("code", [KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError._AUTHENTICATION, KafkaError._FATAL])
def test_refusals_and_fatal_errors_are_not_retried(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    journal = _Journal(code)
    with pytest.raises(KafkaException):
        _read(monkeypatch, journal)
    assert journal.calls == 1
