"""A full pipeline on SASL_SSL with exactly the ACLs `acl plan --apply` grants runs
exactly once; its user made with `kafka user add`. The same run, with a known password
at debug level, leaves the password in none of: the logs, exception text, /metrics,
journal events, DLQ records and headers, `inspect`, `validate`, `journal tail` and the
rendered client config."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path

from app.config.pipeline import load_pipeline
from app.kafka.readers import read_topic_to_end
from app.security.acl_plan import plan
from app.security.certs import write_foreign_ca
from tests.harness import (
    LEDGERFLOW,
    REPO,
    PipelineFiles,
    assert_exactly_once,
    free_port,
    popen,
    run,
    sink_lines,
    stop,
    uid,
)
from tests.security.secure_env import PASSWORD_ENV, SecureKafka, secured_spec

ROWS = 2_000


def _cli(spec: Path, *args: str, password: str, data_dir: Path | None = None) -> str:
    import os

    env = {**os.environ, PASSWORD_ENV: password, "PYTHONPATH": str(REPO), "LEDGERFLOW_LOG_LEVEL": "debug"}
    if data_dir is not None:
        env["LEDGERFLOW_KAFKA_DATA"] = str(data_dir)
    proc = subprocess.run(
        [*LEDGERFLOW, *args], capture_output=True, text=True, env=env, cwd=spec.parent, timeout=120, check=False
    )
    assert proc.returncode == 0, f"{args}: {proc.stderr[-2000:]}"
    return proc.stdout + proc.stderr


def test_planned_acls_run_exactly_once_and_the_password_appears_nowhere(
    secure_kafka: SecureKafka, tmp_path: Path
) -> None:
    name, user = f"sec{uid()}", f"app{uid()}"
    password = f"Canary-{uid()}-{uid()}"
    data_dir = secure_kafka.broker.data_dir
    spec = secured_spec(
        tmp_path, name, secure_kafka, user, rows=ROWS, steps='      - map: "tests.security.fns:refuse_every_97th"\n'
    )
    made = _cli(
        spec,
        "kafka",
        "user",
        "add",
        user,
        "--password-env",
        PASSWORD_ENV,
        "--port",
        str(secure_kafka.broker.port),
        password=password,
        data_dir=data_dir,
    )
    assert f"user {user}: SCRAM-SHA-512 credential set (password from ${PASSWORD_ENV})" in made
    secure_kafka.wait_authenticates(user, password)
    secure_kafka.create_topics(name, [f"{name}.raw", f"{name}.clean"])
    applied = _cli(spec, "acl", "plan", str(spec), "--apply", password=password, data_dir=data_dir)
    planned = plan(load_pipeline(spec), f"User:{user}")
    assert f"applied {len(planned)} ACL(s) for pipeline {name} on {secure_kafka.bootstrap}" in applied
    debug = {PASSWORD_ENV: password, "LEDGERFLOW_LOG_LEVEL": "debug"}

    port, log = free_port(), tmp_path / "run.log"
    proc = popen(spec, "--metrics-port", str(port), "--metrics-host", "127.0.0.1", env_extra=debug, log=log)
    dlq_rows = len([i for i in range(ROWS) if i % 97 == 0])
    try:
        deadline = time.monotonic() + 180
        while len(sink_lines(tmp_path / "out")) < ROWS - dlq_rows:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.5)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            metrics = resp.read().decode()
    finally:
        stop(proc)
    assert "ledgerflow_rows_out" in metrics
    refused_ids = {f"gen:{i}" for i in range(ROWS) if i % 97 == 0}
    pf = PipelineFiles(name, spec, tmp_path / "out", f"{name}.raw", f"{name}.clean", ROWS)
    assert_exactly_once(secure_kafka.plain, pf, {f"gen:{i}" for i in range(ROWS)} - refused_ids)

    captured: dict[str, str] = {"run log (debug)": log.read_text(), "/metrics": metrics}
    journal = read_topic_to_end(secure_kafka.broker.bootstrap, f"{name}.journal")
    dlq = read_topic_to_end(secure_kafka.broker.bootstrap, f"{name}.dlq")
    assert journal and len(dlq) == dlq_rows
    captured["journal"] = b"".join((r.key or b"") + (r.value or b"") for r in journal).decode("latin-1")
    captured["dlq"] = b"".join(
        (r.value or b"") + b"".join(k.encode() + v for k, v in (r.headers or [])) for r in dlq
    ).decode("latin-1")
    captured["inspect"] = _cli(spec, "inspect", str(spec), password=password)
    captured["validate"] = _cli(spec, "validate", str(spec), password=password)
    captured["journal tail"] = _cli(spec, "journal", "tail", str(spec), password=password)
    captured["client config"] = _cli(spec, "kafka", "client-config", str(spec), password=password)
    assert f"sasl.password=<secret from env {PASSWORD_ENV}>" in captured["client config"]
    assert "run_started" in captured["journal tail"] and "partition 0: committed" in captured["inspect"]

    # exception text: a refused run (untrusted CA) with the same password, at debug level
    spec.write_text(spec.read_text().replace(str(secure_kafka.ca), str(write_foreign_ca(tmp_path / "o.pem"))))
    refused = run(spec, env_extra={**debug, "LEDGERFLOW_CONNECT_WAIT_S": "3"}, timeout=120)
    assert refused.returncode == 1 and "TLS with the broker failed" in refused.stderr
    captured["refused run"] = refused.stdout + refused.stderr

    leaks = [where for where, text in captured.items() if password in text]
    assert leaks == []
