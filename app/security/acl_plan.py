"""The exact ACLs a pipeline needs on a cluster that denies what no ACL allows.

Derived from the code that names things, never restated: topics and where each is
used from ``PipelineSpec.topic_uses`` (plus ``changelog_topic`` for state stores),
consumer groups from ``group_id``, transactional ids from ``transactional_id``.

Per stage (source, transform, sink), the principal gets:

* READ on each input topic and WRITE on each output topic (a transform's output,
  route destinations and late-row topic; a source's topic), and READ on every topic
  it writes (the DLQ too): the hanging-transaction check's DescribeProducers needs it;
* WRITE and READ on the journal (every stage writes its events and reads them back
  when it starts or heals) and WRITE on the DLQ;
* READ and WRITE on a stateful transform's changelog (restore and log);
* READ on its consumer group (transforms and sinks: joins and transactional offsets),
  and READ on the PREFIXED group ``THROWAWAY_GROUP_PREFIX`` of the assign-mode readers
  (journal, changelog restore), which never join or commit but whose coordinator
  librdkafka looks up;
* WRITE and DESCRIBE on its transactional-id prefix (PREFIXED: every worker id);
* CREATE on a topic only with ``create_topics`` (``run`` then creates the journal,
  DLQ and changelogs itself instead of finding them made by an operator).

READ and WRITE imply DESCRIBE in Kafka, so topics and groups need no DESCRIBE of
their own. One principal for the whole pipeline is the default; with
``per_stage`` each stage gets ``<principal>-<stage>-<name>``.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field

from app.config.pipeline import PipelineSpec
from app.journal.writer import Correlation
from app.kafka.clients import THROWAWAY_GROUP_PREFIX
from app.runtime.stage import group_id, transactional_id
from app.state.changelog import changelog_topic

_USE = re.compile(
    r"^(source|transform|sink) ([A-Za-z0-9_-]+) "
    r"\((topic|input|output|route|stateful\.aggregate\.late|stateful\.lookup_join\.table|interval_join\.right)\)$"
)
_WRITES = {"topic", "output", "route", "stateful.aggregate.late"}


@dataclass(frozen=True, order=True)
class Acl:
    """One ALLOW binding: principal, resource (type, name, literal or prefixed), operation."""

    principal: str
    resource: str  # topic | group | transactional-id
    name: str
    operation: str  # Read | Write | Describe | Create
    prefixed: bool = False
    why: str = field(default="", compare=False)

    @property
    def kind(self) -> str:
        """What removing it tests: e.g. 'topic Write', 'transactional-id Describe'."""
        return f"{self.resource} {self.operation}"


@dataclass(frozen=True)
class Stage:
    stage: str
    name: str
    reads: tuple[str, ...]
    writes: tuple[str, ...]
    group: str | None


def _stages(spec: PipelineSpec) -> list[Stage]:
    reads: dict[tuple[str, str], set[str]] = {}
    writes: dict[tuple[str, str], set[str]] = {}
    for topic, uses in spec.topic_uses().items():
        for where in uses:
            if where in ("the journal", "the DLQ"):
                continue
            m = _USE.match(where)
            if m is None:
                raise ValueError(f"acl plan: cannot tell who uses topic {topic} from {where!r}")
            key = (m.group(1), m.group(2))
            (writes if m.group(3) in _WRITES else reads).setdefault(key, set()).add(topic)
    out: list[Stage] = []
    for src in spec.sources:
        out.append(Stage("source", src.name, (), tuple(sorted(writes.get(("source", src.name), ()))), None))
    for tr in spec.transforms:
        key = ("transform", tr.name)
        extra = (changelog_topic(spec.pipeline, tr.store_name),) if tr.has_state else ()
        out.append(
            Stage(
                "transform",
                tr.name,
                tuple(sorted({*reads.get(key, ()), *extra})),
                tuple(sorted({*writes.get(key, ()), *extra})),
                group_id(spec.pipeline, "transform", tr.name),
            )
        )
    for sk in spec.sinks:
        key = ("sink", sk.name)
        out.append(
            Stage("sink", sk.name, tuple(sorted(reads.get(key, ()))), (), group_id(spec.pipeline, "sink", sk.name))
        )
    return out


def txn_prefix(pipeline: str, stage: str | None = None, name: str = "") -> str:
    """The transactional-id prefix of one stage (every worker id), or of the whole pipeline."""
    if stage is None:
        # the id of a nameless stage of the pipeline cut where the stage begins
        full = transactional_id(Correlation(pipeline, "\0", "", ""), "")
        return full[: full.index("\0")]
    return transactional_id(Correlation(pipeline, stage, "", ""), name).rstrip(".")


def plan(spec: PipelineSpec, principal: str, *, per_stage: bool = False, create_topics: bool = False) -> list[Acl]:
    """Every ACL the pipeline's ``run`` needs, sorted, without duplicates."""
    if not principal.startswith("User:"):
        principal = f"User:{principal}"
    acls: set[Acl] = set()
    stages = _stages(spec)
    for st in stages:
        who = f"{principal}-{st.stage}-{st.name}" if per_stage else principal
        label = f"{st.stage} {st.name}"
        for t in st.reads:
            acls.add(Acl(who, "topic", t, "Read", why=f"{label} reads it"))
        for t in st.writes:
            acls.add(Acl(who, "topic", t, "Write", why=f"{label} writes it"))
            acls.add(Acl(who, "topic", t, "Read", why=f"{label}'s hanging-transaction check describes its producers"))
        acls.add(
            Acl(who, "topic", spec.dlq, "Read", why=f"{label}'s hanging-transaction check describes its producers")
        )
        acls.add(Acl(who, "topic", spec.journal, "Write", why=f"{label} writes its journal events"))
        acls.add(Acl(who, "topic", spec.journal, "Read", why=f"{label} reads the journal on start and heal"))
        acls.add(Acl(who, "topic", spec.dlq, "Write", why=f"{label} dead-letters refused rows"))
        if st.group is not None:
            acls.add(Acl(who, "group", st.group, "Read", why=f"{label} joins and commits offsets in it"))
        acls.add(
            Acl(
                who,
                "group",
                THROWAWAY_GROUP_PREFIX,
                "Read",
                prefixed=True,
                why=f"{label} reads the journal with a reader that never joins",
            )
        )
        prefix = txn_prefix(spec.pipeline, st.stage, st.name) if per_stage else txn_prefix(spec.pipeline)
        for op in ("Write", "Describe"):
            acls.add(Acl(who, "transactional-id", prefix, op, prefixed=True, why=f"{label} commits transactions"))
        if create_topics:
            for t in {*st.writes, spec.journal, spec.dlq}:
                acls.add(Acl(who, "topic", t, "Create", why=f"run creates {t} when it is missing"))
    return sorted(acls)


_FLAG = {"topic": "--topic", "group": "--group", "transactional-id": "--transactional-id"}


def kafka_acls_commands(acls: Iterable[Acl], bootstrap: str, command_config: str) -> list[str]:
    """One ``kafka-acls --add`` command line per binding, ready to paste."""
    out = []
    for a in acls:
        argv = [
            "kafka-acls",
            "--bootstrap-server",
            bootstrap,
            "--command-config",
            command_config,
            "--add",
            "--allow-principal",
            a.principal,
            "--operation",
            a.operation,
            _FLAG[a.resource],
            a.name,
        ]
        if a.prefixed:
            argv += ["--resource-pattern-type", "prefixed"]
        out.append(shlex.join(argv))
    return out
