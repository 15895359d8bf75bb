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
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator

from app.config.yamlsrc import load_model

_NAME = r"^[a-zA-Z0-9_-]+$"
_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
STEP_KINDS = ("filter", "map", "map_batch", "flat_map", "project", "route", "cast", "interval_join")
COLUMNAR_STEP_KINDS = frozenset({"filter", "project", "route", "cast", "map_batch"})  # app/transforms/columnar.py


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
                raise ValueError(f"{setting}: environment variable {self.env} is not set")
            return SecretStr(value)
        assert self.file is not None
        try:
            return SecretStr(Path(self.file).read_text().strip())
        except OSError as exc:
            raise ValueError(f"{setting}: cannot read {self.file}: {exc.strerror}") from exc


class KafkaSettings(_Model):
    """librdkafka settings passed verbatim; secret ones (``sasl.password``,
    ``ssl.key.password``, ...) by reference under ``secrets`` so the spec holds no secret."""

    bootstrap_servers: str | None = None
    config: dict[str, str | int | bool | float] = Field(default_factory=dict)
    secrets: dict[str, SecretRef] = Field(default_factory=dict)

    SECRET_KEYS: ClassVar[frozenset[str]] = frozenset(
        {"sasl.password", "ssl.key.password", "ssl.keystore.password", "sasl.oauthbearer.client.secret"}
    )

    @field_validator("config")
    @classmethod
    def _no_inline_secret(cls, v: dict[str, Any]) -> dict[str, Any]:
        inline = sorted(k for k in v if k in cls.SECRET_KEYS)
        if inline:
            raise ValueError(f"{', '.join(inline)}: a secret goes under kafka.secrets ({{env: VAR}} or {{file: path}})")
        return v

    def client_config(self) -> dict[str, Any]:
        """Settings for librdkafka, secrets resolved (never log the result)."""
        out: dict[str, Any] = dict(self.config)
        for key, ref in self.secrets.items():
            out[key] = ref.resolve(f"kafka.secrets.{key}").get_secret_value()
        return out


class RegistryBasicAuth(_Model):
    """Basic-auth credentials of the schema registry, by reference only (never logged)."""

    username: SecretRef
    password: SecretRef


