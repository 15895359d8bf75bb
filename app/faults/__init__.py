"""Named crash points for the crash matrix.

``LEDGERFLOW_CRASH_AT=point[:nth][,point[:nth]...]`` makes the process exit with
status 86 (``os._exit``: no cleanup, no flush, no transaction abort, like SIGKILL)
the ``nth`` time (default 1) execution reaches ``crash_point(point)``;
``LEDGERFLOW_PAUSE_AT`` (same syntax) makes the process SIGSTOP itself there instead,
so a test can resume it as a zombie at an exact step. When neither variable is
set, ``crash_point`` is a no-op function bound at import time.

``LEDGERFLOW_FAULT_AT=point[:nth][,...]`` makes ``fault_point(point)`` return True the
``nth`` time (default 1) it is reached; the caller then injects the fault named by the
point (e.g. ``sink.db_commit_ack_lost``: the database committed, the client loses the
connection before it reads the acknowledgement). Unset: a no-op returning False.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable

CRASH_EXIT_CODE = 86
ENV_VAR = "LEDGERFLOW_CRASH_AT"
FAULT_ENV_VAR = "LEDGERFLOW_FAULT_AT"
PAUSE_ENV_VAR = "LEDGERFLOW_PAUSE_AT"


def _parse(spec: str) -> dict[str, int]:
    targets: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, nth = item.partition(":")
        targets[name] = int(nth) if nth else 1
    return targets


def _make(spec: str | None, pause: str | None = None) -> Callable[[str], None]:
    if pause:
        pauses = _parse(pause)
        seen: dict[str, int] = {}
        inner = _make(spec)

        def pause_or_crash(point: str) -> None:
            if point in pauses:
                seen[point] = seen.get(point, 0) + 1
                if seen[point] == pauses[point]:
                    sys.stderr.write(f"ledgerflow: pause point {point} hit #{seen[point]}, stopping (SIGSTOP)\n")
                    sys.stderr.flush()
                    os.kill(os.getpid(), signal.SIGSTOP)
            inner(point)

        return pause_or_crash
    if not spec:

        def noop(point: str) -> None:
            return None

        return noop
    targets = _parse(spec)
    hits: dict[str, int] = {}

    def crash(point: str) -> None:
        if point not in targets:
            return
        hits[point] = hits.get(point, 0) + 1
        if hits[point] == targets[point]:
            sys.stderr.write(f"ledgerflow: crash point {point} hit #{hits[point]}, exiting\n")
            sys.stderr.flush()
            os._exit(CRASH_EXIT_CODE)

    return crash


def _make_fault(spec: str | None) -> Callable[[str], bool]:
    if not spec:

        def never(point: str) -> bool:
            return False

        return never
    targets = _parse(spec)
    hits: dict[str, int] = {}

    def due(point: str) -> bool:
        if point not in targets:
            return False
        hits[point] = hits.get(point, 0) + 1
        if hits[point] != targets[point]:
            return False
        sys.stderr.write(f"ledgerflow: fault point {point} hit #{hits[point]}, injecting the fault\n")
        return True

    return due


crash_point: Callable[[str], None] = _make(os.environ.get(ENV_VAR), os.environ.get(PAUSE_ENV_VAR))
fault_point: Callable[[str], bool] = _make_fault(os.environ.get(FAULT_ENV_VAR))
