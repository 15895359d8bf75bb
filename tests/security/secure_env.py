"""What the security tests do on the secured broker: users, ACLs, topics, pipelines."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.kafka.admin import Admin
from app.kafka.local_broker import LocalBroker
from app.security import scram
from app.security.acl_admin import apply_acls, remove_acls
from app.security.acl_plan import Acl
from tests.conftest import KafkaEnv

PASSWORD_ENV = "LF_TEST_SASL_PASSWORD"


@dataclass
class SecureKafka:
    broker: LocalBroker

    @property
    def bootstrap(self) -> str:
        """The SASL_SSL listener (host ``localhost``, as its certificate names it)."""
        return self.broker.secure_bootstrap

    @property
    def plain(self) -> KafkaEnv:
        """The plaintext listener (super user ANONYMOUS): for setting up and checking only."""
        return KafkaEnv(self.broker.bootstrap, "local", self.broker)

    @property
    def ca(self) -> Path:
        return self.broker.secure_dir / "ca.pem"

    def admin_settings(self) -> dict[str, Any]:
        return self.broker.admin_settings()

    def add_user(self, name: str, password: str | None = None) -> str:
        """Create a SCRAM user; its password (generated unless given)."""
        password = password or secrets.token_urlsafe(16)
        scram.upsert_user(self.bootstrap, self.admin_settings(), name, password)
        self.wait_authenticates(name, password)
        return password

    def wait_authenticates(self, name: str, password: str, timeout: float = 30.0) -> None:
        """A new credential reaches the broker's cache through the metadata log: wait for it."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                Admin(self.bootstrap, self.settings(name, password)).broker_count()
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def settings(self, user: str, password: str) -> dict[str, Any]:
        return scram.client_settings(user, password, self.ca)

    def grant(self, acls: list[Acl]) -> None:
        apply_acls(self.bootstrap, self.admin_settings(), acls)

    def revoke(self, acls: list[Acl]) -> int:
        return remove_acls(self.bootstrap, self.admin_settings(), acls)

    def create_topics(self, name: str, data_topics: list[str], partitions: int = 2) -> None:
        """The pipeline's data topics, journal (compacted) and DLQ, made by the operator
        (so ``run`` needs no CREATE)."""
        admin = Admin(self.broker.bootstrap)
        for t in data_topics:
            admin.create_topic(t, partitions, 1, {})
        admin.create_topic(f"{name}.journal", 1, 1, {"cleanup.policy": "compact"})
        admin.create_topic(f"{name}.dlq", 1, 1, {})


def secured_spec(
    tmp: Path,
    name: str,
    env: SecureKafka,
    user: str,
    *,
    rows: int = 2_000,
    bootstrap: str | None = None,
    rate_per_s: float | None = None,
    steps: str = "      - project: {rename: {amount: amount_cents}}\n",
) -> Path:
    """A source -> transform -> file sink pipeline on the SASL_SSL listener as ``user``,
    its password by reference (``$LF_TEST_SASL_PASSWORD``)."""
    spec = tmp / "pipeline.yaml"
    spec.write_text(
        f"""pipeline: {name}
kafka:
  bootstrap_servers: "{bootstrap or env.bootstrap}"
  config:
    security.protocol: SASL_SSL
    sasl.mechanism: SCRAM-SHA-512
    sasl.username: {user}
    ssl.ca.location: "{env.ca}"
    session.timeout.ms: 6000
    heartbeat.interval.ms: 1000
  secrets:
    sasl.password: {{env: {PASSWORD_ENV}}}
commit:
  interval_ms: 100
  max_rows: 500
  transaction_timeout_ms: 20000
sources:
  - name: gen
    type: generator
    topic: {name}.raw
    rows: {rows}
    seed: 11
{f"    rate_per_s: {rate_per_s}" + chr(10) if rate_per_s else ""}transforms:
  - name: shape
    input: {name}.raw
    output: {name}.clean
    steps:
{steps}sinks:
  - name: files
    type: file
    input: {name}.clean
    path: out
    format: ndjson
    part: {{max_rows: 1000, max_age_ms: 2000}}
"""
    )
    return spec


@dataclass
class Refused:
    """One pipeline run on the secured broker with something taken away."""

    name: str
    spec: Path
    out: Path
    acls: list[Acl]  # the full plan (what was granted is ``acls`` minus ``dropped``)
    dropped: list[Acl]
    password: str


def prepare(
    env: SecureKafka,
    tmp: Path,
    *,
    drop: Callable[[Acl], bool] = lambda a: False,
    bootstrap: str | None = None,
    rows: int = 2_000,
    rate_per_s: float | None = None,
    steps: str | None = None,
) -> Refused:
    """A user, the pipeline's topics and its planned ACLs except those ``drop`` selects."""
    from app.config.pipeline import load_pipeline
    from app.security.acl_plan import plan
    from tests.harness import uid

    name, user = f"sec{uid()}", f"app{uid()}"
    password = env.add_user(user)
    env.create_topics(name, [f"{name}.raw", f"{name}.clean"])
    spec = secured_spec(
        tmp,
        name,
        env,
        user,
        rows=rows,
        bootstrap=bootstrap,
        rate_per_s=rate_per_s,
        **({"steps": steps} if steps else {}),
    )
    acls = plan(load_pipeline(spec), f"User:{user}")
    dropped = [a for a in acls if drop(a)]
    env.grant([a for a in acls if a not in dropped])
    return Refused(name, spec, tmp / "out", acls, dropped, password)


def committed_count(env: SecureKafka, topic: str) -> int:
    """Committed records of ``topic`` (read_committed, over the plaintext listener)."""
    from app.kafka.readers import read_topic_to_end

    return len(read_topic_to_end(env.broker.bootstrap, topic))


def ledgerflow_errors(stderr: str) -> list[str]:
    """ledgerflow's own error lines (librdkafka's lines, logged under ledgerflow.kafka, excluded)."""
    return [
        ln
        for ln in stderr.splitlines()
        if (" ERROR " in ln and "ledgerflow.kafka:" not in ln) or ln.startswith("Error: ")
    ]
