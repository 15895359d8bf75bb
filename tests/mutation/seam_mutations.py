"""Mutation check of the commit seam: every swap of two adjacent durability steps in
``app/runtime/commit.py`` must make ``tests/unit/test_seam.py`` fail.

Run: ``.venv/bin/python -m tests.mutation.seam_mutations`` (``-k TEXT`` runs only the
mutations whose description contains TEXT; ``-v`` shows the failing tests' output).

Each mutation is a list of exact text substitutions. They are applied to a copy of the
module's source written to a temporary directory; pytest then runs the seam tests with
``tests.mutation._loader`` executing that copy as ``app.runtime.commit`` (the real file is
never modified). A mutation is *killed* when a test fails, *SURVIVED* when all pass.
A snippet that no longer occurs exactly once in the module is reported as STALE (the
seam changed: update the list). Exit status 0 only if the unmutated module passes and
every mutation is killed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TARGET = REPO / "app" / "runtime" / "commit.py"
TESTS = "tests/unit/test_seam.py"


@dataclass(frozen=True)
class Mutation:
    description: str
    subs: tuple[tuple[str, str], ...]  # (exact snippet, replacement), applied in order


def _m(description: str, *subs: tuple[str, str]) -> Mutation:
    return Mutation(description, subs)


# Snippets of the current module, shared by several mutations.
PREPARE_LOOP = """            for part in parts:
                prepared.append(sink.prepare(part))  # 1 the sink's acknowledgement
"""
AFTER_PREPARE = """        if prepared:  # a batch that only journals earlier parts' finalization prepares nothing
            crash_point("sink.after_prepare")
"""
EXTERNAL_BLOCK = """        outcomes: list[Outcome] = []
        if sink.external:
            try:
                for p in prepared:
                    outcomes.append(sink.commit_external(p))  # 2 a transactional sink's commit point
            except SinkFenced as exc:
                self.hooks.on_fenced(self.stage, self.name)
                raise BatchAborted(str(exc), external_committed=bool(outcomes)) from exc
            crash_point("sink.db_after_commit_before_kafka")
        else:
            outcomes = [sink.commit_external(p) for p in prepared]
"""
TRANSACT_PARTS = """        try:
            self._transact([], [], dlq, journal, offsets)  # 4-6
"""
ABORT_RERAISE = """            raise BatchAborted(str(exc), external_committed=sink.external) from exc
"""
ON_COMMIT_PARTS = """        self.hooks.on_commit(report)  # 7
"""
FINALIZE_CALL = """            self._finalize(committed)  # 8
"""
RECOVER_FINALIZE = """        for info in plan.finalize:
            renamed = sink.finalize(info)
            self.hooks.on_recovery(self.stage, self.name, "finalized" if renamed else "already_final")
            self._pending.append(self._part_event("part_finalized", info))
"""
RECOVER_STAGING = """        for location in plan.discard:
            sink.remove_staging(location)
"""
RECOVER_TRANSACT = """        if dlq or offsets or journal or self._pending:
            self._transact([], [], dlq, journal, offsets)
"""
BEGIN = """            self._call("begin", producer.begin)
"""
OUTPUTS = """            for out in outputs:
                producer.produce_batch(out.topic, out.values, out.keys, out.headers)
"""
CHANGELOG = """            for cl in changelog:
                producer.produce_batch(cl.topic, cl.values, cl.keys, partition=cl.partition, on_last=cl.on_last)
"""
DLQ = """            for value in dlq:
                producer.produce(self.dlq_topic, value, None, self._dlq_header)
"""
JOURNAL = """            for ev in events:
                producer.produce(self.journal_topic, encode_event(ev), ev.key.encode())
"""
SEND_OFFSETS = """            if offsets:
                consumer = self.consumer
                if consumer is None:
                    raise RuntimeError(f"{stage} {self.name}: offsets in a batch of a runner without a consumer")
                self._call("send_offsets", lambda: producer.send_offsets(offsets, consumer))
