"""A stage loads pyarrow and psycopg only when its pipeline needs them: importing the
CLI and the supervisor (what every ``ledgerflow run`` does) leaves both out, which is
~70 MB of resident memory for a source stage or a row-path transform."""

from __future__ import annotations

import subprocess
import sys

PROBE = (
    "import sys, app.cli.main, app.runtime.supervisor, app.runtime.transform_runner, app.runtime.sink_runner; "
    "print(sorted({m.split('.')[0] for m in sys.modules} & {'pyarrow', 'psycopg', 'pyiceberg', 'boto3'}))"
)


def test_the_cli_and_supervisor_import_no_columnar_or_database_library() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_a_columnar_transform_loads_pyarrow_when_compiled() -> None:
    probe = (
        "import sys; from app.config.pipeline import Transform; from app.runtime.supervisor import _columnar; "
        "tr = Transform.model_validate({'name': 't', 'input': 'i', 'input_format': 'json', 'output': 'o', "
        "'steps': [{'filter': {'field': 'a', 'op': 'exists'}}]}); "
        "print(_columnar(tr, ['t.0:filter']) is not None, 'pyarrow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]
