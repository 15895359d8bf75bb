"""Process-wide memory settings, applied once at start, before pyarrow is imported.

Arrow's default allocator (mimalloc in the pyarrow wheels) keeps freed pages for
reuse. A sink stage writing Parquet parts over a 1,000,000-row backlog peaked about
25 MB higher with it than with the system allocator, at the same CPU per row
(docs/benchmarks.md, "Memory"). The operator's own ``ARROW_DEFAULT_MEMORY_POOL``
(``mimalloc``, ``jemalloc`` or ``system``) always wins.
"""

from __future__ import annotations

import os

ARROW_POOL_ENV = "ARROW_DEFAULT_MEMORY_POOL"


def prefer_system_arrow_pool() -> None:
    """Make Arrow allocate with the system allocator unless the environment says
    otherwise. Has no effect once pyarrow has allocated (Arrow reads the variable
    when its default pool is first used), so call it before any stage starts."""
    os.environ.setdefault(ARROW_POOL_ENV, "system")
