"""The Java anchors of the eos scenario: Kafka Streams, the broker's transactional
ceiling (ProducerPerformance + ConsumerPerformance) and the TransactionalMessageCopier.

Kafka Streams comes from Maven Central at the broker's version (``mvn dependency:get``,
jars copied under ``~/.cache/ledgerflow/kafka-streams-<version>``) and runs as a single
source file (``java -cp <jars> StreamsMap.java``): no build step.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

from app.kafka.local_broker import LocalBroker, cache_dir, kafka_version, resolve_jars
from tests.procs import die_with_parent

STREAMS_JAVA = Path(__file__).with_name("StreamsMap.java")
# ledgerflow's producer settings (app.kafka.clients.TxnProducer), given to every Java producer
PRODUCER_PROPS = ("linger.ms=5", "batch.size=1000000", "compression.type=lz4", "enable.idempotence=true")


def streams_classpath() -> str:
    """kafka-streams and rocksdbjni jars (resolved once) plus the broker's libs."""
    version = kafka_version()
    libs = resolve_jars(version)
    home = cache_dir() / f"kafka-streams-{version}"
    marker = home / ".complete"
    if not marker.exists():
        home.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mvn", "-q", "-B", "dependency:get", f"-Dartifact=org.apache.kafka:kafka-streams:{version}"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        m2 = Path.home() / ".m2" / "repository"
        jars = [m2 / "org/apache/kafka/kafka-streams" / version / f"kafka-streams-{version}.jar"]
        jars += sorted((m2 / "org/rocksdb/rocksdbjni").glob("*/rocksdbjni-*.jar"))[-1:]
        for jar in jars:
            shutil.copy(jar, home / jar.name)
        marker.write_text(version)
    return ":".join([*(str(j) for j in sorted(home.glob("*.jar"))), f"{libs}/*"])


def streams_proc(
    bootstrap: str, src: str, dst: str, app_id: str, guarantee: str, commit_ms: int, state: Path, log: Path
) -> subprocess.Popen[bytes]:
    quiet = cache_dir() / "tools-log4j2.properties"  # written by LocalBroker.tool_command
    cmd = ["java", "-Xmx512m", f"-Dlog4j2.configurationFile={quiet}", "-cp", streams_classpath(), str(STREAMS_JAVA)]
    cmd += [bootstrap, src, dst, app_id, guarantee, str(commit_ms), str(state)]
    return subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=open(log, "ab"), preexec_fn=die_with_parent, cwd=log.parent
    )


def tools() -> LocalBroker:
    return LocalBroker(Path("/tmp") / "ledgerflow-tools")


def copier_procs(
    bootstrap: str, src: str, dst: str, group: str, parts: int, txn_size: int, log: Path
) -> list[subprocess.Popen[bytes]]:
    """One copier per partition in group mode (the consumer subscribes, offsets go into
    the transaction with the group metadata, KIP-447), ``txn_size`` messages per transaction."""
    broker = tools()
    return [
        subprocess.Popen(
            broker.tool_command(
                "copier",
                [
                    *("--input-topic", src, "--input-partition", str(p), "--output-topic", dst),
                    *("--consumer-group", group, "--transactional-id", f"{group}-{p}"),
                    *("--transaction-size", str(txn_size), "--max-messages", "-1"),
                    "--group-mode",
                    "--use-group-metadata",
                ],
                bootstrap=bootstrap,
            ),
            stdout=open(log, "ab"),  # its progress and errors are JSON lines on stdout
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        for p in range(parts)
    ]


def ceiling(bootstrap: str, topic: str, rows: int, payloads: Path, group: str, log: Path) -> tuple[float, float, str]:
    """The broker's transactional ceiling: ProducerPerformance (one transaction per 100 ms,
    ledgerflow's producer settings, payloads drawn from the bench's own JSON rows) while
    ConsumerPerformance reads the same rows read_committed. Returns (rows/s, wall s, note).

    The rate is the producer's steady rate: its first 10% of records are warm-up
    (``--warmup-records``), as every other contender's first 10% are outside the steady
    window. The consumer's rate is in the note; its fetch time includes waiting for the
    producer's start, so it reads low and is not the ceiling."""
    broker = tools()
    err = open(log, "ab")  # noqa: SIM115 - outlives this call's scope in the child
    consumer = subprocess.Popen(
        broker.tool_command(
            "consumer-perf",
            [
                *("--topic", topic, "--num-records", str(rows), "--group", group, "--timeout", "120000"),
                *("--command-property", "isolation.level=read_committed", "auto.offset.reset=earliest"),
            ],
            bootstrap=bootstrap,
        ),
        stdout=subprocess.PIPE,
        stderr=err,
        preexec_fn=die_with_parent,
    )
    t0 = time.monotonic()
    produced = subprocess.run(
        broker.tool_command(
            "producer-perf",
            [
                *("--topic", topic, "--num-records", str(rows), "--throughput", "-1"),
                *("--payload-file", str(payloads), "--transactional-id", f"{group}-txn"),
                *("--transaction-duration-ms", "100", "--warmup-records", str(rows // 10)),
                *("--command-property", *PRODUCER_PROPS),
            ],
            bootstrap=bootstrap,
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    out, _ = consumer.communicate(timeout=300)
    err.close()
    wall = time.monotonic() - t0
    with open(log, "a") as fh:
        fh.write(produced.stdout + produced.stderr + out.decode())
    steady = [ln for ln in produced.stdout.splitlines() if "steady state" in ln.lower()]
    m = re.search(r"([\d.]+) records/sec", (steady or produced.stdout.splitlines() or [""])[-1])
    prod_rate = float(m.group(1)) if m else 0.0
    lines = [ln for ln in out.decode().splitlines() if ln and ln[0].isdigit()]
    # start.time, end.time, MB, MB.sec, nMsg, nMsg.sec, rebalance.time.ms, fetch.time.ms, fetch.MB.sec, fetch.nMsg.sec
    fields = [f.strip() for f in lines[-1].split(",")] if lines else []
    cons_rate = float(fields[9]) if len(fields) >= 10 else 0.0
    consumed = int(float(fields[4])) if len(fields) >= 5 else 0
    note = (
        f"producer {prod_rate:,.0f} rows/s (txn every 100 ms), read_committed consumer "
        f"{cons_rate:,.0f} rows/s (fetch time), {consumed:,} rows read"
    )
    return prod_rate, wall, note
