"""Monitoring proven against a real Prometheus server scraping a running pipeline."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import KafkaEnv
from tests.harness import REPO, popen, sink_lines, uid, wait_for_rows, write_pipeline

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _query(prom: str, expr: str) -> float | None:
    status, body = _get(f"{prom}/api/v1/query?query={urllib.parse.quote(expr)}")
    data = json.loads(body)
    if status != 200 or not data["data"]["result"]:
        return None
    return float(data["data"]["result"][0]["value"][1])


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (deploy/local/bootstrap.sh installs the 'prometheus' package)")
    return path


def test_prometheus_scrapes_counters_equal_to_sink_rows_and_lag_zero(kafka: KafkaEnv, tmp_path: Path) -> None:
    rows = 5000
    pf = write_pipeline(tmp_path, f"prom-{uid()}", kafka, rows=rows)
    mport, pport = _free_port(), _free_port()
    proc = popen(pf.spec, "--worker-id", "w1", "--metrics-port", str(mport), log=tmp_path / "run.log")
    config = yaml.safe_load((REPO / "deploy/prometheus/prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config["rule_files"] = [str(REPO / "deploy/prometheus/alerts.yml")]
    config["scrape_configs"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{mport}"]}]
    (tmp_path / "prom.yml").write_text(yaml.safe_dump(config))
    prom_proc = subprocess.Popen(
        [
            _binary("prometheus"),
            f"--config.file={tmp_path / 'prom.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{pport}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "prom.log", "wb"),  # noqa: SIM115
    )
    prom = f"http://127.0.0.1:{pport}"
    try:
        wait_for_rows(pf.out, rows, proc=proc)
        assert _get(f"http://127.0.0.1:{mport}/healthz")[0] == 200
        assert _get(f"http://127.0.0.1:{mport}/readyz")[0] == 200
        results: dict[str, float | None] = {}
        queries = {
            "sink_rows_out": 'sum(ledgerflow_rows_out_total{stage="sink"})',
            "source_rows_out": 'sum(ledgerflow_rows_out_total{stage="source"})',
            "transform_rows_in": 'sum(ledgerflow_rows_in_total{stage="transform"})',
            "lag": "sum(ledgerflow_consumer_lag)",
            "finalized_parts": 'sum(ledgerflow_parts_total{phase="finalized"})',
            "aborted": 'sum(ledgerflow_transactions_total{outcome="aborted"}) or vector(0)',
        }
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            results = {k: _query(prom, q) for k, q in queries.items()}
            if results["sink_rows_out"] == rows and results["lag"] == 0:
                break
            time.sleep(1)
        print("prometheus query results:", json.dumps(results))
        assert results["sink_rows_out"] == len(sink_lines(pf.out)) == rows
        assert results["source_rows_out"] == rows and results["transform_rows_in"] == rows
        assert results["lag"] == 0
        assert results["finalized_parts"] and results["finalized_parts"] > 0
        status, body = _get(f"{prom}/api/v1/rules")
        assert status == 200 and len(json.loads(body)["data"]["groups"][0]["rules"]) == 7
    finally:
        prom_proc.terminate()
        prom_proc.wait(30)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


def test_promtool_accepts_the_shipped_config_and_rules() -> None:
    promtool = _binary("promtool")
    for args in (["check", "config"], ["check", "rules"]):
        target = "prometheus.yml" if args[1] == "config" else "alerts.yml"
        proc = subprocess.run(
            [promtool, *args, str(REPO / "deploy/prometheus" / target)], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
    rules = yaml.safe_load((REPO / "deploy/prometheus/alerts.yml").read_text())["groups"][0]["rules"]
    assert all("runbook_url" in r["annotations"] for r in rules)
    runbook = (REPO / "docs/runbook.md").read_text()
    for r in rules:
        anchor = r["annotations"]["runbook_url"].split("#")[1]
        assert f"## {anchor.replace('-', ' ')}" in runbook.lower(), f"runbook has no section for #{anchor}"
