"""Regression guard for the benchmark harness: it runs, every contender accounts for
every row, and the numbers are sane. No timing thresholds: speed is reported by
`make bench`, not asserted here."""

from __future__ import annotations

import pytest

from tests.bench.harness import main
from tests.conftest import KafkaEnv

pytestmark = pytest.mark.integration


def test_harness_smoke(kafka: KafkaEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", kafka.bootstrap)
    results = main(
        [
            *(
                "--rows",
                "4000",
                "--sink-rows",
                "4000",
                "--scenarios",
                "eos,files,pg",
                "--contenders",
                "ledgerflow,columnar,raw,copier",
            ),
            *("--timeout", "120", "--pg-port", "35641", "--hop-latency-seconds", "0"),
        ]
    )
    by_name = {(r.scenario, r.contender): r for r in results}
    expected = {
        ("eos transform", "ledgerflow"),
        ("eos transform", "raw confluent-kafka loop"),
        ("eos transform", "Kafka TransactionalMessageCopier (Java)"),
        ("eos transform", "ledgerflow declarative steps (columnar)"),
        ("eos transform", "ledgerflow map_batch (columnar)"),
        ("eos transform", "Python raw EOS passthrough"),
        ("file sink", "ledgerflow file sink (Parquet)"),
        ("file sink", "raw consume + pyarrow write"),
        ("postgres sink", "ledgerflow PostgreSQL sink"),
        ("postgres sink", "raw consume + plain COPY"),
    }
    assert expected <= set(by_name)
    for key in expected:
        r = by_name[key]
        assert "only" not in r.note, f"{key}: not every row was committed: {r.note}"
        assert r.rows == 4000 and r.rows_per_s is not None and r.rows_per_s > 0, key
        assert r.wall_s is not None and r.wall_s > 0, key
    for key in (("postgres sink", "ledgerflow PostgreSQL sink"), ("postgres sink", "raw consume + plain COPY")):
        assert by_name[key].note.startswith("4,000 rows in the table"), (key, by_name[key].note)
