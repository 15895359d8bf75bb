"""Static checks of the secured deploy examples: the Kubernetes manifests and the
compose overlay run the pipeline on SASL_SSL with its password from a mounted secret
file, and `acl plan` can plan for them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from app.config.pipeline import PipelineSpec, load_pipeline
from app.security.acl_plan import plan

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _spec(text: str, tmp: Path) -> PipelineSpec:
    f = tmp / "pipeline.yaml"
    f.write_text(text)
    return load_pipeline(f)


def _secured(spec: PipelineSpec) -> str:
    assert spec.kafka.config["security.protocol"] == "SASL_SSL"
    assert spec.kafka.config["sasl.mechanism"] == "SCRAM-SHA-512"
    ref = spec.kafka.secrets["sasl.password"]
    assert ref.file is not None and ref.env is None
    assert plan(spec, f"User:{spec.kafka.config['sasl.username']}")
    return ref.file


def test_kubernetes_runs_every_stage_on_sasl_ssl_with_the_password_from_a_mounted_secret(tmp_path: Path) -> None:
    docs: list[dict[str, Any]] = [
        d for f in sorted((DEPLOY / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d
    ]
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    spec = _spec(cm["data"]["pipeline.yaml"], tmp_path)
    password_file = Path(_secured(spec))
    secret = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "ledgerflow-kafka")
    assert {password_file.name, Path(str(spec.kafka.config["ssl.ca.location"])).name} <= set(secret["stringData"])
    for d in (d for d in docs if d["kind"] == "Deployment"):
        pod = d["spec"]["template"]["spec"]
        c = pod["containers"][0]
        mount = next(m for m in c["volumeMounts"] if m["name"] == "kafka-credentials")
        assert mount["mountPath"] == str(password_file.parent) and mount["readOnly"]
        vol = next(v for v in pod["volumes"] if v["name"] == "kafka-credentials")
        assert vol["secret"]["secretName"] == "ledgerflow-kafka"
        assert {"name": "KAFKA_BOOTSTRAP_SERVERS", "value": "kafka:9093"} in c["env"]


def test_the_compose_overlay_secures_the_broker_and_every_stage(tmp_path: Path) -> None:
    overlay = yaml.safe_load((DEPLOY / "docker-compose.secure.yml").read_text())
    kafka_env = overlay["services"]["kafka"]["environment"]
    assert "SASL_SSL://:9094" in kafka_env["KAFKA_LISTENERS"]
    assert kafka_env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"] == "false"
    assert kafka_env["KAFKA_AUTHORIZER_CLASS_NAME"].endswith("StandardAuthorizer")
    spec_file = DEPLOY / "compose" / "pipeline-secure.yaml"
    spec = _spec(spec_file.read_text(), tmp_path)
    assert _secured(spec) == "/run/secrets/kafka_password"
    for stage in ("source", "transform", "sink"):
        svc = overlay["services"][stage]
        assert svc["environment"]["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9094"
        assert "./compose/pipeline-secure.yaml:/etc/ledgerflow/pipeline.yaml:ro" in svc["volumes"]
        assert set(svc["secrets"]) == {"kafka_password", "kafka_ca"}
        assert svc["depends_on"]["acls"] == {"condition": "service_completed_successfully"}
    assert overlay["services"]["acls"]["entrypoint"][:4] == [
        "ledgerflow",
        "acl",
        "plan",
        "/etc/ledgerflow/pipeline.yaml",
    ]
