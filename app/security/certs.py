"""Throwaway TLS material for a local secured broker: a CA, and a server key and
certificate it signs, written once per data directory.

Guarantees: the CA key never leaves ``<dir>`` (mode 0600 files in a 0700 directory);
the server certificate names exactly the hosts it is given (``localhost`` by
default: a client that dials ``127.0.0.1`` fails hostname verification, on purpose);
the PKCS#12 keystore the broker loads is protected by a random password stored
beside it, read only by the broker's own config. Nothing here is for production:
real clusters use certificates from the organisation's CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 30


@dataclass(frozen=True)
class TlsMaterial:
    """Paths of one data dir's TLS files."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def keystore(self) -> Path:
        return self.root / "server.p12"

    @property
    def keystore_password_file(self) -> Path:
        return self.root / "server.p12.password"

    def keystore_password(self) -> str:
        return self.keystore_password_file.read_text().strip()

    def exists(self) -> bool:
        return all(p.exists() for p in (self.ca_cert, self.ca_key, self.keystore, self.keystore_password_file))


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _name(common: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ledgerflow local"),
            x509.NameAttribute(NameOID.COMMON_NAME, common),
        ]
    )


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def make_ca(common: str = "ledgerflow throwaway CA") -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A fresh self-signed CA (P-256), valid ``VALID_DAYS`` days."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(_name(common))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue_server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, hosts: list[str]
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """A server key and certificate signed by the CA, naming ``hosts`` (DNS names or IPs)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def ensure_tls(root: Path, hosts: list[str] | None = None) -> TlsMaterial:
    """The data dir's TLS material, generated now if any file is missing."""
    tls = TlsMaterial(root)
    if tls.exists():
        return tls
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    ca_key, ca_cert = make_ca()
    key, cert = issue_server_cert(ca_key, ca_cert, hosts or ["localhost"])
    password = secrets.token_urlsafe(24)
    _write_private(
        tls.ca_key,
        ca_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    )
    tls.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    p12 = pkcs12.serialize_key_and_certificates(
        b"broker", key, cert, [ca_cert], serialization.BestAvailableEncryption(password.encode())
    )
    _write_private(tls.keystore, p12)
    _write_private(tls.keystore_password_file, password.encode())
    return tls


def write_foreign_ca(path: Path) -> Path:
    """A CA certificate that signed nothing of ours: a client trusting only it must
    refuse the broker (the untrusted-CA case)."""
    _key, cert = make_ca("ledgerflow unrelated CA")
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path
