"""Sinks behind one protocol that the commit seam drives (DESIGN §5).

``base`` defines ``Sink`` (prepare → commit_external → finalize/discard, recover) and
its values; ``files`` (with ``parquet``) is the two-phase file sink; ``pg_sink`` puts
the PostgreSQL writer (``postgres``: DB transaction + compare-and-set of the stored
offsets) behind the same protocol.
"""
