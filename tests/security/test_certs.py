"""The throwaway TLS material: private files, a certificate naming exactly the given
hosts, signed by the CA clients are told to trust (no broker)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import pkcs12

from app.security.certs import ensure_tls, write_foreign_ca


def test_material_is_private_names_its_hosts_and_chains_to_the_ca(tmp_path: Path) -> None:
    tls = ensure_tls(tmp_path / "secure", ["kafka", "127.0.0.1"])
    assert (tls.root.stat().st_mode & 0o777) == 0o700
    for private in (tls.ca_key, tls.keystore, tls.keystore_password_file):
        assert (private.stat().st_mode & 0o777) == 0o600
    ca = x509.load_pem_x509_certificate(tls.ca_cert.read_bytes())
    key, cert, chain = pkcs12.load_key_and_certificates(tls.keystore.read_bytes(), tls.keystore_password().encode())
    assert key is not None and cert is not None and [c.subject for c in chain] == [ca.subject]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["kafka"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    cert.verify_directly_issued_by(ca)
    other = x509.load_pem_x509_certificate(write_foreign_ca(tmp_path / "other.pem").read_bytes())
    with pytest.raises(ValueError):  # the foreign CA signed nothing of ours
        cert.verify_directly_issued_by(other)
    assert ensure_tls(tls.root).keystore_password() == tls.keystore_password()  # kept, not regenerated
