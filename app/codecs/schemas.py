"""Loading Avro schemas from ``schemas/`` and their fingerprints."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.schema import fingerprint, to_parsing_canonical_form


def schemas_dir() -> Path:
    env = os.environ.get("LEDGERFLOW_SCHEMAS_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "schemas"


@functools.cache
def load_schema(name: str) -> Any:
    """Parsed schema for ``name`` (a file in ``schemas/`` or an absolute/relative path)."""
    path = Path(name)
    if not path.is_file():
        path = schemas_dir() / name
    with open(path) as fh:
        return parse_schema(json.load(fh))


@functools.cache
def schema_fingerprint(name: str) -> str:
    """CRC-64-AVRO (Rabin) of the Parsing Canonical Form, 16 hex chars."""
    return str(fingerprint(to_parsing_canonical_form(load_schema(name)), "CRC-64-AVRO"))
