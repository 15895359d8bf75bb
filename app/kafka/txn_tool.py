"""Kafka's TransactionsCommand as a typed subprocess: run it, parse its tables.

confluent-kafka has no DescribeProducers / ListTransactions / DescribeTransactions /
AbortTransaction admin calls, so ``app.kafka.hanging`` runs the tool from the
project's jars. Security settings (librdkafka names) are translated to Java client
properties and passed in a private command-config file that is deleted afterwards.
"""

from __future__ import annotations

import struct
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_TOOL = "transactions"


class HangingToolError(RuntimeError):
    """Kafka's TransactionsCommand failed or printed something unparseable; the
    message holds the subcommand, its exit status and the tool's own error text."""


# -- tool output ------------------------------------------------------------------
def parse_table(text: str) -> list[dict[str, str]]:
    """Rows of a ``ToolsUtils.prettyPrintTable`` table (tab-separated, padded cells,
    header first) as header -> value. Lines before the header (stray log output) are
    skipped; a table without its header raises ``HangingToolError``."""
    lines = [ln for ln in text.splitlines() if "\t" in ln]
    if not lines:
        if text.strip():
            raise HangingToolError(f"TransactionsCommand printed no table:\n{text[-2000:]}")
        return []
    header = [c.strip() for c in lines[0].rstrip("\t").split("\t")]
    rows = []
    for ln in lines[1:]:
        cells = [c.strip() for c in ln.rstrip("\t").split("\t")]
        if len(cells) != len(header):
            raise HangingToolError(f"row {ln!r} has {len(cells)} cells, header {header} has {len(header)}")
        rows.append(dict(zip(header, cells, strict=True)))
    return rows


def _int(row: Mapping[str, str], col: str) -> int:
    try:
        return int(row[col])
    except (KeyError, ValueError) as exc:
        raise HangingToolError(f"column {col!r} missing or not a number in {dict(row)}") from exc


def parse_list(text: str) -> dict[int, str]:
    """``list`` output -> producer id -> transactional id."""
    return {_int(row, "ProducerId"): row["TransactionalId"] for row in parse_table(text)}


def decode_offsets_group(key: bytes | None) -> str | None:
    """Group id of an offset-commit record key of ``__consumer_offsets`` (key versions
    0 and 1: int16 version, int16-length group, ...); None for any other record."""
    if key is None or len(key) < 4:
        return None
    version, size = struct.unpack_from(">hh", key)
    if version not in (0, 1) or size < 0 or len(key) < 4 + size:
        return None
    return key[4 : 4 + size].decode(errors="replace")


# -- security settings --------------------------------------------------------------
_SAME = ("ssl.key.password", "sasl.kerberos.service.name", "ssl.keystore.password")
_IGNORED_PREFIXES = ("ssl.", "sasl.")  # anything else is client tuning the admin tool does not need


