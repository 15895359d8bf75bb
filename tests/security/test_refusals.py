"""Each refusal stops or parks the stage with ONE error naming what is wrong, and
moves no data: authentication (wrong password, unknown user, untrusted CA, wrong
hostname) at start; authorization (no WRITE on the output, no transactional-id ACL,
no group ACL) when the stage first needs it; a credential deleted mid-run. A stage
refused mid-run parks with readiness false and backoff, and finishes exactly once
when the operator grants what was missing."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from app.security.certs import write_foreign_ca
from tests.harness import (
    PipelineFiles,
    assert_exactly_once,
    free_port,
    popen,
    run,
    sink_lines,
    stop,
    wait_log,
)
from tests.security.secure_env import (
    PASSWORD_ENV,
    SecureKafka,
    committed_count,
    ledgerflow_errors,
    prepare,
)

FAST = {"LEDGERFLOW_CONNECT_WAIT_S": "3", "LEDGERFLOW_ACCESS_WAIT_S": "6"}


def _assert_nothing_moved(env: SecureKafka, name: str, out: Path) -> None:
    assert committed_count(env, f"{name}.clean") == 0
    assert sink_lines(out) == []


def _auth_case(env: SecureKafka, tmp: Path, case: str) -> tuple[str, str]:
    """(stderr, principal) of a run refused at authentication."""
    r = prepare(env, tmp, bootstrap=f"127.0.0.1:{env.broker.sasl_port}" if case == "hostname" else None)
    password, user = r.password, r.acls[0].principal
    if case == "password":
        password = "not-" + password
    if case == "unknown-user":
        text = r.spec.read_text().replace(f"sasl.username: {user[5:]}", "sasl.username: nobody-here")
        r.spec.write_text(text)
        user = "User:nobody-here"
    if case == "untrusted-ca":
        r.spec.write_text(r.spec.read_text().replace(str(env.ca), str(write_foreign_ca(tmp / "other-ca.pem"))))
    proc = run(r.spec, env_extra={PASSWORD_ENV: password, **FAST}, timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = ledgerflow_errors(proc.stderr)
    assert len(errors) == 1, errors
    assert committed_count(env, f"{r.name}.raw") == 0
    _assert_nothing_moved(env, r.name, r.out)
    return errors[0], user


@pytest.mark.parametrize("case", ["password", pytest.param("unknown-user", marks=pytest.mark.slow)])
def test_a_refused_credential_stops_the_run_with_one_error_naming_the_user(
    secure_kafka: SecureKafka, tmp_path: Path, case: str
) -> None:
    error, user = _auth_case(secure_kafka, tmp_path, case)
    assert error == (
        f"Error: kafka {secure_kafka.bootstrap}: authentication failed for {user}: "
        "wrong password, or an unknown or deleted user (refused for 3s)"
    )


@pytest.mark.parametrize("case", ["untrusted-ca", pytest.param("hostname", marks=pytest.mark.slow)])
def test_a_broker_certificate_the_client_cannot_verify_stops_the_run_naming_tls(
    secure_kafka: SecureKafka, tmp_path: Path, case: str
) -> None:
    error, user = _auth_case(secure_kafka, tmp_path, case)
    assert f"TLS with the broker failed for {user}:" in error
    assert "certificate verify failed" in error
    assert "check ssl.ca.location" in error and "names a host the certificate carries" in error


def test_no_transactional_id_acl_stops_every_stage_naming_its_transactional_id(
    secure_kafka: SecureKafka, tmp_path: Path
) -> None:
    r = prepare(secure_kafka, tmp_path, drop=lambda a: a.resource == "transactional-id" and a.operation == "Write")
    proc = run(r.spec, env_extra={PASSWORD_ENV: r.password, **FAST}, timeout=120)
    assert proc.returncode == 1
    errors = ledgerflow_errors(proc.stderr)
    user = r.acls[0].principal
    assert len(errors) == 3, errors
    stages = {stage for stage, _ in _stopped(errors)}
    assert stages == {"source gen", "transform shape", "sink files"}
    for _stage, text in _stopped(errors):
        assert text.startswith(f"stopped: refused by the cluster: {user} is not authorized on transactional id ")
        assert "it needs WRITE and DESCRIBE on the pipeline's transactional-id prefix" in text
    assert committed_count(secure_kafka, f"{r.name}.raw") == 0
    _assert_nothing_moved(secure_kafka, r.name, r.out)


def _stopped(errors: list[str]) -> list[tuple[str, str]]:
    out = []
    for ln in errors:
        body = ln.split(" ERROR ledgerflow.run: ", 1)[1]
        kind, name, rest = body.split(" ", 2)
        out.append((f"{kind} {name}", rest))
    return out


def test_no_group_acl_stops_the_transform_naming_its_group(secure_kafka: SecureKafka, tmp_path: Path) -> None:
    r = prepare(secure_kafka, tmp_path, drop=lambda a: a.resource == "group" and a.name.endswith(".transform.shape"))
    proc = run(r.spec, env_extra={PASSWORD_ENV: r.password, **FAST}, timeout=120)
    assert proc.returncode == 1
    refusals = [ln for ln in ledgerflow_errors(proc.stderr) if "refused" in ln or "authoriz" in ln]
    assert [ln.split(" ERROR ledgerflow.run: ", 1)[1] for ln in refusals] == [
        f"transform shape stopped: refused by the cluster: {r.acls[0].principal} is not authorized "
        f"on consumer group ledgerflow.{r.name}.transform.shape: it needs READ on the group"
    ]
    _assert_nothing_moved(secure_kafka, r.name, r.out)


def _ready(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_no_write_on_the_output_parks_the_transform_until_granted_then_exactly_once(
    secure_kafka: SecureKafka, tmp_path: Path
) -> None:
    r = prepare(
        secure_kafka,
        tmp_path,
        drop=lambda a: a.resource == "topic" and a.operation == "Write" and a.name.endswith(".clean"),
    )
    port, log = free_port(), tmp_path / "run.log"
    proc = popen(
        r.spec,
        "--exit-when-done",
        "--metrics-port",
        str(port),
        "--metrics-host",
        "127.0.0.1",
        env_extra={PASSWORD_ENV: r.password, "LEDGERFLOW_ACCESS_WAIT_S": "600"},
        log=log,
    )
    try:
        wait_log(log, "transform shape: refused by the cluster:", proc, timeout=120)
        assert _ready(port) == 503
        assert committed_count(secure_kafka, f"{r.name}.clean") == 0
        assert sink_lines(r.out) == []
        secure_kafka.grant(r.dropped)
        proc.wait(180)
    finally:
        stop(proc)
    text = log.read_text()
    assert proc.returncode == 0, text[-3000:]
    errors = ledgerflow_errors(text)
    assert errors == [ln for ln in errors if "transform shape: refused by the cluster:" in ln] and len(errors) == 1
    assert f"{r.acls[0].principal} is not authorized on topic {r.name}.clean" in errors[0]
    assert "access restored; committing again" in text
    pf = PipelineFiles(r.name, r.spec, r.out, f"{r.name}.raw", f"{r.name}.clean", 2_000)
    assert_exactly_once(secure_kafka.plain, pf, {f"gen:{i}" for i in range(2_000)})


def test_a_credential_deleted_mid_run_stops_the_stages_naming_authentication_and_loses_nothing(
    secure_kafka: SecureKafka, tmp_path: Path
) -> None:
    from app.security.scram import delete_user, upsert_user

    rows = 20_000
    r = prepare(secure_kafka, tmp_path, rows=rows, rate_per_s=2_000)
    user = r.acls[0].principal
    log = tmp_path / "run.log"
    proc = popen(r.spec, "--exit-when-done", env_extra={PASSWORD_ENV: r.password, **FAST}, log=log)
    try:
        deadline = time.monotonic() + 120
        while not sink_lines(r.out):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        delete_user(secure_kafka.bootstrap, secure_kafka.admin_settings(), user[5:])
        proc.wait(180)
    finally:
        stop(proc)
    text = log.read_text()
    assert proc.returncode == 1, text[-3000:]
    errors = ledgerflow_errors(text)
    assert errors and all(f"authentication failed for {user}" in ln for ln in errors), errors
    assert len(sink_lines(r.out)) < rows  # it stopped mid-run

    # the operator restores the credential: a rerun finishes, every row exactly once
    upsert_user(secure_kafka.bootstrap, secure_kafka.admin_settings(), user[5:], r.password)
    secure_kafka.wait_authenticates(user[5:], r.password)
    again = run(r.spec, env_extra={PASSWORD_ENV: r.password}, timeout=240)
    assert again.returncode == 0, again.stderr[-3000:]
    pf = PipelineFiles(r.name, r.spec, r.out, f"{r.name}.raw", f"{r.name}.clean", rows)
    assert_exactly_once(secure_kafka.plain, pf, {f"gen:{i}" for i in range(rows)})