"""
COMMIT = """            self._call("commit", producer.commit)  # ---- THE COMMIT POINT ----
"""
TRANSACT_BATCH = """        self._transact(batch.outputs, batch.changelog, batch.dlq, batch.journal, batch.offsets)
"""
AFTER_COMMIT = """        if batch.after_commit is not None:
            self.producer.serve_callbacks()  # delivery reports carry the changelog offsets
            crash_point("state.after_commit_before_local_write")
            batch.after_commit()
"""
ON_COMMIT_BATCH = """        self.hooks.on_commit(report)
        return report
"""
REPORT_NOW = (
    "        self.hooks.on_commit(CommitReport(stage=self.stage, name=self.name,"
    " rows_in=sum(part.records_in for part in parts), rows_out=sum(info.rows for info in committed),"
    " dlq=reasons, parts=len(committed), offsets=tuple(offsets), checkpoints=0, filtered={}, seconds=0.0))\n"
)

MUTATIONS: list[Mutation] = [
    # -- commit_parts ---------------------------------------------------------------
    _m(
        "commit_parts: prepare/commit_external (each part committed externally before the next is prepared)",
        (
            "        prepared: list[Prepared] = []\n",
            "        prepared: list[Prepared] = []\n        early: list[Outcome] = []\n",
        ),
        (PREPARE_LOOP, PREPARE_LOOP + "                early.append(sink.commit_external(prepared[-1]))\n"),
        (
            "                for p in prepared:\n                    outcomes.append(sink.commit_external(p))",
            "                outcomes.extend(early)",
        ),
        ("            outcomes = [sink.commit_external(p) for p in prepared]\n", "            outcomes = early\n"),
    ),
    _m(
        "commit_parts: crash point sink.after_prepare / commit_external",
        (
            AFTER_PREPARE + EXTERNAL_BLOCK,
            EXTERNAL_BLOCK + AFTER_PREPARE,
        ),
    ),
    _m(
        "commit_parts: commit_external/transact (Kafka commits before the sink's external commit)",
        (EXTERNAL_BLOCK, "        outcomes: list[Outcome] = [Outcome(p.info) for p in prepared]\n"),
        (
            ABORT_RERAISE,
            ABORT_RERAISE
            + """        if sink.external:
            try:
                for p in prepared:
                    sink.commit_external(p)
            except SinkFenced as exc:
                self.hooks.on_fenced(self.stage, self.name)
                raise BatchAborted(str(exc), external_committed=True) from exc
        else:
            for p in prepared:
                sink.commit_external(p)
""",
        ),
    ),
    _m(
        "commit_parts: transact/on_commit (hooks see the report before the commit point)",
        (TRANSACT_PARTS, REPORT_NOW + TRANSACT_PARTS),
        (ON_COMMIT_PARTS, ""),
    ),
    _m(
        "commit_parts: on_commit/finalize (parts finalized before the hooks see the report)",
        (ON_COMMIT_PARTS, ""),
        (FINALIZE_CALL, FINALIZE_CALL + "        self.hooks.on_commit(report)\n"),
    ),
    _m(
        "commit_parts: finalize/transact (parts made visible before the Kafka commit point)",
        (TRANSACT_PARTS, "        if sink.two_phase:\n            self._finalize(committed)\n" + TRANSACT_PARTS),
        (FINALIZE_CALL, "            pass\n"),
    ),
    _m(
        "commit_parts: discard on abort left out",
        ("                self._discard(prepared)\n" + ABORT_RERAISE, "                pass\n" + ABORT_RERAISE),
    ),
    _m(
        "commit_parts: discard also when the producer is lost (outcome unknown)",
        (
            "        except BatchAborted as exc:\n            if sink.two_phase:",
            "        except ProducerLost:\n            self._discard(prepared)\n            raise\n"
            "        except BatchAborted as exc:\n            if sink.two_phase:",
        ),
    ),
    _m(
        "commit_parts: a zero-row part discarded after the transaction instead of before",
        (
            "        committed: list[PartInfo] = []\n",
            "        committed: list[PartInfo] = []\n        empty: list[Prepared] = []\n",
        ),
        (
            "                sink.discard(p)  # nothing to make visible",
            "                empty.append(p)  # nothing to make visible",
        ),
        (ABORT_RERAISE, ABORT_RERAISE + "        for p in empty:\n            sink.discard(p)\n"),
    ),
    _m(
        "commit_parts: a failed prepare leaves the prepared parts staged",
        (
            "        except BaseException:\n            self._discard(prepared)\n            raise\n",
            "        except BaseException:\n            raise\n",
        ),
    ),
    _m(
        "_finalize: part_finalized queued before the rename",
        (
            """            sink.finalize(info)
            crash_point("sink.after_finalize")
            self._pending.append(self._part_event("part_finalized", info))
