"""Sink writers behind one small partition-scoped interface (DESIGN §5).

``base`` defines the two-phase ``PartWriter`` protocol and ``PreparedPart``;
``files`` implements it for NDJSON/Parquet directories; ``postgres`` is the
transactional sink that stores its offsets in the database.
"""
