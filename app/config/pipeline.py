"""The pipeline spec: YAML → frozen pydantic models (errors at file:line:col: field).

Relative paths in the spec (topic files, file-source globs, sink directories) are
resolved against the directory of the pipeline file. Transform steps are one-key
mappings (``- filter: {...}``, ``- map: "module:function"``); a spec can import
code only by such dotted names, never carry it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

from app.config.yamlsrc import load_model

_NAME = r"^[a-zA-Z0-9_-]+$"
_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
STEP_KINDS = ("filter", "map", "flat_map", "project", "route")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _resolve(v: str, info: ValidationInfo) -> str:
    base = (info.context or {}).get("base_dir")
    p = Path(v).expanduser()
    if not p.is_absolute() and base is not None:
        p = Path(base) / p
    return os.path.normpath(str(p))


class SecretRef(_Model):
    """A secret named, not written, in the spec: ``{env: VAR}`` or ``{file: path}``."""

    env: str | None = None
    file: str | None = None

    @model_validator(mode="after")
    def _one(self) -> SecretRef:
        if (self.env is None) == (self.file is None):
            raise ValueError("a secret reference needs exactly one of 'env' or 'file'")
        return self

    def resolve(self, setting: str) -> SecretStr:
        if self.env is not None:
            value = os.environ.get(self.env)
            if value is None:
                raise ValueError(f"kafka.secrets.{setting}: environment variable {self.env} is not set")
            return SecretStr(value)
        assert self.file is not None
        try:
            return SecretStr(Path(self.file).read_text().strip())
        except OSError as exc:
            raise ValueError(f"kafka.secrets.{setting}: cannot read {self.file}: {exc.strerror}") from exc


class KafkaSettings(_Model):
    """librdkafka settings passed verbatim; secret ones (``sasl.password``,
    ``ssl.key.password``, ...) by reference under ``secrets`` so the spec holds no secret."""

    bootstrap_servers: str | None = None
    config: dict[str, str | int | bool | float] = Field(default_factory=dict)
    secrets: dict[str, SecretRef] = Field(default_factory=dict)

    def client_config(self) -> dict[str, Any]:
        """Settings for librdkafka, secrets resolved (never log the result)."""
        out: dict[str, Any] = dict(self.config)
        for key, ref in self.secrets.items():
            out[key] = ref.resolve(key).get_secret_value()
        return out


class CommitSettings(_Model):
    interval_ms: int = Field(default=100, gt=0)
    max_rows: int = Field(default=10_000, gt=0)
    transaction_timeout_ms: int = Field(default=30_000, ge=1000)


class GeneratorSource(_Model):
    type: Literal["generator"]
    name: str = Field(pattern=_NAME)
    topic: str
    rows: int | None = Field(default=None, ge=0)
    seed: int = 0
    rate_per_s: float | None = Field(default=None, gt=0)
    key_field: str | None = None


class FileSource(_Model):
    type: Literal["file"]
    name: str = Field(pattern=_NAME)
    topic: str
    path: str
    format: Literal["ndjson", "csv"] = "ndjson"
    key_field: str | None = None
    fingerprint_bytes: int = Field(default=1024, ge=16)

    _abs = field_validator("path")(_resolve)

    @property
    def resolved_path(self) -> str:
        return self.path


Source = Annotated[GeneratorSource | FileSource, Field(discriminator="type")]


class FilterStep(_Model):
    kind: Literal["filter"] = "filter"
    field: str
    op: Literal["eq", "ne", "gt", "ge", "lt", "le", "in", "not_in", "exists"]
    value: Any = None


class MapStep(_Model):
    kind: Literal["map"] = "map"
    function: str


class FlatMapStep(_Model):
    kind: Literal["flat_map"] = "flat_map"
    function: str


class ProjectStep(_Model):
    kind: Literal["project"] = "project"
    fields: list[str] | None = None
    rename: dict[str, str] | None = None


class RouteStep(_Model):
    kind: Literal["route"] = "route"
    field: str
    routes: dict[str, str]
    default: str | None = None


Step = Annotated[FilterStep | MapStep | FlatMapStep | ProjectStep | RouteStep, Field(discriminator="kind")]


def _step_from_yaml(item: Any, index: int) -> Any:
    if not isinstance(item, dict) or len(item) != 1 or next(iter(item)) not in STEP_KINDS:
        keys = list(item) if isinstance(item, dict) else type(item).__name__
        raise ValueError(f"step {index} must be a mapping with exactly one of {', '.join(STEP_KINDS)}; got {keys}")
    kind, args = next(iter(item.items()))
    if kind in ("map", "flat_map"):
        if not isinstance(args, str) or not _CALLABLE.match(args):
            raise ValueError(f"step {index}: {kind} needs 'module:function', got {args!r}")
        return {"kind": kind, "function": args}
    if not isinstance(args, dict):
        raise ValueError(f"step {index}: {kind} needs a mapping of arguments")
    return {"kind": kind, **args}


class WindowSpec(_Model):
    """Event-time windows: tumbling (``size_ms``) or hopping (``size_ms`` every ``advance_ms``)."""

    type: Literal["tumbling", "hopping"] = "tumbling"
    size_ms: int = Field(gt=0)
    advance_ms: int | None = Field(default=None, gt=0)
    allowed_lateness_ms: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _advance(self) -> WindowSpec:
        if self.type == "hopping" and (self.advance_ms is None or self.advance_ms > self.size_ms):
            raise ValueError("a hopping window needs advance_ms, at most size_ms")
        if self.type == "tumbling" and self.advance_ms is not None and self.advance_ms != self.size_ms:
            raise ValueError("a tumbling window takes no advance_ms (use type: hopping)")
        return self


class DedupeOp(_Model):
    kind: Literal["dedupe"] = "dedupe"
    field: str | None = None  # payload field to dedupe by; default: the record key
    ttl_ms: int | None = Field(default=None, gt=0)  # forget a key this long (event time) after it was seen
    time_field: str | None = None  # payload field with the event time (ms); default: the token's event time


AggFunction = Literal["count", "sum", "min", "max"]


class AggregateOp(_Model):
    kind: Literal["aggregate"] = "aggregate"
    key_field: str | None = None  # default: the record key
    value_field: str | None = None
    functions: list[AggFunction] = Field(default_factory=lambda: list[AggFunction](["count"]), min_length=1)
    window: WindowSpec | None = None
    time_field: str | None = None
    late: str = "dlq"  # "dlq", or a topic that receives late rows unchanged

    @model_validator(mode="after")
    def _value(self) -> AggregateOp:
        if any(f != "count" for f in self.functions) and self.value_field is None:
            raise ValueError("sum/min/max need value_field")
        return self


class StatefulFunction(_Model):
    kind: Literal["function"] = "function"
    function: str


StatefulStep = Annotated[DedupeOp | AggregateOp | StatefulFunction, Field(discriminator="kind")]
STATEFUL_KINDS = ("dedupe", "aggregate", "function")


class Transform(_Model):
    name: str = Field(pattern=_NAME)
    input: str
    input_format: Literal["token", "json", "avro", "raw"] = "token"
    input_schema: str | None = None
    output: str | None = None
    steps: list[Step] = Field(default_factory=list)
    stateful: StatefulStep | None = None  # runs after the steps, on state kept per input partition
    store: str | None = Field(default=None, pattern=_NAME)  # state store name; default: the transform's

    @field_validator("stateful", mode="before")
    @classmethod
    def _stateful(cls, v: Any) -> Any:
        if v is None:
            return v
        if not isinstance(v, dict) or len(v) != 1 or next(iter(v)) not in STATEFUL_KINDS:
            keys = list(v) if isinstance(v, dict) else type(v).__name__
            raise ValueError(f"stateful must be a mapping with exactly one of {', '.join(STATEFUL_KINDS)}; got {keys}")
        kind, args = next(iter(v.items()))
        if kind == "function":
            if not isinstance(args, str) or not _CALLABLE.match(args):
                raise ValueError(f"stateful function needs 'module:function', got {args!r}")
            return {"kind": kind, "function": args}
        if not isinstance(args, dict):
            raise ValueError(f"stateful {kind} needs a mapping of arguments")
        return {"kind": kind, **args}

    @property
    def store_name(self) -> str:
        return self.store or self.name

    @field_validator("steps", mode="before")
    @classmethod
    def _steps(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [_step_from_yaml(item, i) for i, item in enumerate(v)]
        return v

    @model_validator(mode="after")
    def _schema(self) -> Transform:
        if (self.input_format == "avro") != (self.input_schema is not None):
            raise ValueError("input_schema is required exactly when input_format is avro")
        if self.stateful is not None:
            if self.output is None:
                raise ValueError("a stateful transform needs an output topic")
            if any(isinstance(st, RouteStep) for st in self.steps):
                raise ValueError("a stateful transform cannot route (its state is per input partition)")
        return self


class PartSettings(_Model):
    max_rows: int = Field(default=50_000, gt=0)
    max_bytes: int = Field(default=64 << 20, gt=0)
    max_age_ms: int = Field(default=5_000, gt=0)


class FileSink(_Model):
    type: Literal["file"]
    name: str = Field(pattern=_NAME)
    input: str
    input_format: Literal["token", "json", "avro", "raw"] = "token"
    input_schema: str | None = None
    path: str
    format: Literal["parquet", "ndjson"] = "parquet"
    part: PartSettings = Field(default_factory=PartSettings)
    # a row whose encoded input is larger is refused to the DLQ (unwritable_row)
    max_row_bytes: int = Field(default=16 << 20, gt=0)

    _abs = field_validator("path")(_resolve)

    @property
    def resolved_path(self) -> str:
        return self.path

    @model_validator(mode="after")
    def _schema(self) -> FileSink:
        if (self.input_format == "avro") != (self.input_schema is not None):
            raise ValueError("input_schema is required exactly when input_format is avro")
        return self


class PgColumn(_Model):
    name: str
    type: str = "text"
    source: str | None = None  # payload field; "_token_id", "_key", "_event_time_ms" for the envelope

    @property
    def field(self) -> str:
        return self.source or self.name


class PostgresSink(_Model):
    type: Literal["postgres"]
    name: str = Field(pattern=_NAME)
    input: str
    input_format: Literal["token", "json", "avro", "raw"] = "token"
    input_schema: str | None = None
    dsn: SecretStr | None = None  # never logged; or take it from the env var named by dsn_env
    dsn_env: str | None = "LEDGERFLOW_PG_DSN"
    table: str
    columns: list[PgColumn] = Field(min_length=1)
    key: list[str] = Field(default_factory=lambda: ["token_id"])
    create_table: bool = False
    statement_timeout_ms: int = Field(default=30_000, gt=0)
    use_copy: bool = True  # COPY straight into the table after the CAS, upsert fallback on conflict (else executemany)
    part: PartSettings = Field(default_factory=PartSettings)

    def resolved_dsn(self) -> str:
        if self.dsn is not None:
            return self.dsn.get_secret_value()
        value = os.environ.get(self.dsn_env or "")
        if not value:
            raise ValueError(f"sink {self.name}: no dsn in the spec and ${self.dsn_env} is not set")
        return value

    @model_validator(mode="after")
    def _check(self) -> PostgresSink:
        names = [c.name for c in self.columns]
        missing = [k for k in self.key if k not in names]
        if missing:
            raise ValueError(f"key column(s) {missing} are not among the columns {names}")
        if (self.input_format == "avro") != (self.input_schema is not None):
            raise ValueError("input_schema is required exactly when input_format is avro")
        return self


Sink = Annotated[FileSink | PostgresSink, Field(discriminator="type")]


class PipelineSpec(_Model):
    pipeline: str = Field(pattern=_NAME)
    topics: list[str] = Field(default_factory=list)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    commit: CommitSettings = Field(default_factory=CommitSettings)
    journal_topic: str | None = None
    dlq_topic: str | None = None
    state_dir: str = ".ledgerflow/state"
    restore_chunk: int = Field(default=50_000, gt=0)  # changelog records applied per local write on restore
    sources: list[Source] = Field(default_factory=list)
    transforms: list[Transform] = Field(default_factory=list)
    sinks: list[Sink] = Field(default_factory=list)

    @field_validator("topics")
    @classmethod
    def _topic_files(cls, v: list[str], info: ValidationInfo) -> list[str]:
        return [_resolve(x, info) for x in v]

    _state = field_validator("state_dir")(_resolve)

    @model_validator(mode="after")
    def _unique(self) -> PipelineSpec:
        for section in ("sources", "transforms", "sinks"):
            names = [x.name for x in getattr(self, section)]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{section}: duplicate name(s) {', '.join(dupes)}")
        return self

    @property
    def journal(self) -> str:
        return self.journal_topic or f"{self.pipeline}.journal"

    @property
    def dlq(self) -> str:
        return self.dlq_topic or f"{self.pipeline}.dlq"

    @property
    def topic_files(self) -> list[Path]:
        return [Path(t) for t in self.topics]

    def all_topics(self) -> set[str]:
        return set(self.topic_uses())

    def topic_uses(self) -> dict[str, list[str]]:
        """Every topic the pipeline touches -> where the spec uses it (for error messages)."""
        uses: dict[str, list[str]] = {self.journal: ["the journal"], self.dlq: ["the DLQ"]}

        def use(topic: str, where: str) -> None:
            uses.setdefault(topic, []).append(where)

        for s in self.sources:
            use(s.topic, f"source {s.name} (topic)")
        for t in self.transforms:
            use(t.input, f"transform {t.name} (input)")
            if t.output:
                use(t.output, f"transform {t.name} (output)")
            if isinstance(t.stateful, AggregateOp) and t.stateful.late != "dlq":
                use(t.stateful.late, f"transform {t.name} (stateful.aggregate.late)")
            for st in t.steps:
                if isinstance(st, RouteStep):
                    for dest in [*st.routes.values(), *([st.default] if st.default else [])]:
                        use(dest, f"transform {t.name} (route)")
        for k in self.sinks:
            use(k.input, f"sink {k.name} (input)")
        return uses


def load_pipeline(path: Path) -> PipelineSpec:
    path = Path(path)
    return load_model(path, PipelineSpec, context={"base_dir": str(path.resolve().parent)})


def resolve_bootstrap(spec: PipelineSpec) -> str | None:
    return spec.kafka.bootstrap_servers or os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or None
