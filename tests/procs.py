"""Child processes that cannot outlive the test or benchmark that started them."""

from __future__ import annotations

import ctypes
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn`` for ``subprocess.Popen``: the kernel SIGKILLs the child when the
    starting process dies, even by SIGKILL or a segfault, where no cleanup code runs.
    (Linux; the starting thread must outlive the child, so start children from the
    main thread.)"""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
