"""Kafka error classes as the commit seam needs them.

librdkafka tells three things about a failed transactional call; the seam acts on
each differently:

* ``RetriableKafkaError``: try the same call again (e.g. a commit timed out).
* ``AbortableKafkaError``: abort the transaction, rewind inputs to the last
  committed position, continue. Consumer-group fencing (a stale generation after
  a rebalance, KIP-447) arrives here.
* ``FatalKafkaError``: the producer is unusable; ``fenced`` is set when another
  instance with the same ``transactional.id`` took over. The worker must stop.
* ``AccessDenied`` (a ``FatalKafkaError``, never fenced): the cluster refused this
  principal, by authentication (wrong password, unknown or deleted user, an untrusted
  CA, a certificate for another host) or authorization (a missing ACL). Its message
  names the principal and what was refused; it is never a reason to think another
  instance took over.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException

FENCED_CODES = {
    KafkaError._FENCED,
    KafkaError.PRODUCER_FENCED,
    KafkaError.INVALID_PRODUCER_EPOCH,
}
AUTHORIZATION_CODES = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED: "topic",
    KafkaError.GROUP_AUTHORIZATION_FAILED: "group",
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED: "transactional-id",
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: "cluster",
}
AUTHENTICATION_CODES = {KafkaError.SASL_AUTHENTICATION_FAILED, KafkaError._AUTHENTICATION, KafkaError._SSL}
ACCESS_CODES = {*AUTHORIZATION_CODES, *AUTHENTICATION_CODES}
# The group coordinator is moving or not reachable yet (a broker bounced, paused or
# lost leadership of the offsets partition): a read of committed offsets can be asked
# again once the client has found the new coordinator.
# A timeout is not one of them: a stable read times out while a transaction holding
# offsets of the group stays open, and the caller must see that.
COORDINATOR_CODES = {
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError._WAIT_COORD,
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


@dataclass(frozen=True)
class Identity:
    """Who a client is and what it works on, for naming what the cluster refused.
    Holds no secret: the user name, never the password."""

    principal: str = "User:ANONYMOUS"
    transactional_id: str | None = None
    group: str | None = None
    topics: tuple[str, ...] = ()  # topics of the failed operation, when the client knows them


class AccessDenied(FatalKafkaError):
    def __init__(self, operation: str, code: int, name: str, reason: str, what: str) -> None:
        super().__init__(operation, code, name, f"{what} ({reason})", fenced=False)
        self.what = what


def denial(code: int, reason: str, who: Identity) -> str:
    """What the cluster refused, in words that name the principal and the resource."""
    kind = AUTHORIZATION_CODES.get(code)
    if kind == "topic":
        topics = ", ".join(who.topics) if who.topics else "a topic this stage uses"
        if len(who.topics) > 1:
            topics = f"one of {topics}"
        return f"{who.principal} is not authorized on topic {topics}: check its READ/WRITE ACLs (ledgerflow acl plan)"
    if kind == "group":
        return f"{who.principal} is not authorized on consumer group {who.group}: it needs READ on the group"
    if kind == "transactional-id":
        return (
            f"{who.principal} is not authorized on transactional id {who.transactional_id}: "
            "it needs WRITE and DESCRIBE on the pipeline's transactional-id prefix"
        )
    if kind == "cluster":
        return f"{who.principal} is not authorized on the cluster for this operation"
    if code == KafkaError._SSL:
        return (
            f"TLS with the broker failed for {who.principal}: {reason}; check ssl.ca.location (the CA that signed "
            "the broker's certificate) and that bootstrap_servers names a host the certificate carries"
        )
    return f"authentication failed for {who.principal}: wrong password, or an unknown or deleted user"


def classify(operation: str, exc: KafkaException, who: Identity | None = None) -> LedgerKafkaError:
    """Translate a confluent-kafka exception into one of the classes above."""
    err = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
    if err is None:
        return FatalKafkaError(operation, -1, "UNKNOWN", str(exc), fenced=False)
    code, name, reason = err.code(), err.name(), err.str()
    if code in ACCESS_CODES:
        return AccessDenied(operation, code, name, reason, denial(code, reason, who or Identity()))
    if err.fatal() or code == KafkaError._FATAL or code in FENCED_CODES:
        return FatalKafkaError(operation, code, name, reason, fenced=code in FENCED_CODES)
    if err.txn_requires_abort():
        return AbortableKafkaError(operation, code, name, reason)
    if err.retriable():
        return RetriableKafkaError(operation, code, name, reason)
    # Non-retriable, non-fatal errors outside a transaction state machine: treat as
    # abortable so the batch is redone rather than half-applied.
    return AbortableKafkaError(operation, code, name, reason)
