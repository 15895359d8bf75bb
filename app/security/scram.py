"""SCRAM-SHA-512 users of a secured broker, and the librdkafka settings a client of
the ``SASL_SSL`` listener needs.

The broker's own super user (``admin``) is created when its storage is formatted
(``kafka-storage format --add-scram``), so ACLs can be applied over the secured
listener before any other user exists; further users are created, re-keyed and
deleted through the Admin API (``AlterUserScramCredentials``). Passwords are
generated here, kept in mode-0600 files, and never printed or logged.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)

MECHANISM = "SCRAM-SHA-512"
ADMIN_USER = "admin"
ITERATIONS = 8192


class ScramError(RuntimeError):
    """Creating or deleting a SCRAM user failed; names the user and the broker's reason."""


def password_file(root: Path, user: str) -> Path:
    return root / f"{user}.password"


def ensure_password(root: Path, user: str) -> str:
    """The stored password of ``user`` under ``root``, generated (0600) on first use."""
    path = password_file(root, user)
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(24))
    return path.read_text().strip()


def format_argument(user: str, password: str) -> str:
    """The ``--add-scram`` value of ``kafka-storage format`` for one user."""
    return f"{MECHANISM}=[name={user},iterations={ITERATIONS},password={password}]"


def client_settings(user: str, password: str, ca_location: str | Path) -> dict[str, Any]:
    """librdkafka settings of a ``SASL_SSL`` + SCRAM-SHA-512 client that verifies the
    broker's certificate against ``ca_location`` and its hostname."""
    return {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": MECHANISM,
        "sasl.username": user,
        "sasl.password": password,
        "ssl.ca.location": str(ca_location),
        "ssl.endpoint.identification.algorithm": "https",
    }


def _admin(bootstrap: str, settings: Mapping[str, Any]) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, **settings})


def upsert_user(bootstrap: str, settings: Mapping[str, Any], user: str, password: str, timeout: float = 30.0) -> None:
    """Create ``user`` or give it a new password (takes effect for new connections)."""
    upsert = UserScramCredentialUpsertion(
        user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, ITERATIONS), password.encode()
    )
    _alter(bootstrap, settings, user, upsert, "create", timeout)


def delete_user(bootstrap: str, settings: Mapping[str, Any], user: str, timeout: float = 30.0) -> None:
    """Delete ``user``'s SCRAM credential: its next authentication fails."""
    _alter(
        bootstrap, settings, user, UserScramCredentialDeletion(user, ScramMechanism.SCRAM_SHA_512), "delete", timeout
    )


def _alter(bootstrap: str, settings: Mapping[str, Any], user: str, change: Any, verb: str, timeout: float) -> None:
    admin = _admin(bootstrap, settings)  # held until the futures resolve: a dropped client cancels them
    futures = admin.alter_user_scram_credentials([change], request_timeout=timeout)
    try:
        for fut in futures.values():
            fut.result(timeout=timeout)
    except KafkaException as exc:
        raise ScramError(f"cannot {verb} SCRAM user {user!r} on {bootstrap}: {exc.args[0].str()}") from exc
