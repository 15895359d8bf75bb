"""The registry client of a stage: confluent-kafka's ``SchemaRegistryClient`` with a
finite timeout, errors sorted into what a stage does about them, and backoff.

* An unknown schema id or subject (HTTP 404) is ``SchemaNotFound``: the caller
  decides (an input record becomes a ``schema_unknown`` DLQ record).
* A registry that cannot be reached (connection refused or reset, a timeout, HTTP
  408/429/5xx) is waited out: the call is retried with exponential backoff (0.2 s
  doubling to 5 s) for up to ``max_wait_s``; then ``RegistryUnavailable`` stops the
  stage. Nothing of the open batch is committed, so no row is lost or dead-lettered.
* Anything else the registry refuses (401/403, an invalid schema, 409 on
  registration) is ``RegistryRefused`` / ``IncompatibleSchema``: the stage stops with
  the registry's own message.

Both stopping errors are ``SinkUnavailable``s: the supervisor and ``ledgerflow run``
report them as one line (the stage's external store is unusable), like an S3 store.
Credentials are resolved from the spec's references when the client is built and
are never part of a message (URLs are shown without user info).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from app.sinks.base import SinkUnavailable

if TYPE_CHECKING:  # the serde package costs ~0.3 s at import: only stages with a registry pay it
    from confluent_kafka.schema_registry import RegisteredSchema, Schema
    from confluent_kafka.schema_registry.error import SchemaRegistryError

log = logging.getLogger("ledgerflow.registry")
for _name in ("httpx", "httpx2"):  # one INFO line per request otherwise
    logging.getLogger(_name).setLevel(logging.WARNING)

T = TypeVar("T")
_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
_HTTP_MODULES = ("httpx", "httpx2", "httpcore", "httpcore2")


class RegistryUnavailable(SinkUnavailable):
    """The registry could not be reached for longer than the stage waits (names the URL)."""


class RegistryRefused(SinkUnavailable):
    """The registry answered with an error a retry cannot fix (auth, invalid schema)."""


class IncompatibleSchema(RegistryRefused):
    """Registration refused by the subject's compatibility rule (subject, latest version,
    compatibility level and the registry's message)."""


class SchemaNotFound(LookupError):
    """No schema with that id, or no such subject/version (HTTP 404)."""


def redact_url(url: str) -> str:
    """``url`` without user info (a password in a URL is never shown)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class RegistryConfig:
    """Resolved client settings (built from the spec's ``registry:`` block)."""

    url: str
    username: str | None = None
    password: str | None = None
    ca_location: str | None = None
    certificate_location: str | None = None
    key_location: str | None = None
    timeout_s: float = 10.0
    max_wait_s: float = 120.0
    cache_capacity: int = 1000

    def __repr__(self) -> str:  # never show the credentials
        return f"RegistryConfig(url={redact_url(self.url)!r}, timeout_s={self.timeout_s}, max_wait_s={self.max_wait_s})"

    def client_conf(self) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "url": self.url,
            "timeout": self.timeout_s,
            "cache.capacity": self.cache_capacity,
            "max.retries": 0,  # this module retries, with its own backoff and its own limit
        }
        if self.username is not None:
            conf["basic.auth.user.info"] = f"{self.username}:{self.password or ''}"
        if self.ca_location:
            conf["ssl.ca.location"] = self.ca_location
        if self.certificate_location:
            conf["ssl.certificate.location"] = self.certificate_location
        if self.key_location:
            conf["ssl.key.location"] = self.key_location
        return conf


def _registry_error() -> type[SchemaRegistryError]:
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    found: type[SchemaRegistryError] = SchemaRegistryError
    return found


def _transient(exc: Exception) -> bool:
    if isinstance(exc, _registry_error()):
        return exc.http_status_code in _TRANSIENT_STATUS or exc.http_status_code < 0
    # httpx(2) transport errors (connect refused/reset, read timeout), OSError below them
    return isinstance(exc, OSError) or type(exc).__module__.split(".")[0] in _HTTP_MODULES


def _describe(exc: Exception) -> str:
    if isinstance(exc, _registry_error()):
        return f"HTTP {exc.http_status_code} (error code {exc.error_code}): {exc.error_message}"
    return f"{type(exc).__name__}: {exc}"


