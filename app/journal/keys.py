"""Journal keys: the one place that spells them.

The journal is compacted, so a key is the identity of the thing whose latest state
its event records. Every writer and every reader builds keys (and the prefixes it
scans) here, so a key can never be spelled two ways.
"""

from __future__ import annotations


def source_prefix(source_id: str) -> str:
    """Prefix of every checkpoint key of one source."""
    return f"source/{source_id}/"


def checkpoint_key(source_id: str, identity: str) -> str:
    """``source_checkpoint`` of one input of a source (a file identity, ``generator``)."""
    return f"{source_prefix(source_id)}{identity}"


def sink_prefix(sink: str, topic: str | None = None, partition: int | None = None) -> str:
    """Prefix of the part keys of one sink (optionally of one input partition)."""
    if topic is None:
        return f"sink/{sink}/"
    if partition is None:
        return f"sink/{sink}/{topic}/"
    return f"sink/{sink}/{topic}/{partition}/"


def part_key(sink: str, topic: str, partition: int, first_offset: int) -> str:
    """``part_committed`` / ``part_finalized`` of the part starting at ``first_offset``."""
    return f"{sink_prefix(sink, topic, partition)}{first_offset}"


def recovery_key(sink: str, topic: str, partition: int | None = None) -> str:
    """A recovery action of one sink on one input topic (or partition)."""
    base = f"recovery/{sink}/{topic}"
    return base if partition is None else f"{base}/{partition}"


def run_key(run_id: str, stage: str, name: str) -> str:
    """``run_started`` / ``run_stopped`` of one runner of one process run."""
    return f"run/{run_id}/{stage}/{name}"


def hanging_key(topic: str, partition: int, start_offset: int) -> str:
    """``hanging_txn_aborted``: a hanging transaction this pipeline cleared."""
    return f"hanging/{topic}/{partition}/{start_offset}"
