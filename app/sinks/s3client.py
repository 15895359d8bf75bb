"""An S3 client built from a spec's ``S3Connection``, and S3 errors as sink errors.

Credentials are taken by reference and handed to boto3 only; they never reach a
log line, an exception text or the journal. Every call has a finite connect and
read timeout and boto3's ``standard`` retry mode (bounded attempts with backoff).
"""

from __future__ import annotations

from typing import Any

from app.config.pipeline import S3Connection
from app.sinks.base import SinkUnavailable

__all__ = ["SinkUnavailable", "describe", "error_code", "make_client"]


def make_client(conn: S3Connection, where: str) -> Any:
    """A boto3 S3 client for ``conn``; ``where`` names the spec setting in errors."""
    import boto3
    from botocore.config import Config

    kwargs: dict[str, Any] = {}
    if conn.credentials is not None:
        kwargs["aws_access_key_id"] = conn.credentials.access_key_id.resolve(
            f"{where}.credentials.access_key_id"
        ).get_secret_value()
        kwargs["aws_secret_access_key"] = conn.credentials.secret_access_key.resolve(
            f"{where}.credentials.secret_access_key"
        ).get_secret_value()
    config = Config(
        region_name=conn.region,
        connect_timeout=conn.timeout_s,
        read_timeout=conn.timeout_s,
        retries={"max_attempts": conn.max_attempts, "mode": "standard"},
        s3={"addressing_style": "path" if conn.path_style else "auto"},
        signature_version="s3v4",
        # plain Content-MD5/sha256 signing: many S3-compatible stores refuse the
        # trailing-checksum (aws-chunked) uploads newer boto3 sends by default
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client("s3", endpoint_url=conn.endpoint_url, config=config, **kwargs)


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore ``ClientError`` ('' for anything else)."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def describe(exc: BaseException) -> str:
    """A one-line description of an S3 failure without request signatures or keys."""
    code = error_code(exc)
    if code:
        msg = getattr(exc, "response", {}).get("Error", {}).get("Message", "")
        return f"{code}: {msg}" if msg else code
    return f"{type(exc).__name__}: {exc}"
