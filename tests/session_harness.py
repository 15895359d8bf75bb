"""Session-window pipelines for tests, and their results recomputed from the input.

The reference below is written independently of ``app.transforms.sessions``: a plain
loop over each input partition in offset order, sessions kept as lists."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.conftest import KafkaEnv
from tests.stateful_harness import StatefulPipeline, input_by_partition, write_stateful

# 6 keys (countries); bursts of 200 rows ~3 s apart with up to 1.5 s of disorder:
# sessions split between bursts, and rows arriving late bridge (merge) some of them
GAP_MS, LATENESS_MS = 700, 1_000
SESSION = (
    "      aggregate:\n"
    "        value_field: amount\n"
    "        functions: [count, sum, min, max]\n"
    "        time_field: ts\n"
    f"        window: {{type: session, gap_ms: {GAP_MS}, allowed_lateness_ms: {LATENESS_MS}}}\n"
)


def session_time(row: dict[str, Any]) -> dict[str, Any]:
    """Map step: event time ``ts`` in bursts of 200 ids, each row up to 1.5 s early."""
    i = int(row["id"])
    burst = i // 200
    return {
        **row,
        "ts": 1_700_000_000_000 + burst * 3000 + (burst * 7919 % 7) * 150 + (i % 200) * 10 - (i * 7919) % 1500,
    }


def write_sessions(tmp: Path, name: str, kafka: KafkaEnv, **kw: Any) -> StatefulPipeline:
    """The stateful test pipeline (``tests.stateful_harness``) keyed by country, with
    ``session_time`` event times and the session aggregate."""
    sp = write_stateful(tmp, name, kafka, SESSION, **kw)
    text = sp.spec.read_text().replace("key_field: customer", "key_field: country")
    sp.spec.write_text(text.replace("tests.fns:jitter_time", "tests.session_harness:session_time"))
    return sp


def session_input(kafka: KafkaEnv, topic: str) -> dict[int, list[dict[str, Any]]]:
    """The source's tokens per partition in offset order, with ``session_time`` applied."""
    parts = input_by_partition(kafka, topic)
    for toks in parts.values():
        for tok in toks:
            tok["payload"] = session_time(tok["payload"])
    return parts


@dataclass
class SessionResults:
    sessions: dict[str, dict[str, Any]] = field(default_factory=dict)  # token id -> result payload
    late: int = 0
    merges: int = 0  # rows that joined two or more open sessions into one


def expected_sessions(parts: dict[int, list[dict[str, Any]]], name: str = "agg") -> SessionResults:
    res = SessionResults()
    for toks in parts.values():
        wm: int | None = None
        open_: dict[str, list[list[Any]]] = {}  # key -> [[start, end, amounts], ...]
        for tok in toks:
            t, key, amount = tok["payload"]["ts"], tok["key"], tok["payload"]["amount"]
            if wm is not None and t < wm - LATENESS_MS:
                res.late += 1
                continue
            mine = open_.setdefault(key, [])
            near = [s for s in mine if s[0] - GAP_MS <= t <= s[1] + GAP_MS]
            if len(near) > 1:
                res.merges += 1
            merged = [t, t, [amount]]
            for s in near:
                mine.remove(s)
                merged = [min(merged[0], s[0]), max(merged[1], s[1]), merged[2] + s[2]]
            mine.append(merged)
            if wm is None or t > wm:
                wm = t
                for k in sorted(open_):
                    for s in [s for s in open_[k] if s[1] + GAP_MS + LATENESS_MS < wm]:
                        open_[k].remove(s)
                        vals = s[2]
                        res.sessions[f"{name}:{k}:{s[0]}"] = {
                            "key": k,
                            "window_start": s[0],
                            "window_end": s[1],
                            "count": len(vals),
                            "sum": sum(vals),
                            "min": min(vals),
                            "max": max(vals),
                        }
    return res
