"""Static checks of deploy/: no Docker engine or cluster runs here, so the files are
parsed and checked for what operators rely on."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_grafana_dashboard_structure() -> None:
    dash = json.loads((DEPLOY / "grafana/ledgerflow.json").read_text())
    assert dash["uid"] and dash["title"] == "ledgerflow"
    titles = {p["title"] for p in dash["panels"]}
    for needed in ("Rows out /s by stage", "Consumer lag", "Commit latency p99", "DLQ rows /s by reason", "Rebalances"):
        assert needed in titles
    for p in dash["panels"]:
        assert p["targets"] and all(t["expr"].count("(") == t["expr"].count(")") for t in p["targets"])
        assert "ledgerflow_" in p["targets"][0]["expr"]
        assert {"h", "w", "x", "y"} <= set(p["gridPos"])


def test_kubernetes_manifests() -> None:
    docs = [d for f in sorted((DEPLOY / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    kinds = [d["kind"] for d in docs]
    assert kinds.count("Deployment") == 3 and kinds.count("PodDisruptionBudget") == 3
    assert {"ConfigMap", "Secret", "Service", "ServiceMonitor"} <= set(kinds)
    for d in (d for d in docs if d["kind"] == "Deployment"):
        spec = d["spec"]["template"]["spec"]
        c = spec["containers"][0]
        assert spec["terminationGracePeriodSeconds"] > 30  # > --grace
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["resources"]["limits"] and spec["securityContext"]["runAsNonRoot"]
        assert any(e["name"] == "LEDGERFLOW_WORKER_ID" for e in c["env"])
        if d["metadata"]["name"].endswith("source"):
            assert d["spec"]["replicas"] == 1
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    assert yaml.safe_load(cm["data"]["pipeline.yaml"])["pipeline"]


def test_compose_and_dockerfile() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:4")
    assert {"source", "transform", "sink", "prometheus", "grafana", "topics"} <= set(services)
    assert services["topics"]["entrypoint"][:3] == ["ledgerflow", "topics", "apply"]
    docker = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r"^USER 10001", docker, re.M) and "HEALTHCHECK" in docker
    assert docker.count("FROM ") == 2  # build tools stay in the first stage
    assert re.search(r'^ENTRYPOINT \["ledgerflow", "run"', docker, re.M)  # exec form: PID 1 gets SIGTERM


def _exported_sample_names() -> set[str]:
    from app.observability.prometheus import PrometheusHooks

    names: set[str] = set()
    for fam in PrometheusHooks("p").registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(fam.type, ("",))
        names |= {fam.name + s for s in suffixes}
    return names


def test_dashboard_and_alerts_only_query_metrics_the_service_exports() -> None:
    exported = _exported_sample_names()
    texts = {
        "grafana/ledgerflow.json": (DEPLOY / "grafana/ledgerflow.json").read_text(),
        "prometheus/alerts.yml": (DEPLOY / "prometheus/alerts.yml").read_text(),
    }
    for path, text in texts.items():
        used = set(re.findall(r"ledgerflow_[a-z_]+", text)) - {"ledgerflow_"}
        assert used, path
        assert used <= exported, f"{path} queries unknown metrics: {sorted(used - exported)}"
    dash = json.loads(texts["grafana/ledgerflow.json"])
    queried = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for family in ("rows_out_total", "consumer_lag", "commit_seconds_bucket", "dlq_rows_total", "parts_total"):
        assert f"ledgerflow_{family}" in queried
    assert "ledgerflow_state_restore_remaining" in queried and "ledgerflow_rebalances_total" in queried


def test_metrics_reference_documents_every_exported_metric() -> None:
    doc = (DEPLOY.parent / "docs/metrics.md").read_text()
    documented = set(re.findall(r"`(ledgerflow_[a-z_]+)`", doc))
    from app.observability.prometheus import PrometheusHooks

    for fam in PrometheusHooks("p").registry.collect():
        shown = fam.name + "_total" if fam.type == "counter" else fam.name
        assert shown in documented, f"docs/metrics.md does not list {shown}"
