"""The ``ledgerflow`` command."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from app import __version__
from app.cli.acl_cmd import acl_group
from app.cli.iceberg_cmd import iceberg_group
from app.cli.kafka_cmd import kafka_group
from app.cli.ops_cmd import dlq_group, inspect_cmd, journal_group
from app.cli.recover_cmd import recover_cmd
from app.cli.registry_cmd import registry_group
from app.cli.run_cmd import demo_cmd, run_cmd, validate_cmd
from app.cli.s3_cmd import s3_group
from app.cli.schemas_cmd import schemas_group
from app.cli.topics_cmd import topics_group


@click.group()
@click.version_option(__version__, prog_name="ledgerflow")
@click.option("--log-level", default="INFO", show_default=True, envvar="LEDGERFLOW_LOG_LEVEL")
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default=None,
    envvar="LEDGERFLOW_LOG_FORMAT",
    help="Default: text on a terminal, json otherwise.",
)
def cli(log_level: str, log_format: str | None) -> None:
    """ledgerflow: Kafka stream processing with exactly-once sinks."""
    from app.observability.logs import configure
    from app.runtime.memory import prefer_system_arrow_pool

    prefer_system_arrow_pool()
    configure(log_level, log_format or ("text" if sys.stderr.isatty() else "json"))


cli.add_command(kafka_group)
cli.add_command(topics_group)
cli.add_command(run_cmd)
cli.add_command(validate_cmd)
cli.add_command(demo_cmd)
cli.add_command(journal_group)
cli.add_command(inspect_cmd)
cli.add_command(dlq_group)
cli.add_command(recover_cmd)
cli.add_command(iceberg_group)
cli.add_command(s3_group)
cli.add_command(registry_group)
cli.add_command(schemas_group)
cli.add_command(acl_group)


def main() -> None:
    logging.captureWarnings(True)
    cli(prog_name="ledgerflow")


if __name__ == "__main__":  # pragma: no cover
    main()


__all__ = ["Path", "cli", "main"]
