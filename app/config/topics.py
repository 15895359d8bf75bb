"""Topics as code: ``topics/*.yaml`` specs and the plan that brings a cluster to them.

Only configs named in a spec are compared; configs set on the broker but absent
from the spec are left alone. Shrinking partitions and changing the replication
factor are refused with a message naming topic and values.

``replication_factor`` left out of a spec means ``min(3, brokers)`` of the cluster
it is applied to (1 on a single broker, 3 on a three-node cluster), and a topic
created with RF >= 3 gets ``min.insync.replicas=2`` unless the spec sets it. Both
defaults apply when a topic is created only; an existing topic is compared on the
values its spec states. A spec asking more replicas than the cluster has brokers is
refused, naming topic, replication factor and broker count.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from app.config.yamlsrc import SpecError, load_model

_NAME = re.compile(r"^[a-zA-Z0-9._-]{1,249}$")


def _kafka_str(v: str | int | bool | float) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


class TopicSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    partitions: int = Field(ge=1)
    replication_factor: int | None = Field(default=None, ge=1)  # None: min(3, brokers)
    configs: dict[str, str] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v) or v in (".", ".."):
            raise ValueError(f"{v!r} is not a valid Kafka topic name ([a-zA-Z0-9._-], 1-249 chars)")
        return v

    @field_validator("configs", mode="before")
    @classmethod
    def _configs(cls, v: object) -> object:
        if isinstance(v, dict):
            return {str(k): _kafka_str(x) for k, x in v.items()}
        return v


class TopicsFile(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    topics: list[TopicSpec]


def load_topic_specs(paths: list[Path]) -> list[TopicSpec]:
    """Specs from files and directories (``*.yaml``); a name defined twice is an error."""
    files: list[Path] = []
    for p in paths:
        files.extend(sorted(p.glob("*.yaml")) if p.is_dir() else [p])
    seen: dict[str, Path] = {}
    out: list[TopicSpec] = []
    for f in files:
        for spec in load_model(f, TopicsFile).topics:
            if spec.name in seen:
                raise SpecError(f, 1, "topics", f"topic {spec.name!r} is also defined in {seen[spec.name]}")
            seen[spec.name] = f
            out.append(spec)
    return out


@dataclass(frozen=True)
class ActualTopic:
    name: str
    partitions: int
    replication_factor: int
    configs: dict[str, str]


@dataclass(frozen=True)
class ConfigChange:
    topic: str
    key: str
    old: str | None
    new: str


@dataclass
class TopicPlan:
    create: list[TopicSpec] = field(default_factory=list)
    alter: list[ConfigChange] = field(default_factory=list)
    add_partitions: list[tuple[str, int, int]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not (self.create or self.alter or self.add_partitions or self.refused)

    def render(self) -> str:
        lines = []
        for s in self.create:
            cfg = "".join(f", {k}={v}" for k, v in sorted(s.configs.items()))
            lines.append(f"+ topic {s.name} (partitions={s.partitions}, rf={s.replication_factor}{cfg})")
        for t, old, new in self.add_partitions:
            lines.append(f"~ topic {t}: partitions {old} -> {new}")
        for c in self.alter:
            lines.append(f"~ topic {c.topic}: {c.key} {c.old if c.old is not None else '(default)'} -> {c.new}")
        lines.extend(f"! refused: {r}" for r in self.refused)
        return "\n".join(lines)


def default_replication_factor(brokers: int) -> int:
    """The replication factor of a spec that names none: ``min(3, brokers)``."""
    return max(1, min(3, brokers))


def resolve_for_create(spec: TopicSpec, brokers: int) -> TopicSpec:
    """The spec as it will be created on a cluster of ``brokers``: the default replication
    factor filled in, and ``min.insync.replicas=2`` when RF >= 3 and the spec sets none."""
    rf = spec.replication_factor or default_replication_factor(brokers)
    configs = dict(spec.configs)
    if rf >= 3 and "min.insync.replicas" not in configs:
        configs["min.insync.replicas"] = "2"
    return spec.model_copy(update={"replication_factor": rf, "configs": configs})


def plan_topic_changes(desired: list[TopicSpec], actual: dict[str, ActualTopic], brokers: int = 1) -> TopicPlan:
    """What brings the cluster (``actual``, ``brokers`` live brokers) to ``desired``."""
    plan = TopicPlan()
    for spec in desired:
        cur = actual.get(spec.name)
        if cur is None:
            want = resolve_for_create(spec, brokers)
            if want.replication_factor is not None and want.replication_factor > brokers:
                plan.refused.append(
                    f"topic {spec.name}: replication factor {want.replication_factor} needs at least "
                    f"{want.replication_factor} brokers, the cluster has {brokers} live; lower replication_factor "
                    "in the spec (or leave it out: the default is min(3, brokers)) or start more brokers"
                )
            else:
                plan.create.append(want)
            continue
        if spec.partitions < cur.partitions:
            plan.refused.append(
                f"topic {spec.name}: cannot shrink partitions from {cur.partitions} to {spec.partitions}"
            )
        elif spec.partitions > cur.partitions:
            plan.add_partitions.append((spec.name, cur.partitions, spec.partitions))
        if spec.replication_factor is not None and spec.replication_factor != cur.replication_factor:
            plan.refused.append(
                f"topic {spec.name}: replication factor is {cur.replication_factor}, spec says "
                f"{spec.replication_factor}; change it with a partition reassignment, not topics apply"
            )
        for key, value in sorted(spec.configs.items()):
            if cur.configs.get(key) != value:
                plan.alter.append(ConfigChange(spec.name, key, cur.configs.get(key), value))
    return plan
