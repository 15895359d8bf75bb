"""pytest plugin for the mutation check: loads a mutated ``app.runtime.commit``.

``-p tests.mutation._loader`` with ``LEDGERFLOW_SEAM_MUTANT=<file>`` executes that file
as ``app.runtime.commit`` before any test module imports it; without the variable it
does nothing. The real module on disk is never touched.
"""

from __future__ import annotations

import importlib.util
import os
import sys

MODULE = "app.runtime.commit"
ENV_VAR = "LEDGERFLOW_SEAM_MUTANT"


def _load(path: str) -> None:
    import app.runtime as package

    spec = importlib.util.spec_from_file_location(MODULE, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the mutant {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[MODULE] = module
    spec.loader.exec_module(module)
    package.commit = module  # type: ignore[attr-defined]


_path = os.environ.get(ENV_VAR)
if _path:
    _load(_path)
