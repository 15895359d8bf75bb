"""Kafka error classes as the commit seam needs them.

librdkafka tells three things about a failed transactional call; the seam acts on
each differently:

* ``RetriableKafkaError``: try the same call again (e.g. a commit timed out).
* ``AbortableKafkaError``: abort the transaction, rewind inputs to the last
  committed position, continue. Consumer-group fencing (a stale generation after
  a rebalance, KIP-447) arrives here.
* ``FatalKafkaError``: the producer is unusable; ``fenced`` is set when another
  instance with the same ``transactional.id`` took over. The worker must stop.
"""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException

_FENCED_CODES = {
    KafkaError._FENCED,
    KafkaError.PRODUCER_FENCED,
    KafkaError.INVALID_PRODUCER_EPOCH,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
}


class LedgerKafkaError(Exception):
    """Base: ``code`` and ``name`` are librdkafka's."""

    def __init__(self, operation: str, code: int, name: str, reason: str) -> None:
        super().__init__(f"{operation}: {name}: {reason}")
        self.operation = operation
        self.code = code
        self.name = name
        self.reason = reason


class RetriableKafkaError(LedgerKafkaError):
    pass


class AbortableKafkaError(LedgerKafkaError):
    pass


class FatalKafkaError(LedgerKafkaError):
    def __init__(self, operation: str, code: int, name: str, reason: str, fenced: bool) -> None:
        super().__init__(operation, code, name, reason)
        self.fenced = fenced


def classify(operation: str, exc: KafkaException) -> LedgerKafkaError:
    """Translate a confluent-kafka exception into one of the three classes."""
    err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
    if err is None:
        return FatalKafkaError(operation, -1, "UNKNOWN", str(exc), fenced=False)
    code, name, reason = err.code(), err.name(), err.str()
    if err.fatal() or code == KafkaError._FATAL or code in _FENCED_CODES:
        return FatalKafkaError(operation, code, name, reason, fenced=code in _FENCED_CODES)
    if err.txn_requires_abort():
        return AbortableKafkaError(operation, code, name, reason)
    if err.retriable():
        return RetriableKafkaError(operation, code, name, reason)
    # Non-retriable, non-fatal errors outside a transaction state machine: treat as
    # abortable so the batch is redone rather than half-applied.
    return AbortableKafkaError(operation, code, name, reason)
