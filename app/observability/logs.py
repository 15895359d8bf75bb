"""Structured logs: JSON lines (one object per event) or plain text on a terminal.

Correlation ids (pipeline, stage, worker, run) are attached by the runners through
``extra`` and appear as fields. Diagnostic logs are never the replay contract: the
journal is.

Secrets are kept out by construction (settings are passed by reference, errors name
users, never passwords); as a second line, every secret value the process resolved
(``register_secret``) is replaced by ``***`` in every formatted line, tracebacks
included, at every level.
"""

from __future__ import annotations

import json
import logging
import threading
import time

_STD = set(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}
_bound = threading.local()
_secrets: set[str] = set()
MASK = "***"


def register_secret(value: str) -> None:
    """Mask ``value`` wherever a log line would show it (values under 4 characters are
    too common to mask without mangling logs; such a secret is not one)."""
    if len(value) >= 4:
        _secrets.add(value)


def redact(text: str) -> str:
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


class _Redacting(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def bind(**fields: str) -> None:
    """Attach correlation ids (pipeline, stage, worker_id, run_id) to every log record
    emitted by the current thread — the same ids the journal events carry."""
    _bound.fields = dict(fields)


class _CorrelationFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for k, v in getattr(_bound, "fields", {}).items():
            if not hasattr(record, k):
                setattr(record, k, v)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(self._format(record))

    def _format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for k, v in vars(record).items():
            if k not in _STD and not k.startswith("_"):
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(_Redacting("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_CorrelationFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # librdkafka's own chatter is useful only when debugging the client
    logging.getLogger("ledgerflow.kafka").setLevel(max(root.level, logging.WARNING))
