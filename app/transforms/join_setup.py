"""Building a transform's joins from its spec: the lookup join's table checks at start and
its feed; the interval join's co-partitioning check."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from app.config.pipeline import IntervalJoinStep, LookupJoinOp, Transform
from app.kafka.admin import Admin
from app.state.table_feed import TableFeed, check_table_topic
from app.transforms.interval_join import IntervalJoin
from app.transforms.joins import LookupJoin


def lookup_join(
    tr: Transform,
    op: LookupJoinOp,
    bootstrap: str,
    extra: Mapping[str, Any] | None,
    state_dir: Path,
    pipeline: str,
    worker_id: str,
) -> LookupJoin:
    """The operator, after refusing a table topic that is not co-partitioned with the
    input (unless global) or may lose history (``TableTopicError``, naming it).
    Its stores live at ``<state_dir>/<pipeline>/<worker_id>/table.<transform>/``."""
    check_table_topic(Admin(bootstrap, extra), op.table, tr.input, op.history_retention_ms, op.global_table)
    feed = TableFeed(
        bootstrap=bootstrap,
        extra=extra,
        root=state_dir / pipeline / worker_id / f"table.{tr.name}",
        topic=op.table,
        time_field=op.table_time_field,
        retention_ms=op.history_retention_ms,
        global_table=op.global_table,
        pipeline=pipeline,
        stage=f"transform/{tr.name}",
    )
    return LookupJoin(
        feed,
        key_field=op.key_field,
        time_field=op.time_field,
        left=op.type == "left",
        fields=list(op.fields),
        prefix=op.prefix,
    )


class JoinTopicError(ValueError):
    """An interval join's right topic cannot be joined partition by partition."""


def interval_join(tr: Transform, step: IntervalJoinStep, admin: Admin) -> IntervalJoin:
    """The operator, after refusing a right topic whose partition count differs from the
    input's (partition p of one side only ever meets partition p of the other)."""
    have, want = len(admin.partitions_of(step.right)), len(admin.partitions_of(tr.input))
    if have != want:
        raise JoinTopicError(
            f"transform {tr.name}: interval_join right topic {step.right} has {have} partitions but the input "
            f"topic {tr.input} has {want}; the two sides must be co-partitioned (same count, keyed alike)"
        )
    return IntervalJoin(
        key_field=step.key,
        time_field=step.time,
        right_key_field=step.right_key_field,
        right_time_field=step.right_time_field,
        before_ms=step.before_ms,
        after_ms=step.after_ms,
        grace_ms=step.grace_ms,
        join_type=step.type,
        prefix=step.prefix,
        fields=list(step.fields),
    )
