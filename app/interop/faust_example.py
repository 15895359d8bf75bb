"""Example: a faust-streaming agent between two ledgerflow stages.

It reads ledgerflow row tokens from one topic, adds a field to each payload and
writes the token - with the SAME ``token_id``, key, source, event time and the
``lf.schema`` header - to another token topic, where a ledgerflow transform or
sink picks it up like any other token topic::

    LEDGERFLOW_FAUST_INPUT=orders.clean LEDGERFLOW_FAUST_OUTPUT=orders.enriched \\
    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:19092 \\
        .venv/bin/python -m faust -A app.interop.faust_example worker -l warn --without-web

Environment:

* ``LEDGERFLOW_FAUST_INPUT``, ``LEDGERFLOW_FAUST_OUTPUT`` (required): token topics.
  Both must exist (create them with ``ledgerflow topics apply``); the example never
  creates topics.
* ``KAFKA_BOOTSTRAP_SERVERS`` (comma-separated, default ``127.0.0.1:19092``, the
  local broker of ``ledgerflow kafka up``).
* ``LEDGERFLOW_FAUST_APP_ID`` (default ``ledgerflow-faust-example``): the faust app
  id, which is also its consumer group.
* ``LEDGERFLOW_FAUST_FIELD`` / ``LEDGERFLOW_FAUST_VALUE`` (default ``enriched_by`` /
  ``faust``): the payload field the agent adds, and its value.
* faust's own variables still apply on top (``BROKER_SESSION_TIMEOUT``,
  ``CONSUMER_GROUP_INSTANCE_ID``, ``BROKER_COMMIT_INTERVAL``, ...).

Guarantee: **at-least-once** (faust's default ``processing_guarantee``). faust
commits its input offsets every ``broker_commit_interval`` (2.8 s) after the
records it produced for them are acknowledged; a worker that crashes between a
send and the next commit re-processes those inputs after a restart, so the output
topic can hold the same token (same ``token_id``) more than once. Nothing is lost.
A ledgerflow sink after this stage still stores each token exactly once when it is
idempotent by token id (the PostgreSQL sink upserts by ``token_id``); a file sink
needs a ``dedupe`` stateful transform in front of it. See ``docs/interop-faust.md``.

The input is read with ``aiokafka``, which needs ``cramjam`` (``aiokafka[lz4]``)
because ledgerflow compresses its records with lz4.
"""

from __future__ import annotations

import os

import faust

from app.interop.faust_codec import CODEC_NAME, register, token_headers, token_key
from app.tokens import Token

INPUT_TOPIC = os.environ.get("LEDGERFLOW_FAUST_INPUT", "")
OUTPUT_TOPIC = os.environ.get("LEDGERFLOW_FAUST_OUTPUT", "")
if not INPUT_TOPIC or not OUTPUT_TOPIC:
    raise RuntimeError("set LEDGERFLOW_FAUST_INPUT and LEDGERFLOW_FAUST_OUTPUT to the token topics to read and write")
BOOTSTRAP = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092")
APP_ID = os.environ.get("LEDGERFLOW_FAUST_APP_ID", "ledgerflow-faust-example")
FIELD = os.environ.get("LEDGERFLOW_FAUST_FIELD", "enriched_by")
VALUE = os.environ.get("LEDGERFLOW_FAUST_VALUE", "faust")

register()  # value_serializer="ledgerflow" below resolves through faust's codec registry

app = faust.App(
    APP_ID,
    broker=[f"kafka://{host.strip()}" for host in BOOTSTRAP.split(",") if host.strip()],
    processing_guarantee="at_least_once",
    consumer_auto_offset_reset="earliest",  # a new group starts at the beginning of the input
    topic_allow_declare=False,  # topics are ledgerflow's (topics as code), never created here
    topic_disable_leader=True,  # no <app id>-__assignor-__leader topic
    web_enabled=False,
    store="memory://",  # no tables: nothing to keep
)

source = app.topic(INPUT_TOPIC, key_serializer="raw", value_serializer=CODEC_NAME)
sink = app.topic(OUTPUT_TOPIC, key_serializer="raw", value_serializer=CODEC_NAME)


def enrich(token: Token) -> Token:
    """The transformation: one payload field added, ``lineage`` extended, every
    other envelope field - above all ``token_id`` - unchanged. Pure and
    deterministic, so a re-processed input yields the identical token."""
    return {
        **token,
        "payload": {**token["payload"], FIELD: VALUE},
        "lineage": [*token["lineage"], f"faust:{APP_ID}"],
    }


@app.agent(source)
async def enrich_tokens(stream: faust.StreamT[Token]) -> None:
    """Forward every input token, enriched, to the output topic under the key and
    header ledgerflow would have written."""
    headers = token_headers()
    async for token in stream:
        out = enrich(token)
        await sink.send(key=token_key(out), value=out, headers=headers)


if __name__ == "__main__":
    app.main()
