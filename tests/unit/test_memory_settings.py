"""The Arrow allocator a ledgerflow process uses (app/runtime/memory.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = (
    "import sys\n"
    "from click.testing import CliRunner\n"
    "from app.cli.main import cli\n"
    "assert 'pyarrow' not in sys.modules\n"
    "CliRunner().invoke(cli, ['topics', '--help'])\n"  # runs the group callback, as every command does
    "import pyarrow as pa\n"
    "print(pa.default_memory_pool().backend_name)\n"
)


@pytest.mark.parametrize(("preset", "expected"), [(None, "system"), ("mimalloc", "mimalloc"), ("jemalloc", "jemalloc")])
def test_the_cli_picks_the_system_arrow_pool_unless_the_environment_names_one(
    preset: str | None, expected: str
) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    if preset is not None:
        env["ARROW_DEFAULT_MEMORY_POOL"] = preset
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == expected, out.stderr
