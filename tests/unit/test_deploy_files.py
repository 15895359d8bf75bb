"""Static checks of deploy/: no Docker engine or cluster runs here, so the files are
parsed and checked for what operators rely on."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

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


def _k8s_docs() -> list[dict[str, Any]]:
    return [d for f in sorted((DEPLOY / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return data


def test_kubernetes_manifests() -> None:
    docs = _k8s_docs()
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
    compose = _compose()
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


def _container_specs() -> dict[str, str]:
    """The pipeline specs the containers run, as mounted at /etc/ledgerflow/pipeline.yaml."""
    cm = next(d for d in _k8s_docs() if d["kind"] == "ConfigMap")
    mounts = [v.split(":") for v in _compose()["services"]["sink"]["volumes"]]
    (spec_file,) = [src for src, dst, *_ in mounts if dst == "/etc/ledgerflow/pipeline.yaml"]
    return {"k8s": cm["data"]["pipeline.yaml"], "compose": (DEPLOY / spec_file).read_text()}


def test_container_pipelines_resolve_in_the_image_layout(tmp_path: Path) -> None:
    """Laid out as the image has it (pipeline.yaml next to the image's topics/), each
    container spec loads, declares every topic it uses in a topic file that exists, and
    writes only under the worker's home /var/lib/ledgerflow (uid 10001; compose mounts
    the `lake` volume there). Relative paths in a mounted spec resolve against
    /etc/ledgerflow, which the worker cannot write."""
    import shutil

    from app.config.pipeline import load_pipeline
    from app.config.topics import load_topic_specs

    assert "lake:/var/lib/ledgerflow" in _compose()["services"]["sink"]["volumes"]
    for where, text in _container_specs().items():
        etc = tmp_path / where / "etc" / "ledgerflow"
        shutil.copytree(DEPLOY.parent / "topics", etc / "topics")
        (etc / "pipeline.yaml").write_text(text)
        spec = load_pipeline(etc / "pipeline.yaml")
        assert spec.topic_files, f"{where}: no topic files; run would refuse the missing topics"
        declared = {t.name for t in load_topic_specs(spec.topic_files)}
        assert spec.all_topics() <= declared, f"{where}: undeclared topics {spec.all_topics() - declared}"
        assert spec.state_dir.startswith("/var/lib/ledgerflow/"), f"{where}: state_dir {spec.state_dir}"
        for sink in spec.sinks:
            path = getattr(sink, "path", None)
            assert path is None or str(path).startswith("/var/lib/ledgerflow/"), f"{where}: sink path {path}"
