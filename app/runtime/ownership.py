"""Which topics and groups belong to a pipeline: the facts that decide whether a hanging
transaction with an unknown producer is the pipeline's own (``app.kafka.hanging``)."""

from __future__ import annotations

from collections.abc import Iterable

from app.config.pipeline import AggregateOp, PipelineSpec, RouteStep
from app.kafka.admin import Admin
from app.runtime.stage import group_id
from app.state.changelog import changelog_topic


def owned_topics(spec: PipelineSpec) -> set[str]:
    """Topics only this pipeline writes: journal, DLQ, its sources' topics, its
    transforms' outputs (route destinations and late-row topics included), changelogs."""
    out = {spec.journal, spec.dlq, *(s.topic for s in spec.sources)}
    for tr in spec.transforms:
        if tr.output:
            out.add(tr.output)
        for st in tr.steps:
            if isinstance(st, RouteStep):
                out.update([*st.routes.values(), *([st.default] if st.default else [])])
        if isinstance(tr.stateful, AggregateOp) and tr.stateful.late != "dlq":
            out.add(tr.stateful.late)
        if tr.has_state:
            out.add(changelog_topic(spec.pipeline, tr.store_name))
    return out


def group_ids(spec: PipelineSpec) -> list[str]:
    """Consumer groups of the pipeline's stages (and of `dlq replay` without filters)."""
    groups = [group_id(spec.pipeline, "transform", tr.name) for tr in spec.transforms]
    groups += [group_id(spec.pipeline, "sink", sk.name) for sk in spec.sinks]
    return [*groups, f"ledgerflow.{spec.pipeline}.dlq-replay"]


def write_partitions(admin: Admin, topics: Iterable[str], group: str | None = None) -> list[tuple[str, int]]:
    """Every partition of ``topics`` that exists, plus the ``__consumer_offsets``
    partition of ``group``: where a stage's transactions write."""
    from app.kafka.hanging import OFFSETS_TOPIC, offsets_partition

    names = sorted(set(topics))
    shapes = admin.describe_topics([*names, OFFSETS_TOPIC])
    out = [(t, p) for t in names if t in shapes for p in range(shapes[t][0])]
    if group is not None and OFFSETS_TOPIC in shapes:
        out.append((OFFSETS_TOPIC, offsets_partition(group, shapes[OFFSETS_TOPIC][0])))
    return out