""",
            """            self._pending.append(self._part_event("part_finalized", info))
            sink.finalize(info)
            crash_point("sink.after_finalize")
""",
        ),
    ),
    _m(
        "_finalize: on_part_finalized before the rename",
        (
            """            sink.finalize(info)
            crash_point("sink.after_finalize")
            self._pending.append(self._part_event("part_finalized", info))
            self.hooks.on_part_finalized(self.stage, self.name, info)
""",
            """            self.hooks.on_part_finalized(self.stage, self.name, info)
            sink.finalize(info)
            crash_point("sink.after_finalize")
            self._pending.append(self._part_event("part_finalized", info))
""",
        ),
    ),
    # -- recover_parts --------------------------------------------------------------
    _m(
        "recover_parts: finalize/transaction (the transaction runs before the parts are finalized)",
        (RECOVER_FINALIZE, ""),
        (RECOVER_TRANSACT, RECOVER_TRANSACT + RECOVER_FINALIZE),
    ),
    _m(
        "recover_parts: finalize/remove_staging",
        (RECOVER_FINALIZE, ""),
        (RECOVER_STAGING, RECOVER_STAGING + RECOVER_FINALIZE),
    ),
    # -- _transact ------------------------------------------------------------------
    _m("_transact: begin/produce outputs", (BEGIN + OUTPUTS, OUTPUTS + BEGIN)),
    _m(
        "_transact: outputs/changelog",
        (OUTPUTS, CHANGELOG),
        (CHANGELOG + "            if changelog:", OUTPUTS + "            if changelog:"),
    ),
    _m("_transact: changelog/dlq", (CHANGELOG, DLQ), (DLQ + JOURNAL, CHANGELOG + JOURNAL)),
    _m("_transact: dlq/journal", (DLQ + JOURNAL, JOURNAL + DLQ)),
    _m(
        "_transact: journal/send_offsets",
        (
            JOURNAL + '            crash_point("journal.after_write")\n' + SEND_OFFSETS,
            SEND_OFFSETS + JOURNAL + '            crash_point("journal.after_write")\n',
        ),
    ),
    _m(
        "_transact: send_offsets/commit",
        (
            SEND_OFFSETS + '            crash_point(f"{stage}.before_commit")\n' + COMMIT,
            COMMIT + SEND_OFFSETS + '            crash_point(f"{stage}.before_commit")\n',
        ),
    ),
    _m(
        "_transact: crash point journal.after_write / journal",
        (
            JOURNAL + '            crash_point("journal.after_write")\n',
            '            crash_point("journal.after_write")\n' + JOURNAL,
        ),
    ),
    _m(
        "_transact: crash point before_commit / send_offsets",
        (
            SEND_OFFSETS + '            crash_point(f"{stage}.before_commit")\n',
            '            crash_point(f"{stage}.before_commit")\n' + SEND_OFFSETS,
        ),
    ),
    _m(
        "_transact: queued events cleared before the commit point",
        (COMMIT, "            self._pending.clear()\n" + COMMIT),
        (
            '        crash_point(f"{stage}.after_commit")\n        self._pending.clear()\n',
            '        crash_point(f"{stage}.after_commit")\n',
        ),
    ),
    _m(
        "_transact: abort/BatchAborted (raise without aborting the transaction)",
        (
            "            self._abort(exc)\n            raise BatchAborted(str(exc)) from exc\n",
            "            raise BatchAborted(str(exc)) from exc\n",
        ),
    ),
    # -- commit ---------------------------------------------------------------------
    _m(
        "commit: transact/after_commit (local state applied before the commit point)",
        (TRANSACT_BATCH + AFTER_COMMIT, AFTER_COMMIT + TRANSACT_BATCH),
    ),
    _m(
        "commit: after_commit/on_commit (hooks before local state is applied)",
        (AFTER_COMMIT, ""),
        (ON_COMMIT_BATCH, "        self.hooks.on_commit(report)\n" + AFTER_COMMIT + "        return report\n"),
    ),
    _m(
        "commit: serve_callbacks/after_commit (state applied before the changelog offsets are known)",
        (
            """            self.producer.serve_callbacks()  # delivery reports carry the changelog offsets
            crash_point("state.after_commit_before_local_write")
            batch.after_commit()
