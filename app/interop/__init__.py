"""Interoperability with other stream processors.

Nothing here is imported by the rest of ``app``: each module pulls in its own
third-party framework (``faust_codec`` and ``faust_example`` need
``faust-streaming``, from the ``dev`` extra) only when it is imported itself.
See ``docs/interop-faust.md``.
"""
