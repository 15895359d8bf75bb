"""A faust-streaming codec for ledgerflow row tokens.

``LedgerflowCodec`` turns the value of a record written by ledgerflow (the
schemaless Avro envelope of ``schemas/row_token.avsc``, see
``app.codecs.tokens.TokenCodec``) into the token dict (``app.tokens.Token``) and a
token dict back into exactly those bytes. ``register()`` makes it available to
faust under the name ``"ledgerflow"``::

    from app.interop.faust_codec import register, token_headers, token_key

    register()
    src = app.topic("orders.clean", key_serializer="raw", value_serializer="ledgerflow")

Guarantees of the codec (and only of the codec; delivery is faust's business):

* **Lossless, byte-exact.** ``loads(dumps(t)) == t`` for every valid token, and
  ``dumps`` produces the bytes ledgerflow itself writes (the same encoder), so a
  token that passes through faust unchanged is indistinguishable from one that
  never left ledgerflow. In particular the ``token_id`` is carried verbatim: it is
  what lets a ledgerflow sink after a faust stage deliver each row exactly once
  (see ``docs/interop-faust.md``).
* **Strict.** Bytes that are not a token raise ``CodecError`` (``reason_class``
  ``avro_decode`` or ``payload_json``, as in ledgerflow); faust reports that as a
  value decode error. A dict that is not a complete, well-typed token raises
  ``TypeError`` on ``dumps`` instead of writing a record ledgerflow would
  dead-letter.
* **Headers and keys are the caller's.** A codec only sees the value. Send
  ``token_headers()`` (the ``lf.schema`` fingerprint header) and ``token_key(t)``
  (the record key ledgerflow uses) with every record so the output looks like one
  ledgerflow wrote.

Importing this module imports faust; nothing else in ``app`` does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from faust.serializers import codecs

from app.codecs.tokens import CodecError, TokenCodec
from app.tokens import Token

__all__ = ["CODEC_NAME", "CodecError", "LedgerflowCodec", "register", "token_headers", "token_key"]

CODEC_NAME = "ledgerflow"

_TOKEN = TokenCodec()  # stateless after construction: one per process is enough

_STR_FIELDS = ("token_id", "source_id", "source_position")


def _as_token(obj: Any) -> Token:
    """Check that ``obj`` is a complete token and return it as one (payload and
    lineage copied into plain ``dict``/``list``)."""
    if not isinstance(obj, Mapping):
        raise TypeError(f"ledgerflow codec: expected a token dict, got {type(obj).__name__}")
    missing = [f for f in (*_STR_FIELDS, "key", "payload", "event_time_ms", "lineage") if f not in obj]
    if missing:
        raise TypeError(f"ledgerflow codec: token lacks field(s) {', '.join(missing)}")
    for f in _STR_FIELDS:
        if not isinstance(obj[f], str):
            raise TypeError(f"ledgerflow codec: token field {f!r} must be str, got {type(obj[f]).__name__}")
    key, payload, ts, lineage = obj["key"], obj["payload"], obj["event_time_ms"], obj["lineage"]
    if key is not None and not isinstance(key, str):
        raise TypeError(f"ledgerflow codec: token field 'key' must be str or None, got {type(key).__name__}")
    if not isinstance(payload, Mapping):
        raise TypeError(f"ledgerflow codec: token payload must be a dict, got {type(payload).__name__}")
    if ts is not None and (isinstance(ts, bool) or not isinstance(ts, int)):
        raise TypeError(f"ledgerflow codec: token field 'event_time_ms' must be int or None, got {type(ts).__name__}")
    if not isinstance(lineage, list | tuple) or not all(isinstance(s, str) for s in lineage):
        raise TypeError("ledgerflow codec: token field 'lineage' must be a list of str")
    return {
        "token_id": obj["token_id"],
        "key": key,
        "payload": dict(payload),
        "source_id": obj["source_id"],
        "source_position": obj["source_position"],
        "event_time_ms": ts,
        "lineage": list(lineage),
    }


class LedgerflowCodec(codecs.Codec):
    """faust codec: ledgerflow token record value <-> ``app.tokens.Token`` dict.

    ``_loads`` decodes with ledgerflow's own ``TokenCodec`` (raising ``CodecError``
    on anything that is not a token); ``_dumps`` validates the dict and encodes it
    with the same encoder ledgerflow's runners use, so ``token_id`` and every other
    envelope field survive the round trip unchanged."""

    def _loads(self, s: bytes) -> Token:
        return _TOKEN.decode(bytes(s))

    def _dumps(self, s: Any) -> bytes:
        token = _as_token(s)
        try:
            return _TOKEN.encode(token)
        except TypeError:  # orjson.JSONEncodeError: a payload value JSON cannot represent
            raise
        except ValueError as exc:  # e.g. UnicodeEncodeError: a lone surrogate in a string
            raise TypeError(f"ledgerflow codec: cannot encode token {token['token_id']!r}: {exc}") from exc


def register(name: str = CODEC_NAME) -> LedgerflowCodec:
    """Register the codec with faust under ``name`` (default ``"ledgerflow"``) so
    topics can say ``value_serializer="ledgerflow"``. Idempotent; returns the codec."""
    codec = LedgerflowCodec()
    codecs.register(name, codec)
    return codec


def token_headers() -> list[tuple[str, bytes]]:
    """Headers ledgerflow puts on every token record: the ``lf.schema`` fingerprint.
    Ledgerflow stages refuse (DLQ ``schema_mismatch``) a record naming another schema."""
    return [_TOKEN.header]


def token_key(token: Token) -> bytes:
    """The Kafka record key ledgerflow writes for ``token``: its key, else its id."""
    return (token["key"] or token["token_id"]).encode()
