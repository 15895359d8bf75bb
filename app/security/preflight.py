"""Before a secured pipeline builds anything: can its principal reach the cluster?

librdkafka reports a refused authentication (wrong password, unknown user) or TLS
handshake (untrusted CA, a certificate for another host) only through its error
callback, while the call itself just times out. ``wait_for_access`` asks for
metadata, retrying with backoff (1 s doubling to 10 s) for ``wait_s`` seconds in case
the cause passes (a credential being provisioned), and then raises ONE
``KafkaAccessError`` that names the principal, the listener and the refusal.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from app.kafka.clients import AccessWatch, principal_of
from app.kafka.errors import Identity, denial

log = logging.getLogger("ledgerflow.security")

DEFAULT_CONNECT_WAIT_S = 30.0


class KafkaAccessError(RuntimeError):
    """The cluster refused the pipeline's principal (or its TLS) for the whole wait."""


def secured(extra: Mapping[str, Any]) -> bool:
    """True when the client settings ask for SASL or TLS."""
    return str(extra.get("security.protocol", "plaintext")).lower() != "plaintext"


def wait_for_access(bootstrap: str, extra: Mapping[str, Any], wait_s: float = DEFAULT_CONNECT_WAIT_S) -> None:
    """Return once a metadata request succeeds; ``KafkaAccessError`` when the cluster
    kept refusing for ``wait_s``; any other failure is left to the callers' own handling."""
    watch = AccessWatch(Identity(principal_of(extra)), forward=False)
    conf: dict[str, Any] = {"bootstrap.servers": bootstrap, **extra, "logger": watch, "error_cb": watch.on_error}
    admin = AdminClient(conf)
    deadline = time.monotonic() + wait_s
    delay = 1.0
    warned = False
    while True:
        try:
            admin.list_topics(timeout=min(10.0, max(1.0, deadline - time.monotonic())))
            if warned:
                log.warning("kafka: %s accepted on %s", watch.who.principal, bootstrap)
            return
        except KafkaException as exc:
            admin.poll(0.5)  # error callbacks are served by poll: the refusal arrives here
            refused = watch.refused
            if refused is None:
                if time.monotonic() >= deadline:
                    return  # not a refusal: the stages' own error handling names it
                continue
            what = denial(refused.code(), refused.str(), watch.who)
            if time.monotonic() + delay >= deadline:
                raise KafkaAccessError(f"kafka {bootstrap}: {what} (refused for {wait_s:.0f}s)") from exc
            if not warned:
                log.warning("kafka %s: %s; retrying with backoff for up to %.0fs", bootstrap, what, wait_s)
                warned = True
            watch.refused = None
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