""",
            """            crash_point("state.after_commit_before_local_write")
            batch.after_commit()
            self.producer.serve_callbacks()  # delivery reports carry the changelog offsets
""",
        ),
    ),
    _m(
        "commit: transact/on_commit (hooks see the report before the commit point)",
        (
            TRANSACT_BATCH,
            "        self.hooks.on_commit("
            "CommitReport(self.stage, self.name, batch.rows_in, 0, {}, 0, (), 0, {}, 0.0))\n" + TRANSACT_BATCH,
        ),
        (ON_COMMIT_BATCH, "        return report\n"),
    ),
]


def mutate(source: str, m: Mutation) -> str:
    """Apply ``m`` to ``source``; ``ValueError`` when a snippet does not occur exactly once."""
    for old, new in m.subs:
        n = source.count(old)
        if n != 1:
            raise ValueError(f"snippet occurs {n} times: {old.splitlines()[0].strip()!r}")
        source = source.replace(old, new)
    return source


def run_tests(path: Path, verbose: bool) -> tuple[bool, str]:
    """Run the seam tests against the module at ``path``; (all passed, output tail)."""
    env = {**os.environ, "LEDGERFLOW_SEAM_MUTANT": str(path), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("LEDGERFLOW_CRASH_AT", None)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests.mutation._loader", "-q", "-x"]
    cmd += ["--no-header", "-o", "addopts=", TESTS]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    lines = [ln.split(" - ")[0] for ln in proc.stdout.splitlines() if ln.startswith(("FAILED", "ERROR"))]
    tail = "\n".join(proc.stdout.splitlines()[-40:]) if verbose else "; ".join(lines)[:300]
    return proc.returncode == 0, tail


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-k", default="", help="only mutations whose description contains this text")
    ap.add_argument("-v", action="store_true", help="show the test output of each run")
    args = ap.parse_args(argv)
    source = TARGET.read_text()
    chosen = [m for m in MUTATIONS if args.k in m.description]
    bad = 0
    with tempfile.TemporaryDirectory(prefix="seam-mutants-") as tmp:
        base = Path(tmp) / "commit.py"
        base.write_text(source)
        ok, tail = run_tests(base, args.v)
        if not ok:
            print(f"the unmutated seam fails its tests; fix that first\n{tail}")
            return 2
        print(f"baseline: {TESTS} passes against an unmutated copy of {TARGET.relative_to(REPO)}")
        width = max(len(m.description) for m in chosen) if chosen else 0
        for i, m in enumerate(chosen, 1):
            started = time.monotonic()
            try:
                mutated = mutate(source, m)
                compile(mutated, f"mutant-{i}.py", "exec")
            except (ValueError, SyntaxError) as exc:
                print(f"{i:2d}. {m.description:<{width}}  STALE ({exc})")
                bad += 1
                continue
            if mutated == source:
                print(f"{i:2d}. {m.description:<{width}}  STALE (no change)")
                bad += 1
                continue
            path = Path(tmp) / f"mutant_{i}" / "commit.py"
            path.parent.mkdir()
            path.write_text(mutated)
            passed, tail = run_tests(path, args.v)
            verdict = "SURVIVED" if passed else "killed"
            bad += passed
            print(f"{i:2d}. {m.description:<{width}}  {verdict}  ({time.monotonic() - started:.1f}s)")
            if tail:
                print(f"      {tail}")
    total = len(chosen)
    print(f"{total - bad}/{total} mutations killed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
