"""Pipeline and topic specs: defaults, path resolution, errors at file:line:field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from app.config.pipeline import FilterStep, MapStep, load_pipeline
from app.config.topics import ActualTopic, TopicSpec, load_topic_specs, plan_topic_changes
from app.config.yamlsrc import SpecError

GOOD = """pipeline: p1
topics: [t.yaml]
sources:
  - name: gen
    type: generator
    topic: raw
    rows: 10
transforms:
  - name: tr
    input: raw
    output: clean
    steps:
      - filter: {field: amount, op: gt, value: 0}
      - map: "app.transforms.examples:add_amount_eur"
sinks:
  - name: files
    type: file
    input: clean
    path: out
"""


def _write(tmp: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp / name
    path.write_text(text)
    return path


def test_defaults_and_relative_paths(tmp_path: Path) -> None:
    spec = load_pipeline(_write(tmp_path, GOOD))
    assert spec.journal == "p1.journal" and spec.dlq == "p1.dlq"
    assert spec.commit.interval_ms == 100
    assert spec.topic_files == [tmp_path / "t.yaml"]
    assert spec.sinks[0].resolved_path == str(tmp_path / "out")
    assert spec.sinks[0].format == "parquet"
    assert isinstance(spec.transforms[0].steps[0], FilterStep)
    assert isinstance(spec.transforms[0].steps[1], MapStep)
    assert spec.all_topics() == {"raw", "clean", "p1.journal", "p1.dlq"}


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("    rows: 10", "    rows: lots", ":7:11: sources[0].rows: Input should be a valid integer"),
        (
            "    path: out",
            "    path: out\n    colour: red",
            ":20:13: sinks[0].colour: unknown field 'colour'",
        ),
        ("    topic: raw\n", "", ":4:5: sources[0].topic: missing required field 'topic'"),
        (
            '      - map: "app',
            '      - frob: "app',
            ":14:9: transforms[0].steps[1]: Value error, step 1 must be",
        ),
        ("op: gt", "op: about", ":13:37: transforms[0].steps[0].filter.op: Input should be"),
        (
            "  - name: tr\n",
            "  - name: tr\n    name: again\n",
            ":10:5: transforms[0].name: duplicate key 'name'",
        ),
        ("pipeline: p1", "pipeline: [p1", ":2:7: YAML syntax error"),
    ],
)
def test_errors_name_file_line_and_field(tmp_path: Path, old: str, new: str, expected: str) -> None:
    path = _write(tmp_path, GOOD.replace(old, new))
    with pytest.raises(SpecError) as info:
        load_pipeline(path)
    assert f"{path}{expected}" in str(info.value)


def test_missing_file_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        load_pipeline(tmp_path / "nope.yaml")


def test_topic_specs_normalise_and_reject_duplicates(tmp_path: Path) -> None:
    _write(
        tmp_path,
        "topics:\n  - {name: a, partitions: 2, configs: {compression.type: lz4, x: true, y: 5}}\n",
        "a.yaml",
    )
    specs = load_topic_specs([tmp_path])
    assert specs[0].configs == {"compression.type": "lz4", "x": "true", "y": "5"}
    _write(tmp_path, "topics:\n  - {name: a, partitions: 1}\n", "b.yaml")
    with pytest.raises(SpecError, match="also defined in"):
        load_topic_specs([tmp_path])


def test_bad_topic_spec_names_line_and_field(tmp_path: Path) -> None:
    path = _write(tmp_path, "topics:\n  - name: ok\n    partitions: 1\n  - name: bad/name\n    partitions: 0\n")
    with pytest.raises(SpecError) as info:
        load_topic_specs([path])
    msg = str(info.value)
    assert f"{path}:4:11: topics[1].name" in msg
    assert f"{path}:5:17: topics[1].partitions: Input should be greater than or equal to 1" in msg


def test_topic_plan() -> None:
    want = [
        TopicSpec(name="new", partitions=3, configs={"cleanup.policy": "compact"}),
        TopicSpec(name="same", partitions=2, configs={"retention.ms": "1000"}),
        TopicSpec(name="drift", partitions=4, configs={"retention.ms": "2000"}),
        TopicSpec(name="shrink", partitions=1),
        TopicSpec(name="rf", partitions=1, replication_factor=3),
    ]
    actual = {
        "same": ActualTopic("same", 2, 1, {"retention.ms": "1000", "other": "x"}),
        "drift": ActualTopic("drift", 2, 1, {"retention.ms": "1000"}),
        "shrink": ActualTopic("shrink", 3, 1, {}),
        "rf": ActualTopic("rf", 1, 1, {}),
    }
    plan = plan_topic_changes(want, actual)
    assert [s.name for s in plan.create] == ["new"]
    assert plan.add_partitions == [("drift", 2, 4)]
    assert [(c.topic, c.key, c.old, c.new) for c in plan.alter] == [("drift", "retention.ms", "1000", "2000")]
    assert len(plan.refused) == 2
    assert "shrink" in plan.refused[0] and "from 3 to 1" in plan.refused[0]
    assert "replication factor is 1, spec says 3" in plan.refused[1]
    text = plan.render()
    assert "+ topic new (partitions=3, rf=1, cleanup.policy=compact)" in text
    assert "~ topic drift: retention.ms 1000 -> 2000" in text
    assert plan_topic_changes(want[1:2], actual).is_empty


def test_kafka_secrets_by_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pw").write_text("from-file\n")
    spec_text = GOOD.replace(
        "topics: [t.yaml]\n",
        "topics: [t.yaml]\nkafka:\n  config: {security.protocol: SASL_SSL, sasl.mechanism: PLAIN}\n"
        "  secrets:\n    sasl.password: {env: LF_TEST_PW}\n    ssl.key.password: {file: pw}\n",
    )
    spec = load_pipeline(_write(tmp_path, spec_text.replace("{file: pw}", f"{{file: {tmp_path / 'pw'}}}")))
    assert "from-env" not in repr(spec)  # nothing secret in the model's repr
    monkeypatch.setenv("LF_TEST_PW", "from-env")
    conf = spec.kafka.client_config()
    assert conf["sasl.password"] == "from-env" and conf["ssl.key.password"] == "from-file"
    assert conf["security.protocol"] == "SASL_SSL"
    monkeypatch.delenv("LF_TEST_PW")
    with pytest.raises(
        ValueError, match=re.escape("kafka.secrets.sasl.password: environment variable LF_TEST_PW is not set")
    ):
        spec.kafka.client_config()
    bad = _write(tmp_path, spec_text.replace("{env: LF_TEST_PW}", "{env: A, file: b}"), "bad.yaml")
    with pytest.raises(
        SpecError, match=re.escape("kafka.secrets.sasl.password: Value error, a secret reference needs exactly one")
    ):
        load_pipeline(bad)


def test_part_idle_default_depends_on_the_sink_type() -> None:
    """Lake sinks wait 1 s of idle input before cutting a part (each part is an object or
    a snapshot); files and PostgreSQL cut at the first empty poll. An explicit
    ``part.idle_ms`` wins, and a ``part:`` block without it keeps the type's default."""
    from app.config.pipeline import PipelineSpec

    def sink(**kw: object) -> dict[str, object]:
        return {"name": f"s{len(kw)}{kw.get('type')}", "input": "t", **kw}

    spec = PipelineSpec.model_validate(
        {
            "pipeline": "p",
            "sinks": [
                sink(type="file", path="/tmp/x"),
                sink(type="s3", bucket="lake", part={"max_rows": 10}),
                sink(type="s3", bucket="lake", part={"idle_ms": 0}, prefix="p"),
                sink(type="iceberg", warehouse="/tmp/w", table="a.b"),
            ],
        }
    )
    assert [s.idle_ms for s in spec.sinks] == [0, 1000, 0, 1000]


def test_standby_replicas_needs_a_state_store_and_is_zero_or_one(tmp_path: Path) -> None:
    def spec(extra: str, stateful: str = "    stateful: {dedupe: {}}\n") -> Path:
        f = tmp_path / "p.yaml"
        f.write_text(f"pipeline: sb\ntransforms:\n  - name: t\n    input: sb.in\n    output: sb.out\n{extra}{stateful}")
        return f

    assert load_pipeline(spec("    standby_replicas: 1\n")).transforms[0].standby_replicas == 1
    assert load_pipeline(spec("")).transforms[0].standby_replicas == 0
    with pytest.raises(SpecError, match="standby_replicas needs a state store"):
        load_pipeline(spec("    standby_replicas: 1\n", stateful=""))
    with pytest.raises(SpecError, match="standby_replicas"):
        load_pipeline(spec("    standby_replicas: 2\n"))
