"""Sources: the ``Source`` protocol (``base``), a deterministic generator and a file tail.

Runtime wiring (building a source from a pipeline spec) lives elsewhere.
"""
