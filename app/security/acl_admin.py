"""ACL plans applied to and removed from a cluster through the Admin API
(CreateAcls / DeleteAcls), as the principal whose settings are given (a super user
or one with ALTER on the cluster)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from app.security.acl_plan import Acl

_RESOURCE = {
    "topic": ResourceType.TOPIC,
    "group": ResourceType.GROUP,
    "transactional-id": ResourceType.TRANSACTIONAL_ID,
}
_OPERATION = {
    "Read": AclOperation.READ,
    "Write": AclOperation.WRITE,
    "Describe": AclOperation.DESCRIBE,
    "Create": AclOperation.CREATE,
}


class AclError(RuntimeError):
    """The cluster refused to add or remove a binding; names it and the broker's reason."""


def binding(acl: Acl) -> AclBinding:
    pattern = ResourcePatternType.PREFIXED if acl.prefixed else ResourcePatternType.LITERAL
    return AclBinding(
        _RESOURCE[acl.resource],
        acl.name,
        pattern,
        acl.principal,
        "*",
        _OPERATION[acl.operation],
        AclPermissionType.ALLOW,
    )


def _admin(bootstrap: str, settings: Mapping[str, Any]) -> AdminClient:
    return AdminClient({"bootstrap.servers": bootstrap, **settings})


def apply_acls(bootstrap: str, settings: Mapping[str, Any], acls: Sequence[Acl], timeout: float = 30.0) -> int:
    """Add every binding (adding one that exists is a no-op); returns how many were sent."""
    if not acls:
        return 0
    admin = _admin(bootstrap, settings)
    futures = admin.create_acls([binding(a) for a in acls], request_timeout=timeout)
    _wait(futures, acls, "add", timeout)
    return len(acls)


def remove_acls(bootstrap: str, settings: Mapping[str, Any], acls: Sequence[Acl], timeout: float = 30.0) -> int:
    """Delete exactly these bindings; returns how many bindings the cluster deleted."""
    if not acls:
        return 0
    admin = _admin(bootstrap, settings)
    filters = []
    for a in acls:
        b = binding(a)
        filters.append(
            AclBindingFilter(
                b.restype, b.name, b.resource_pattern_type, b.principal, b.host, b.operation, b.permission_type
            )
        )
    futures = admin.delete_acls(filters, request_timeout=timeout)
    results = _wait(futures, acls, "remove", timeout)
    return sum(len(r) for r in results)


def _wait(futures: Mapping[Any, Any], acls: Sequence[Acl], verb: str, timeout: float) -> list[Any]:
    by_key = {binding(a): a for a in acls}
    out = []
    for key, fut in futures.items():
        try:
            out.append(fut.result(timeout=timeout))
        except KafkaException as exc:
            acl = by_key.get(key)
            what = f"{acl.principal} {acl.operation} on {acl.resource} {acl.name}" if acl else str(key)
            raise AclError(f"cannot {verb} ACL {what}: {exc.args[0].str()}") from exc
    return out
