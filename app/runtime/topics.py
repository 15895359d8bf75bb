"""Topics as code: compare ``topics/*.yaml`` with the broker and apply the difference.

``apply`` is idempotent: a second run finds nothing to do. Shrinking partitions
or changing the replication factor is refused (Kafka cannot do the first, and the
second needs a reassignment plan), with a message naming topic and values.
Specs without a replication factor get ``min(3, live brokers)`` at creation, and a
spec asking more replicas than there are live brokers is refused before anything is
created (topic, replication factor and broker count in the message).
"""

from __future__ import annotations

from collections.abc import Sequence

from app.config.topics import ActualTopic, TopicPlan, TopicSpec, plan_topic_changes
from app.kafka.admin import Admin


class TopicsRefused(RuntimeError):
    pass


def broker_count(admin: Admin) -> int:
    """Live (registered, unfenced) brokers the cluster reports in its metadata."""
    return admin.broker_count()


def plan(admin: Admin, specs: Sequence[TopicSpec]) -> TopicPlan:
    names = [s.name for s in specs]
    shapes = admin.describe_topics(names)
    configs = admin.non_default_configs(list(shapes))
    actual = {
        name: ActualTopic(name=name, partitions=parts, replication_factor=rf, configs=configs.get(name, {}))
        for name, (parts, rf) in shapes.items()
    }
    return plan_topic_changes(list(specs), actual, broker_count(admin))


def apply(admin: Admin, specs: Sequence[TopicSpec]) -> TopicPlan:
    """Create missing topics, add partitions, alter drifted configs; raise on refusals
    (after applying nothing)."""
    p = plan(admin, specs)
    if p.refused:
        raise TopicsRefused("\n".join(p.refused))
    for spec in p.create:
        rf = spec.replication_factor or 1  # resolved by the plan
        admin.create_topic(spec.name, spec.partitions, rf, dict(spec.configs))
    for topic, _old, new in p.add_partitions:
        admin.add_partitions(topic, new)
    for change in p.alter:
        admin.alter_config(change.topic, change.key, change.new)
    return p