class RegistryTLS(_Model):
    ca_location: str | None = None  # CA bundle (file) or directory that signs the registry's certificate
    certificate_location: str | None = None  # client certificate (mutual TLS)
    key_location: str | None = None  # its private key

    @field_validator("ca_location", "certificate_location", "key_location")
    @classmethod
    def _paths(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else _resolve(v, info)


class RegistrySettings(_Model):
    """Where the schema registry is (Confluent API; Apicurio: ``.../apis/ccompat/v7``)."""

    url: str | None = None  # else LEDGERFLOW_REGISTRY_URL
    basic_auth: RegistryBasicAuth | None = None
    tls: RegistryTLS | None = None
    timeout_s: float = Field(default=10.0, gt=0, le=300)  # per request: a lost reply never hangs a stage
    max_wait_s: float = Field(default=120.0, ge=0)  # an unreachable registry is waited out this long, with backoff
    cache_capacity: int = Field(default=1000, gt=0)  # schemas kept by the client

    def resolved_url(self) -> str:
        url = self.url or os.environ.get("LEDGERFLOW_REGISTRY_URL")
        if not url:
            raise ValueError("registry: no url in the spec and $LEDGERFLOW_REGISTRY_URL is not set")
        return url


REGISTRY_FORMATS = ("avro_registry", "json_schema_registry")
InputFormat = Literal["token", "json", "avro", "raw", "avro_registry", "json_schema_registry"]


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


class MapBatchStep(_Model):
    """``module:function`` over a pyarrow RecordBatch of payloads, row-wise (see
    app/transforms/batch_fn.py); keeps the transform on the columnar path."""

    kind: Literal["map_batch"] = "map_batch"
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


class CastStep(_Model):
    """Convert payload fields to a JSON type (``{field: int|float|string|bool}``); a value
    that does not convert sends its row to the DLQ (``transform_error``)."""

    kind: Literal["cast"] = "cast"
    fields: dict[str, Literal["int", "float", "string", "bool"]] = Field(min_length=1)


class IntervalJoinStep(_Model):
    """Stream-stream interval join with the co-partitioned topic ``right``: a left row
    (the transform's input) and a right row pair when their keys are equal and
    ``t_left - before_ms <= t_right <= t_left + after_ms`` (see docs/joins.md). Only
    the first step of a transform: the steps after it apply to its output."""

    kind: Literal["interval_join"] = "interval_join"
    right: str  # the right topic: same partition count as the input, keyed like it
    right_format: InputFormat | None = None  # how the right topic's records decode; default: input_format
    key: str | None = None  # payload field with the join key; null = the record key
    time: str | None = None  # payload field with the event time (ms); null = event_time_ms
    right_key: str | None = None  # default: key
    right_time: str | None = None  # default: time
    before_ms: int = Field(ge=0)
    after_ms: int = Field(ge=0)
    grace_ms: int = Field(default=0, ge=0)  # each side's watermark is its largest event time - grace_ms
    type: Literal["inner", "left", "outer"] = "inner"
    prefix: str = "r_"  # prepended to the right fields' names in the output
    fields: list[str] = Field(default_factory=list)  # right fields to add; [] = all

    @property
    def right_key_field(self) -> str | None:
        return self.right_key if self.right_key is not None else self.key

    @property
    def right_time_field(self) -> str | None:
        return self.right_time if self.right_time is not None else self.time


Step = Annotated[
    FilterStep | MapStep | MapBatchStep | FlatMapStep | ProjectStep | RouteStep | CastStep | IntervalJoinStep,
    Field(discriminator="kind"),
]


def _step_from_yaml(item: Any, index: int) -> Any:
    if not isinstance(item, dict) or len(item) != 1 or next(iter(item)) not in STEP_KINDS:
        keys = list(item) if isinstance(item, dict) else type(item).__name__
        raise ValueError(f"step {index} must be a mapping with exactly one of {', '.join(STEP_KINDS)}; got {keys}")
    kind, args = next(iter(item.items()))
    if kind in ("map", "map_batch", "flat_map"):
        if not isinstance(args, str) or not _CALLABLE.match(args):
            raise ValueError(f"step {index}: {kind} needs 'module:function', got {args!r}")
        return {"kind": kind, "function": args}
    if not isinstance(args, dict):
        raise ValueError(f"step {index}: {kind} needs a mapping of arguments")
    if kind == "cast":
        return {"kind": kind, "fields": args}
    return {"kind": kind, **args}


class WindowSpec(_Model):
    """Event-time windows: tumbling (``size_ms``), hopping (``size_ms`` every
    ``advance_ms``) or session (a key's rows within ``gap_ms`` of each other)."""

    type: Literal["tumbling", "hopping", "session"] = "tumbling"
    size_ms: int | None = Field(default=None, gt=0)
    advance_ms: int | None = Field(default=None, gt=0)
    gap_ms: int | None = Field(default=None, gt=0)
    allowed_lateness_ms: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _advance(self) -> WindowSpec:
        if self.type == "session":
            if self.gap_ms is None or self.size_ms is not None or self.advance_ms is not None:
                raise ValueError("a session window needs gap_ms and takes no size_ms or advance_ms")
            return self
        if self.size_ms is None or self.gap_ms is not None:
            raise ValueError(f"a {self.type} window needs size_ms and takes no gap_ms")
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


class LookupJoinOp(_Model):
    """Join each row with the version of a table topic's record in force at its event time."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    kind: Literal["lookup_join"] = "lookup_join"
    table: str  # compacted topic, keyed by the table key; co-partitioned with the input unless global
    table_format: Literal["json"] = "json"  # each record's value: a JSON object (None: a tombstone)
    table_time_field: str | None = None  # field with the version's time (ms); default: the record timestamp
    key_field: str | None = None  # payload field holding the table key; default: the record key
    type: Literal["inner", "left"] = "inner"
    fields: list[str] = Field(default_factory=list)  # table fields to add (default: all)
    prefix: str = ""  # prepended to the added fields' names
    time_field: str | None = None  # payload field with the row's event time; default: event_time_ms
    history_retention_ms: int = Field(default=86_400_000, gt=0)
    global_table: bool = Field(default=False, alias="global")  # every worker holds every partition


StatefulStep = Annotated[DedupeOp | AggregateOp | StatefulFunction | LookupJoinOp, Field(discriminator="kind")]
STATEFUL_KINDS = ("dedupe", "aggregate", "function", "lookup_join")


class Transform(_Model):
    name: str = Field(pattern=_NAME)
    input: str
    input_format: InputFormat = "token"
    input_schema: str | None = None
    output: str | None = None
    # token: ledgerflow's envelope; *_registry: Confluent-framed records for consumers outside ledgerflow
    output_format: Literal["token", "avro_registry", "json_schema_registry"] = "token"
    output_schema: str | None = None  # .avsc / JSON schema file written with (registered under the subject)
    subject_strategy: Literal["topic", "record", "topic_record"] = "topic"
    auto_register: bool = True  # false: write with the subject's latest registered version
    steps: list[Step] = Field(default_factory=list)
    columnar: bool = True  # declarative steps run on Arrow batches (docs/columnar.md); false: row by row
    stateful: StatefulStep | None = None  # runs after the steps, on state kept per input partition
    store: str | None = Field(default=None, pattern=_NAME)  # state store name; default: the transform's
    # 1: each worker keeps warm copies of the store's partitions it does not own (app/state/standby.py)
    standby_replicas: int = Field(default=0, ge=0, le=1)

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

    @property
    def interval_join(self) -> IntervalJoinStep | None:
        """The transform's interval join (always its first step), if it has one."""
        first = self.steps[0] if self.steps else None
        return first if isinstance(first, IntervalJoinStep) else None

    @property
    def has_state(self) -> bool:
        """A state store with a changelog: a stateful operator, or an interval join."""
        return self.stateful is not None or self.interval_join is not None

    @field_validator("output_schema")
    @classmethod
    def _output_schema_path(cls, v: str | None, info: ValidationInfo) -> str | None:
        return None if v is None else _resolve(v, info)

    @field_validator("steps", mode="before")
    @classmethod
    def _steps(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [_step_from_yaml(item, i) for i, item in enumerate(v)]
        return v

    @model_validator(mode="after")
    def _standby(self) -> Transform:
        if self.standby_replicas and not self.has_state:
            raise ValueError(f"transform {self.name}: standby_replicas needs a state store (a stateful operator)")
        return self

    @model_validator(mode="after")
    def _schema(self) -> Transform:
        if (self.input_format == "avro") != (self.input_schema is not None):
            raise ValueError("input_schema is required exactly when input_format is avro")
        if self.output_format == "token" and self.output_schema is not None:
            raise ValueError("output_schema needs an output_format (avro_registry or json_schema_registry)")
        if self.output_format != "token" and self.auto_register and self.output_schema is None:
            raise ValueError("output_format with auto_register needs output_schema (or auto_register: false)")
        if self.output_format != "token" and self.subject_strategy != "topic" and self.output_schema is None:
            raise ValueError(f"subject_strategy {self.subject_strategy} needs output_schema (the record name)")
        if self.stateful is not None:
            if self.output is None:
                raise ValueError("a stateful transform needs an output topic")
            if any(isinstance(st, RouteStep) for st in self.steps):
                raise ValueError("a stateful transform cannot route (its state is per input partition)")
        self._check_interval_join()
        return self

    def _check_interval_join(self) -> None:
        at = [i for i, st in enumerate(self.steps) if isinstance(st, IntervalJoinStep)]
        if not at:
            return
        if at != [0]:
            raise ValueError(
                f"transform {self.name}: interval_join must be the first step and appear once "
                f"(found at step(s) {', '.join(map(str, at))}); the steps after it apply to the joined rows"
            )
        if self.stateful is not None:
            raise ValueError(f"transform {self.name}: an interval_join transform takes no stateful operator")
        if self.output is None:
            raise ValueError(f"transform {self.name}: an interval_join transform needs an output topic")
        if any(isinstance(st, RouteStep) for st in self.steps):
            raise ValueError(f"transform {self.name}: an interval_join transform cannot route")
        if self.output_format != "token":
            raise ValueError(f"transform {self.name}: an interval_join transform writes tokens (output_format: token)")
        join = self.steps[0]
        assert isinstance(join, IntervalJoinStep)
        if join.right == self.input:
            raise ValueError(f"transform {self.name}: interval_join right topic is the input topic {self.input}")
        if (join.right_format or self.input_format) in ("avro", *REGISTRY_FORMATS):
            raise ValueError(f"transform {self.name}: interval_join right_format must be token, json or raw")


class PartSettings(_Model):
    """When a sink cuts a part: at ``max_rows``, ``max_bytes`` or ``max_age_ms``, or once
    its input has been idle for ``idle_ms`` (0: at the first poll that returns nothing;
    unset: the sink type's default, see ``_SinkBase.idle_ms``). ``max_open_rows`` bounds
    the rows a sink worker holds in open parts over all its partitions: it never reads
    past it, and on reaching it cuts its largest open parts until it holds half (parts
    come out smaller than ``max_rows`` while several partitions fill at once)."""

    max_rows: int = Field(default=50_000, gt=0)
    max_bytes: int = Field(default=64 << 20, gt=0)
    max_age_ms: int = Field(default=5_000, gt=0)
    idle_ms: int | None = Field(default=None, ge=0)
    max_open_rows: int = Field(default=50_000, gt=0)


# Lake sinks wait 1 s of idle input before cutting: every part is an object or a
# snapshot, and cutting at each gap between upstream commits multiplies them.
LAKE_IDLE_MS = 1_000


class _SinkBase(_Model):
    """What every sink entry has: a name, an input topic and how its records decode."""

    name: str = Field(pattern=_NAME)
    input: str
    input_format: InputFormat = "token"
    input_schema: str | None = None
    part: PartSettings = Field(default_factory=PartSettings)

    default_idle_ms: ClassVar[int] = 0  # files and databases: cut as soon as input pauses

    @property
    def idle_ms(self) -> int:
        """How long input must be idle before every open part is cut."""
        return self.part.idle_ms if self.part.idle_ms is not None else self.default_idle_ms

    @model_validator(mode="after")
    def _input_schema(self) -> _SinkBase:
        if (self.input_format == "avro") != (self.input_schema is not None):
            raise ValueError("input_schema is required exactly when input_format is avro")
        return self


class FileSink(_SinkBase):
    type: Literal["file"]
    path: str
    format: Literal["parquet", "ndjson"] = "parquet"
    # a row whose encoded input is larger is refused to the DLQ (unwritable_row)
    max_row_bytes: int = Field(default=16 << 20, gt=0)

    _abs = field_validator("path")(_resolve)

    @property
    def resolved_path(self) -> str:
        return self.path


class PgColumn(_Model):
    name: str
    type: str = "text"
    source: str | None = None  # payload field; "_token_id", "_key", "_event_time_ms" for the envelope

    @property
    def field(self) -> str:
        return self.source or self.name


class PostgresSink(_SinkBase):
    type: Literal["postgres"]
    dsn: SecretStr | None = None  # never logged; or take it from the env var named by dsn_env
    dsn_env: str | None = "LEDGERFLOW_PG_DSN"
    table: str
    columns: list[PgColumn] = Field(min_length=1)
    key: list[str] = Field(default_factory=lambda: ["token_id"])
    create_table: bool = False
    statement_timeout_ms: int = Field(default=30_000, gt=0)
    use_copy: bool = True  # COPY straight into the table after the CAS, upsert fallback on conflict (else executemany)

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
        return self


class S3Credentials(_Model):
    """S3 keys by reference only (never inline, never logged)."""

    access_key_id: SecretRef
    secret_access_key: SecretRef


class S3Connection(_Model):
    """Where an S3-compatible store is and how to sign for it. Without ``credentials``
    boto3's default chain applies (AWS_* env vars, web identity, instance profile)."""

    endpoint_url: str | None = None
    region: str = "us-east-1"
    path_style: bool = False  # path-style addressing (most self-hosted stores want it)
    credentials: S3Credentials | None = None
    timeout_s: float = Field(default=30.0, gt=0)  # connect and read timeout of every call
    max_attempts: int = Field(default=4, gt=0)  # per call, with boto3's standard backoff


class S3Sink(_SinkBase):
    type: Literal["s3"]
    default_idle_ms: ClassVar[int] = LAKE_IDLE_MS
    bucket: str = Field(min_length=3)
    prefix: str = ""  # objects go under <prefix>/<topic>/partition=<p>/
    connection: S3Connection = Field(default_factory=S3Connection)
    format: Literal["parquet", "ndjson"] = "parquet"
    max_row_bytes: int = Field(default=16 << 20, gt=0)
    # parts at least this large go up as a multipart upload; smaller ones as one staged PutObject
    multipart_threshold_bytes: int = Field(default=8 << 20, ge=0)  # 0: every part multipart
    upload_part_bytes: int = Field(default=8 << 20, ge=5 << 20)  # S3's minimum part size is 5 MiB
    conditional_writes: bool = True  # If-None-Match: * on completes (a zombie never overwrites an object)

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        return v.strip("/")


class IcebergCatalog(_Model):
    """A SQL catalog (SQLAlchemy URL: ``postgresql+psycopg://...`` or ``sqlite:///...``);
    the URL may hold a password, so give it by reference (``uri_env``) in production."""

    name: str = "ledgerflow"
    uri: SecretStr | None = None
    uri_env: str | None = "LEDGERFLOW_ICEBERG_CATALOG_URI"

    def resolved_uri(self, sink: str) -> str:
        if self.uri is not None:
            return self.uri.get_secret_value()
        value = os.environ.get(self.uri_env or "")
        if not value:
            raise ValueError(f"sink {sink}: no catalog uri in the spec and ${self.uri_env} is not set")
        return value


class IcebergSink(_SinkBase):
    type: Literal["iceberg"]
    default_idle_ms: ClassVar[int] = LAKE_IDLE_MS
    catalog: IcebergCatalog = Field(default_factory=IcebergCatalog)
    warehouse: str  # a directory (relative to the spec) or s3://bucket/path
    s3: S3Connection | None = None  # for an s3:// warehouse
    table: str = Field(pattern=r"^[A-Za-z_][\w]*\.[A-Za-z_][\w]*$")  # namespace.table
    max_row_bytes: int = Field(default=16 << 20, gt=0)

    @field_validator("warehouse")
    @classmethod
    def _warehouse(cls, v: str, info: ValidationInfo) -> str:
        return v if "://" in v else _resolve(v, info)


Sink = Annotated[FileSink | PostgresSink | S3Sink | IcebergSink, Field(discriminator="type")]


class PipelineSpec(_Model):
    pipeline: str = Field(pattern=_NAME)
    topics: list[str] = Field(default_factory=list)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    registry: RegistrySettings | None = None  # needed by the *_registry input and output formats
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
        if self.registry is None:
            users = [t.name for t in self.transforms if t.output_format != "token"]
            users += [x.name for x in [*self.transforms, *self.sinks] if x.input_format in REGISTRY_FORMATS]
            if users:
                raise ValueError(f"{', '.join(users)} use a schema registry format: add a 'registry:' block (url)")
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
            if isinstance(t.stateful, LookupJoinOp):
                use(t.stateful.table, f"transform {t.name} (stateful.lookup_join.table)")
            if t.interval_join is not None:
                use(t.interval_join.right, f"transform {t.name} (interval_join.right)")
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
