"""`ledgerflow schemas check|push PIPELINE`: the pipeline's schemas against the registry.

Two kinds of schema are compared with the registry's subjects:

* the spec's declared output schemas: each transform with an ``output_format`` of
  ``avro_registry`` / ``json_schema_registry`` and an ``output_schema``, under the
  subject its ``subject_strategy`` gives for every topic it writes (output and routes);
* ledgerflow's own schemas (``schemas/*.avsc``: row token, journal event, DLQ record)
  under their record names (``ledgerflow.RowToken``, ...). ledgerflow does not need
  them in the registry to run (docs/adr/0002-registry-and-token-schemas.md); pushing
  them lets registry-aware tools find them and makes an incompatible change of them
  visible before a deploy. ``--no-own`` leaves them out.

``check`` prints one line per subject (new, registered, compatible or INCOMPATIBLE
with the latest version under the compatibility level that applies) and exits 1 when
any is incompatible; ``push`` registers every schema (exit 1 on a refusal).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from app.codecs.registry import KINDS, subject_name
from app.codecs.schemas import schemas_dir
from app.config.pipeline import PipelineSpec, RegistrySettings, RouteStep, load_pipeline
from app.config.yamlsrc import SpecError
from app.registry.client import Registry, RegistryRefused, SchemaNotFound, registry_config
from app.sinks.base import SinkUnavailable

if TYPE_CHECKING:
    from confluent_kafka.schema_registry import Schema


@dataclass(frozen=True)
class Declared:
    subject: str
    schema: Schema
    origin: str  # where it comes from, for the report


def _record_name(doc: dict[str, object]) -> str:
    name, ns = str(doc.get("name") or doc.get("title") or ""), doc.get("namespace")
    return name if "." in name or not ns else f"{ns}.{name}"


def declared_schemas(spec: PipelineSpec, *, own: bool = True) -> list[Declared]:
    """Every (subject, schema) the pipeline declares, own schemas last."""
    from confluent_kafka.schema_registry import Schema

    out: list[Declared] = []
    for tr in spec.transforms:
        if tr.output_format == "token" or tr.output_schema is None:
            continue
        text = Path(tr.output_schema).read_text()
        doc = json.loads(text)
        kind = KINDS[tr.output_format]
        topics = [tr.output] if tr.output else []
        for st in tr.steps:
            if isinstance(st, RouteStep):
                topics += [*st.routes.values(), *([st.default] if st.default else [])]
        record = _record_name(doc) if tr.subject_strategy != "topic" else None
        for topic in dict.fromkeys(topics):
            subject = subject_name(tr.subject_strategy, topic, record)
            out.append(Declared(subject, Schema(json.dumps(doc), kind), f"transform {tr.name} → {topic}"))
    if own:
        for path in sorted(schemas_dir().glob("*.avsc")):
            doc = json.loads(path.read_text())
            out.append(Declared(_record_name(doc), Schema(json.dumps(doc), "AVRO"), f"schemas/{path.name}"))
    return out


def _registry(spec: PipelineSpec, url: str | None) -> Registry:
    settings = spec.registry or RegistrySettings()
    if url:
        settings = settings.model_copy(update={"url": url})
    try:
        reg = Registry(registry_config(settings))
        reg.probe()
    except (ValueError, SinkUnavailable) as exc:
        raise click.ClickException(str(exc)) from exc
    return reg


def _load(pipeline: str) -> PipelineSpec:
    try:
        return load_pipeline(Path(pipeline))
    except SpecError as exc:
        raise click.ClickException(str(exc)) from exc


_pipeline_arg = click.argument("pipeline", type=click.Path(exists=True, dir_okay=False))
_url_opt = click.option("--url", default=None, help="Registry URL (default: the spec's registry.url).")
_own_opt = click.option("--own/--no-own", default=True, show_default=True, help="Include schemas/*.avsc.")


@click.group("schemas")
def schemas_group() -> None:
    """Compare the pipeline's schemas with the schema registry, or register them."""


@schemas_group.command("check")
@_pipeline_arg
@_url_opt
@_own_opt
def check_cmd(pipeline: str, url: str | None, own: bool) -> None:
    """Report compatibility per subject; exit 1 when any schema is incompatible."""
    spec = _load(pipeline)
    reg = _registry(spec, url)
    bad = 0
    for d in declared_schemas(spec, own=own):
        try:
            try:
                found = reg.lookup(d.subject, d.schema)
                click.echo(f"{d.subject}: registered (version {found.version}, id {found.schema_id})  [{d.origin}]")
                continue
            except SchemaNotFound:
                pass
            try:
                latest = reg.latest(d.subject)
            except SchemaNotFound:
                click.echo(f"{d.subject}: new (not registered)  [{d.origin}]")
                continue
            level = reg.compatibility_level(d.subject)
            if reg.compatible(d.subject, d.schema):
                click.echo(f"{d.subject}: compatible with version {latest.version} ({level})  [{d.origin}]")
            else:
                bad += 1
                click.echo(f"{d.subject}: INCOMPATIBLE with version {latest.version} ({level})  [{d.origin}]")
        except (RegistryRefused, SinkUnavailable) as exc:
            bad += 1
            click.echo(f"{d.subject}: ERROR {exc}  [{d.origin}]")
    if bad:
        raise click.ClickException(f"{bad} subject(s) incompatible or failing against {reg.url}")


@schemas_group.command("push")
@_pipeline_arg
@_url_opt
@_own_opt
def push_cmd(pipeline: str, url: str | None, own: bool) -> None:
    """Register every declared schema under its subject (idempotent)."""
    spec = _load(pipeline)
    reg = _registry(spec, url)
    bad = 0
    for d in declared_schemas(spec, own=own):
        try:
            schema_id = reg.register(d.subject, d.schema)
        except SinkUnavailable as exc:
            bad += 1
            click.echo(f"{d.subject}: REFUSED {exc}  [{d.origin}]")
            continue
        click.echo(f"{d.subject}: id {schema_id}  [{d.origin}]")
    if bad:
        raise click.ClickException(f"{bad} schema(s) refused by {reg.url}")
