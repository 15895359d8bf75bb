"""A fenced producer is healed in the process; a real zombie stops, naming both runs.

Both run real pipelines on the real broker. The fence is made the way a coordinator
restart or move makes it: something registers the stage's transactional id again
(``init_transactions`` bumps the epoch), without another live instance of the stage.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pytest

from app.cli.run_cmd import run_spec
from app.config.pipeline import load_pipeline
from app.kafka.clients import TxnProducer
from app.observability.prometheus import PrometheusHooks
from tests.conftest import KafkaEnv
from tests.harness import assert_exactly_once, popen, sink_lines, stop, uid, wait_for_rows, write_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.crash]


def _paced(tmp_path: Path, kafka: KafkaEnv, name: str, rows: int, rate: int) -> object:
    src = f"  - {{name: gen, type: generator, topic: {name}.raw, rows: {rows}, seed: 11, rate_per_s: {rate}}}\n"
    return write_pipeline(tmp_path, name, kafka, rows=rows, part_rows=1000, source_block=src)


def test_a_fenced_producer_is_recreated_without_a_restart(kafka: KafkaEnv, tmp_path: Path) -> None:
    rows = 6_000
    name = f"heal-{uid()}"
    pf = _paced(tmp_path, kafka, name, rows, 1_000)
    spec = load_pipeline(pf.spec)  # type: ignore[attr-defined]
    hooks = PrometheusHooks(spec.pipeline)
    result: dict[str, int] = {}
    runner = threading.Thread(
        target=lambda: result.setdefault(
            "code", run_spec(spec, stage="all", worker_id="h1", exit_when_done=True, metrics_port=None, hooks=hooks)
        ),
        daemon=True,
    )
    runner.start()
    wait_for_rows(pf.out, 1_000, timeout=120)  # type: ignore[attr-defined]
    for stage in ("transform.shape", "sink.files"):  # a coordinator that re-registered the ids
        TxnProducer(kafka.bootstrap, f"ledgerflow.{name}.{stage}.h1").init()
    runner.join(240)
    assert not runner.is_alive(), "the pipeline did not finish after its producers were fenced"
    assert result.get("code") == 0
    for stage in ("transform", "sink"):
        labels = {"pipeline": spec.pipeline, "stage": stage, "reason": "fenced"}
        reinit = sum(
            s.value
            for m in hooks.registry.collect()
            if m.name == "ledgerflow_producer_reinit"
            for s in m.samples
            if s.name.endswith("_total") and all(s.labels.get(k) == v for k, v in labels.items())
        )
        assert reinit >= 1, f"{stage}: no producer re-creation counted"
    assert_exactly_once(kafka, pf, {f"gen:{i}" for i in range(rows)})  # type: ignore[arg-type]


@pytest.mark.serial  # two workers racing on the session timeout
def test_a_second_live_instance_with_the_same_worker_id_stops_the_older(kafka: KafkaEnv, tmp_path: Path) -> None:
    """Two sink processes with the same worker id (a real zombie, not a broker fault):
    the older one finds the newer's ``run_started`` and stops with exit code 3 naming
    both runs; the newer one finishes the work exactly once."""
    rows = 8_000
    pf = _paced(tmp_path, kafka, f"zomb2-{uid()}", rows, 800)
    logs = {n: tmp_path / f"{n}.log" for n in ("src", "tr", "old", "new")}
    src = popen(pf.spec, "--stage", "source", "--worker-id", "src", log=logs["src"])  # type: ignore[attr-defined]
    tr = popen(pf.spec, "--stage", "transform", "--worker-id", "t1", log=logs["tr"])  # type: ignore[attr-defined]
    old = popen(pf.spec, "--stage", "sink", "--worker-id", "same", log=logs["old"])  # type: ignore[attr-defined]
    new = None
    try:
        wait_for_rows(pf.out, 1_000, timeout=120, proc=old)  # type: ignore[attr-defined]
        new = popen(pf.spec, "--stage", "sink", "--worker-id", "same", log=logs["new"])  # type: ignore[attr-defined]
        assert old.wait(180) == 3, logs["old"].read_text()[-3000:]
        wait_for_rows(pf.out, rows, timeout=240, proc=new)  # type: ignore[attr-defined]
        time.sleep(2)
    finally:
        stop(*(p for p in (src, tr, old, new) if p is not None))
    text = logs["old"].read_text()
    assert "is a zombie: worker same run" in text and "started later with the same transactional id" in text, text[
        -3000:
    ]
    assert new is not None and new.returncode in (0, -signal.SIGTERM), logs["new"].read_text()[-3000:]
    assert len(sink_lines(pf.out)) == rows  # type: ignore[attr-defined]
    assert_exactly_once(kafka, pf, {f"gen:{i}" for i in range(rows)})  # type: ignore[arg-type]
