"""Least privilege: with one ACL of the plan taken away, the stage that needs it fails
with the error naming that ACL's resource, and nothing reaches the sink. The default
set takes away READ on the input (topic READ; topic WRITE, group READ and
transactional-id WRITE are taken away in test_refusals.py); -m slow takes away every
other binding of the plan in turn.

Two bindings are exceptions, each shown by its own slow test: the READ the plan grants
for the hanging-transaction check on the DLQ (without it the run still moves data, and
the check says at start that it could not describe that topic's producers), and the
DESCRIBE on the transactional-id prefix, which Kafka's WRITE implies."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from app.security.acl_plan import Acl
from tests.harness import run, sink_lines
from tests.security.secure_env import PASSWORD_ENV, SecureKafka, committed_count, prepare

FAST = {"LEDGERFLOW_CONNECT_WAIT_S": "3", "LEDGERFLOW_ACCESS_WAIT_S": "6"}
REFUSING = '      - map: "tests.security.fns:refuse_every_97th"\n'  # the DLQ is written too

Drop = Callable[[Acl], bool]


def _topic(op: str, suffix: str) -> Drop:
    return lambda a: a.resource == "topic" and a.operation == op and a.name.endswith(suffix)


def _group(suffix: str) -> Drop:
    return lambda a: a.resource == "group" and a.name.endswith(suffix)


SLOW = pytest.mark.slow
# (what, which binding, the resource the error must name, whether the transform is refused too)
CASES = [
    pytest.param("input READ", _topic("Read", ".raw"), "{}.raw", True, id="input-read"),
    pytest.param("journal WRITE", _topic("Write", ".journal"), "{}.journal", True, marks=SLOW, id="journal-write"),
    pytest.param("journal READ", _topic("Read", ".journal"), "{}.journal", False, marks=SLOW, id="journal-read"),
    pytest.param("DLQ WRITE", _topic("Write", ".dlq"), "{}.dlq", True, marks=SLOW, id="dlq-write"),
    pytest.param("source WRITE", _topic("Write", ".raw"), "{}.raw", True, marks=SLOW, id="source-write"),
    pytest.param("sink group", _group(".sink.files"), "{}.sink.files", False, marks=SLOW, id="sink-group"),
    pytest.param("reader groups", _group("ledgerflow-"), "group ledgerflow-*", False, marks=SLOW, id="reader-groups"),
]


@pytest.mark.parametrize(("what", "drop", "names", "transform_refused"), CASES)
def test_one_acl_less_and_the_stage_fails_naming_it(
    secure_kafka: SecureKafka, tmp_path: Path, what: str, drop: Drop, names: str, transform_refused: bool
) -> None:
    r = prepare(secure_kafka, tmp_path, drop=drop, steps=REFUSING)
    assert len(r.dropped) == 1, f"{what}: {r.dropped}"
    proc = run(r.spec, env_extra={PASSWORD_ENV: r.password, **FAST}, timeout=180)
    assert proc.returncode == 1, proc.stderr[-3000:]
    principal = r.acls[0].principal
    refusals = [ln for ln in proc.stderr.splitlines() if f"{principal} is not authorized" in ln]
    assert refusals, proc.stderr[-3000:]
    assert any(names.format(r.name) in ln for ln in refusals), refusals
    assert sink_lines(r.out) == []
    if transform_refused:  # else the transform may commit before another stage's refusal stops the run
        assert committed_count(secure_kafka, f"{r.name}.clean") == 0


@pytest.mark.slow
def test_without_the_hanging_check_read_on_the_dlq_the_run_moves_data_and_the_check_says_why(
    secure_kafka: SecureKafka, tmp_path: Path
) -> None:
    r = prepare(secure_kafka, tmp_path, drop=_topic("Read", ".dlq"))
    proc = run(r.spec, env_extra={PASSWORD_ENV: r.password, **FAST}, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"due to authorization failure on topic `{r.name}.dlq`" in proc.stderr
    assert len(sink_lines(r.out)) == 2_000


@pytest.mark.slow
def test_the_planned_transactional_id_describe_is_implied_by_its_write(
    secure_kafka: SecureKafka, tmp_path: Path
) -> None:
    """Kafka's WRITE implies DESCRIBE: the plan lists DESCRIBE explicitly (as kafka-acls'
    own producer recipe does), and the run does not depend on it."""
    r = prepare(secure_kafka, tmp_path, drop=lambda a: a.resource == "transactional-id" and a.operation == "Describe")
    proc = run(r.spec, env_extra={PASSWORD_ENV: r.password, **FAST}, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(sink_lines(r.out)) == 2_000