def java_client_properties(extra: Mapping[str, Any] | None) -> dict[str, str]:
    """librdkafka security settings -> Java client properties for ``--command-config``.

    Handles security.protocol, sasl.mechanism(s), sasl.username/password (PLAIN and
    SCRAM), ssl.ca.location, ssl.certificate.location + ssl.key.location (PEM),
    ssl.keystore.location/password (PKCS#12), ssl.key.password and
    ssl.endpoint.identification.algorithm. Other ``ssl.*``/``sasl.*`` settings raise
    ``HangingToolError`` (silently dropping one could connect without it); the rest
    (tuning) is not needed by the tool and left out."""
    src = {k: str(v) for k, v in (extra or {}).items()}
    out: dict[str, str] = {}
    if "security.protocol" in src:
        out["security.protocol"] = src.pop("security.protocol").upper()
    mech = src.pop("sasl.mechanism", None) or src.pop("sasl.mechanisms", None)
    if mech:
        out["sasl.mechanism"] = mech
    user, password = src.pop("sasl.username", None), src.pop("sasl.password", None)
    if user is not None and password is not None:
        module = {
            "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
            "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
            "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
        }.get((mech or "PLAIN").upper())
        if module is None:
            raise HangingToolError(f"sasl.username/password with sasl.mechanism {mech} has no Java equivalent here")
        out["sasl.jaas.config"] = f'{module} required username="{_jaas(user)}" password="{_jaas(password)}";'
    if "ssl.ca.location" in src:
        out["ssl.truststore.type"] = "PEM"
        out["ssl.truststore.location"] = src.pop("ssl.ca.location")
    cert, key = src.pop("ssl.certificate.location", None), src.pop("ssl.key.location", None)
    if cert is not None and key is not None:
        out["ssl.keystore.type"] = "PEM"
        out["ssl.keystore.location"] = f"\0pem:{key}\0{cert}"  # joined into one file by _write_config
    if "ssl.keystore.location" in src:
        out["ssl.keystore.type"] = "PKCS12"
        out["ssl.keystore.location"] = src.pop("ssl.keystore.location")
    if "ssl.endpoint.identification.algorithm" in src:
        algo = src.pop("ssl.endpoint.identification.algorithm")
        out["ssl.endpoint.identification.algorithm"] = "" if algo.lower() == "none" else algo
    for k in _SAME:
        if k in src:
            out[k] = src.pop(k)
    left = sorted(k for k in src if k.startswith(_IGNORED_PREFIXES) or k == "sasl.jaas.config")
    if left or (cert is None) != (key is None):
        raise HangingToolError(
            f"cannot translate {', '.join(left) or 'ssl.certificate.location without ssl.key.location'} "
            "to Java client properties for Kafka's TransactionsCommand"
        )
    return out


def _jaas(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _write_config(props: Mapping[str, str], tmp: Path) -> Path:
    lines = []
    for k, v in props.items():
        if v.startswith("\0pem:"):
            key_path, cert_path = v[5:].split("\0")
            pem = tmp / "keystore.pem"
            pem.write_text(Path(key_path).read_text() + "\n" + Path(cert_path).read_text())
            v = str(pem)
        lines.append(f"{k}=" + v.replace("\\", "\\\\").replace("\n", "\\n"))
    path = tmp / "command.properties"
    path.write_text("\n".join(lines) + "\n")
    return path


# -- running the tool ---------------------------------------------------------------
def run_tool(
    bootstrap: str, args: Sequence[str], *, extra: Mapping[str, Any] | None = None, timeout: float = 120
) -> str:
    """Run ``TransactionsCommand <args>`` against ``bootstrap`` and return its stdout.
    Security settings go through a private (0700 dir) command-config file deleted
    afterwards. Raises ``HangingToolError`` on a non-zero exit or a timeout."""
    import subprocess

    from app.kafka.local_broker import BrokerError, LocalBroker

    props = java_client_properties(extra)
    with tempfile.TemporaryDirectory(prefix="ledgerflow-txn-tool-") as tmp:
        argv = list(args)
        if props:
            argv = ["--command-config", str(_write_config(props, Path(tmp))), *argv]
        runner = LocalBroker(Path(tempfile.gettempdir()) / "ledgerflow-tools")
        try:
            cmd = runner.tool_command(_TOOL, argv, bootstrap=bootstrap)
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        except BrokerError as exc:
            raise HangingToolError(f"cannot run Kafka's TransactionsCommand: {exc}") from exc
        except subprocess.TimeoutExpired as exc:
            raise HangingToolError(f"kafka-transactions {' '.join(args)} did not finish in {timeout:.0f}s") from exc
    if proc.returncode != 0:
        err = "\n".join(ln for ln in proc.stderr.splitlines() if ln.strip())[-2000:]
        what = f"kafka-transactions {' '.join(args)} against {bootstrap}"
        raise HangingToolError(f"{what} exited {proc.returncode}: {err or proc.stdout[-1000:]}")
    return proc.stdout