class Registry:
    """One registry connection, shared by the codecs of a stage (thread-safe: the
    underlying client locks its caches; the stats below are best-effort counters)."""

    def __init__(self, cfg: RegistryConfig, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.cfg = cfg
        self.url = redact_url(cfg.url)
        from confluent_kafka.schema_registry import SchemaRegistryClient

        self.client = SchemaRegistryClient(cfg.client_conf())
        self._sleep = sleep
        self._lock = threading.Lock()
        self.waits = 0  # how many calls had to wait for an unreachable registry
        self.waited_s = 0.0

    # -- the retry loop -------------------------------------------------------------
    def call(self, what: str, fn: Callable[[], T], *, max_wait_s: float | None = None) -> T:
        """Run ``fn``; wait out an unreachable registry with backoff; map the errors."""
        budget = self.cfg.max_wait_s if max_wait_s is None else max_wait_s
        started = time.monotonic()
        delay = 0.2
        warned = False
        registry_error = _registry_error()
        while True:
            try:
                result = fn()
            except registry_error as exc:
                if exc.http_status_code == 404:
                    raise SchemaNotFound(f"{what}: {exc.error_message} (error code {exc.error_code})") from exc
                if not _transient(exc):
                    raise RegistryRefused(f"schema registry {self.url} refused {what}: {_describe(exc)}") from exc
                err: Exception = exc
            except Exception as exc:
                if not _transient(exc):
                    raise
                err = exc
            else:
                if warned:
                    waited = time.monotonic() - started
                    with self._lock:
                        self.waited_s += waited
                    log.warning("schema registry %s answers again (%s, after %.1f s)", self.url, what, waited)
                return result
            waited = time.monotonic() - started
            if waited >= budget:
                raise RegistryUnavailable(
                    f"schema registry {self.url} is not reachable ({what}): {_describe(err)}; "
                    f"gave up after {waited:.1f} s (registry.max_wait_s {budget:g})"
                ) from err
            if not warned:
                warned = True
                with self._lock:
                    self.waits += 1
                log.warning(
                    "schema registry %s unreachable (%s): %s; retrying with backoff for up to %.0f s",
                    self.url,
                    what,
                    _describe(err),
                    budget,
                )
            self._sleep(min(delay, max(0.05, budget - waited)))
            delay = min(delay * 2, 5.0)

    # -- lookups ----------------------------------------------------------------------
    def probe(self, max_wait_s: float | None = None) -> None:
        """Check at start that the registry answers (list the subjects)."""
        wait = self.cfg.timeout_s if max_wait_s is None else max_wait_s
        self.call("listing subjects", self.client.get_subjects, max_wait_s=wait)

    def schema(self, schema_id: int) -> Schema:
        return self.call(f"schema id {schema_id}", lambda: self.client.get_schema(schema_id))

    def subjects_of(self, schema_id: int) -> list[str]:
        """Subjects (with versions) a schema id is registered under, for messages.
        (``/schemas/ids/{id}/versions``: Apicurio 3.0 answers ``/subjects`` with [].)"""
        try:
            pairs = self.call(f"subjects of schema id {schema_id}", lambda: self.client.get_schema_versions(schema_id))
        except (SchemaNotFound, RegistryRefused):
            return []
        return sorted({f"{p.subject} v{p.version}" for p in pairs or []})

    def subjects(self) -> list[str]:
        return [str(s) for s in self.call("listing subjects", self.client.get_subjects)]

    def latest(self, subject: str) -> RegisteredSchema:
        return self.call(f"latest version of {subject}", lambda: self.client.get_latest_version(subject))

    def lookup(self, subject: str, schema: Schema) -> RegisteredSchema:
        return self.call(f"looking up the schema under {subject}", lambda: self.client.lookup_schema(subject, schema))

    def compatible(self, subject: str, schema: Schema) -> bool:
        return bool(
            self.call(f"compatibility check against {subject}", lambda: self.client.test_compatibility(subject, schema))
        )

    def compatibility_level(self, subject: str | None) -> str:
        """The level that applies to ``subject``: its own, else the global one. (Apicurio
        reports NONE for a subject without its own rule, and the ccompat global config
        only once set through that API: then its global COMPATIBILITY rule is read.)"""
        level = "NONE"
        targets: list[str | None] = [subject] if subject else []
        for target in [*targets, None]:

            def get(t: str | None = target) -> Any:
                return self.client.get_compatibility(t)

            try:
                level = str(self.call("compatibility level", get))
            except (SchemaNotFound, RegistryRefused):
                continue
            if level != "NONE":
                return level
        return self._apicurio_global_rule() or level

    def _apicurio_global_rule(self) -> str | None:
        base = self.cfg.url.rstrip("/")
        if not base.endswith("/apis/ccompat/v7"):
            return None
        rest = self.client._rest_client  # same auth and TLS; Apicurio's own API beside ccompat
        try:
            path = "../../registry/v3/admin/rules/COMPATIBILITY"
            answer = self.call("global compatibility rule", lambda: rest.get(path), max_wait_s=self.cfg.timeout_s)
        except (SchemaNotFound, RegistryRefused, RegistryUnavailable):
            return None
        return str(answer.get("config")) if isinstance(answer, dict) and answer.get("config") else None

    def register(self, subject: str, schema: Schema) -> int:
        """Register ``schema`` under ``subject`` (its id when already there). A change the
        subject's compatibility rule refuses raises ``IncompatibleSchema``."""
        try:
            return int(self.call(f"registering under {subject}", lambda: self.client.register_schema(subject, schema)))
        except RegistryRefused as exc:
            cause = exc.__cause__
            if isinstance(cause, _registry_error()) and cause.http_status_code == 409:
                raise self.incompatible(subject, cause.error_message) from cause
            raise

    def incompatible(self, subject: str, message: str) -> IncompatibleSchema:
        try:
            version: str = str(self.latest(subject).version)
        except (SchemaNotFound, RegistryRefused, RegistryUnavailable):
            version = "none"
        try:
            level = self.compatibility_level(subject)
        except (RegistryRefused, RegistryUnavailable):
            level = "unknown"
        return IncompatibleSchema(
            f"schema registry {self.url} refused a new schema for subject {subject}: not compatible with "
            f"latest version {version} under compatibility level {level}: {message}"
        )


def registry_config(settings: Any) -> RegistryConfig:
    """``RegistryConfig`` from a spec's ``registry:`` block (``app.config.pipeline.RegistrySettings``),
    credentials resolved from their references (a ``ValueError`` names the setting)."""
    user = pwd = None
    if settings.basic_auth is not None:
        user = settings.basic_auth.username.resolve("registry.basic_auth.username").get_secret_value()
        pwd = settings.basic_auth.password.resolve("registry.basic_auth.password").get_secret_value()
    tls = settings.tls
    return RegistryConfig(
        url=settings.resolved_url(),
        username=user,
        password=pwd,
        ca_location=tls.ca_location if tls else None,
        certificate_location=tls.certificate_location if tls else None,
        key_location=tls.key_location if tls else None,
        timeout_s=settings.timeout_s,
        max_wait_s=settings.max_wait_s,
        cache_capacity=settings.cache_capacity,
    )
