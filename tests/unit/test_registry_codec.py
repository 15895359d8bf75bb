"""Schema registry pieces that need no server: framing, subject names, spec checks,
credentials never shown, and the wait for a registry nobody answers on."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from app.codecs.registry import frame, subject_name, unframe
from app.codecs.tokens import CodecError
from app.config.pipeline import load_pipeline
from app.config.yamlsrc import SpecError
from app.registry.client import Registry, RegistryConfig, RegistryUnavailable, redact_url


def test_frame_round_trip_and_not_framed() -> None:
    assert frame(7, b"body") == b"\x00\x00\x00\x00\x07body"
    assert unframe(frame(123_456, b"xyz")) == (123_456, b"xyz")
    for value in (b"", b"\x00\x00\x01", b'{"id": 1}', b"\x01\x00\x00\x00\x07body"):
        with pytest.raises(CodecError) as err:
            unframe(value)
        assert err.value.reason_class == "not_framed"


def test_subject_strategies() -> None:
    assert subject_name("topic", "orders", None) == "orders-value"
    assert subject_name("record", "orders", "shop.Order") == "shop.Order"
    assert subject_name("topic_record", "orders", "shop.Order") == "orders-shop.Order"
    with pytest.raises(ValueError):
        subject_name("record", "orders", None)


def _spec(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text("pipeline: p\n" + body)
    return p


def test_spec_needs_a_registry_block_and_an_output_schema(tmp_path: Path) -> None:
    sink = "sinks:\n  - {name: f, type: file, input: a, input_format: avro_registry, path: out}\n"
    with pytest.raises(SpecError, match="registry"):
        load_pipeline(_spec(tmp_path, sink))
    spec = load_pipeline(_spec(tmp_path, 'registry: {url: "http://r:8081"}\n' + sink))
    assert spec.registry is not None and spec.registry.timeout_s == 10.0  # finite by default
    tr = "transforms:\n  - {name: t, input: a, output: b, output_format: avro_registry}\n"
    with pytest.raises(SpecError, match="output_schema"):
        load_pipeline(_spec(tmp_path, 'registry: {url: "http://r:8081"}\n' + tr))
    tr_latest = tr.replace("}\n", ", auto_register: false}\n")
    assert load_pipeline(_spec(tmp_path, 'registry: {url: "http://r:8081"}\n' + tr_latest)).transforms[0]


def test_credentials_are_never_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from app.registry.client import registry_config

    monkeypatch.setenv("REG_USER", "alice")
    monkeypatch.setenv("REG_PASS", "s3cret-pw")
    spec = load_pipeline(
        _spec(
            tmp_path,
            'registry:\n  url: "https://reg:8081"\n'
            "  basic_auth: {username: {env: REG_USER}, password: {env: REG_PASS}}\n"
            "  tls: {ca_location: ca.pem}\n",
        )
    )
    assert spec.registry is not None
    cfg = registry_config(spec.registry)
    assert cfg.client_conf()["basic.auth.user.info"] == "alice:s3cret-pw"
    assert cfg.ca_location == str(tmp_path / "ca.pem")
    assert "s3cret" not in repr(cfg) and "s3cret" not in repr(spec)
    assert redact_url("https://bob:pw@reg:8081/apis/ccompat/v7") == "https://reg:8081/apis/ccompat/v7"


def test_unreachable_registry_is_waited_out_then_named() -> None:
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    waits: list[float] = []
    reg = Registry(
        RegistryConfig(url=f"http://127.0.0.1:{port}", timeout_s=1, max_wait_s=2), sleep=lambda d: waits.append(d)
    )
    with pytest.raises(RegistryUnavailable, match=f"127.0.0.1:{port} is not reachable"):
        reg.schema(1)
    assert len(waits) >= 2 and waits[1] > waits[0]  # exponential backoff
