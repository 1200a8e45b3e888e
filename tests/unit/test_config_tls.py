"""Checks over TLS: the tls keys from TOML to HealthSettings, and the checks of their files at
load (this host's files, made at test time by trustme; a stand-in host for a system CA store
that is empty). The text-only errors are in tests/golden/config/health_tls.toml."""

from __future__ import annotations

import ssl
from collections import OrderedDict
from pathlib import Path

import pytest

from l4lb.config import ConfigError, load_text
from l4lb.config.host import THIS_HOST
from l4lb.health import HealthSettings, ProbeSpec, tlscontext
from l4lb.health.probe import http_request

from .fakehost import FakeHost

trustme = pytest.importorskip("trustme", reason="the test extra installs trustme")

SERVICE = """\
[[services]]
name = "web"
listen = ["127.0.0.1:8443"]
backends = [{{ address = "10.0.1.5:8443" }}]

  [services.health]
{health}
"""


def load(health: str, host: object = THIS_HOST) -> HealthSettings:
    config = load_text(SERVICE.format(health=health), "t.toml", host=host)  # type: ignore[arg-type]
    settings = config.services[0].health
    assert settings is not None
    return settings


def errors(health: str, host: object = THIS_HOST) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(health, host)
    return [str(d) for d in info.value.diagnostics]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    ca = trustme.CA()
    client = ca.issue_cert("l4lb@example.com")
    other = trustme.CA().issue_cert("other@example.com")
    out = {"ca": tmp_path / "ca.pem", "cert": tmp_path / "client.crt",
           "key": tmp_path / "client.key", "both": tmp_path / "both.pem",
           "other_key": tmp_path / "other.key"}
    ca.cert_pem.write_to_path(str(out["ca"]))
    client.cert_chain_pems[0].write_to_path(str(out["cert"]))
    client.private_key_pem.write_to_path(str(out["key"]))
    client.private_key_and_cert_chain_pem.write_to_path(str(out["both"]))
    other.private_key_pem.write_to_path(str(out["other_key"]))
    return {k: str(v) for k, v in out.items()}


def test_every_key_is_read(files: dict[str, str]) -> None:
    s = load(f'  kind = "tls"\n  tls_server_name = "app.example.com"\n'
             f'  tls_ca_file = "{files["ca"]}"\n  tls_client_cert = "{files["cert"]}"\n'
             f'  tls_client_key = "{files["key"]}"\n  tls_alpn = ["h2", "http/1.1"]\n'
             '  tls_min_version = "1.3"\n')
    assert (s.kind, s.speaks_tls, s.tls_server_name, s.tls_verify, s.tls_ca_file,
            s.tls_client_cert, s.tls_client_key, s.tls_alpn, s.tls_min_version) == (
        "tls", True, "app.example.com", "required", files["ca"], files["cert"], files["key"],
        ("h2", "http/1.1"), "1.3")
    https = load('  kind = "http"\n  tls = true\n  tls_verify = "none"\n')
    assert https.speaks_tls and https.tls_verify == "none"
    # defaults: verify required with the system store (this host has one), no SNI, TLS 1.2
    d = load('  kind = "tls"\n')
    assert (d.tls_verify, d.tls_server_name, d.tls_ca_file, d.tls_min_version, d.tls_alpn) == \
        ("required", None, None, "1.2", ())
    assert not load('  kind = "http"\n').speaks_tls


def test_a_key_in_the_certificate_file_is_found(files: dict[str, str]) -> None:
    assert load(f'  kind = "tls"\n  tls_verify = "none"\n'
                f'  tls_client_cert = "{files["both"]}"\n').tls_client_key is None


def test_the_files_are_checked_at_load(files: dict[str, str]) -> None:
    assert errors(f'  kind = "tls"\n  tls_verify = "none"\n  tls_client_cert = "{files["cert"]}"'
                  f'\n  tls_client_key = "{files["other_key"]}"\n') == [
        f't.toml:10:20: error: services[0] ("web"): health.tls_client_key: '
        f'"{files["other_key"]}" is not the key of tls_client_cert']
    assert errors(f'  kind = "tls"\n  tls_verify = "none"\n'
                  f'  tls_client_cert = "{files["cert"]}"\n') == [
        f't.toml:9:21: error: services[0] ("web"): health.tls_client_cert: "{files["cert"]}" '
        "holds no private key: set tls_client_key to the file that has it"]
    assert errors(f'  kind = "tls"\n  tls_verify = "none"\n  tls_client_cert = "{files["key"]}"'
                  f'\n  tls_client_key = "{files["key"]}"\n') == [
        f't.toml:9:21: error: services[0] ("web"): health.tls_client_cert: "{files["key"]}" '
        "holds no PEM certificate"]
    assert errors(f'  kind = "tls"\n  tls_ca_file = "{files["key"]}"\n') == [
        f't.toml:8:17: error: services[0] ("web"): health.tls_ca_file: "{files["key"]}" holds '
        "no PEM certificate"]
    # without host checks nothing is read
    assert load('  kind = "tls"\n  tls_ca_file = "/nonexistent/ca.pem"\n', host=None)


def test_verify_without_any_ca_says_what_to_write() -> None:
    host = FakeHost(tls=("tls_verify", "no CA certificates in the system store"))
    assert errors('  kind = "tls"\n', host) == [
        't.toml:6:3: error: services[0] ("web"): health.tls_verify: "required" (the default) '
        "needs CA certificates to verify with, and this host's system store has none: set "
        'tls_ca_file = "/path/to/ca.pem" (the CA that signed the backends\' certificates), or '
        'write tls_verify = "none" to check the handshake without verifying']
    assert host.asked == ["tls"]
    assert errors('  kind = "tls"\n  tls_verify = "required"\n', host)[0].startswith(
        't.toml:8:16: error: services[0] ("web"): health.tls_verify: "required" needs CA ')
    # the files are read before the context is built: an unreadable one is named alone
    host = FakeHost(tls=("tls_verify", "unused"))
    assert errors('  kind = "tls"\n  tls_ca_file = "/etc/l4lb/ca.pem"\n', host) == [
        't.toml:8:17: error: services[0] ("web"): health.tls_ca_file: "/etc/l4lb/ca.pem" '
        "cannot be read: no such file or directory"]
    assert host.asked == ["file /etc/l4lb/ca.pem"]


def test_an_empty_system_store_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "certs"
    empty.mkdir()
    monkeypatch.setattr(ssl, "get_default_verify_paths", lambda: ssl.DefaultVerifyPaths(
        None, str(empty), "SSL_CERT_FILE", "/nonexistent", "SSL_CERT_DIR", str(empty)))
    monkeypatch.setattr(tlscontext, "_cache", OrderedDict())  # build, do not reuse
    assert tlscontext.system_store_empty()
    assert errors('  kind = "tls"\n')[0].startswith(
        't.toml:6:3: error: services[0] ("web"): health.tls_verify: "required" (the default) '
        "needs CA certificates to verify with")
    # a CA file, or no verification, needs no store
    assert load('  kind = "tls"\n  tls_verify = "none"\n').tls_verify == "none"
    (empty / "0123abcd.0").write_text("")  # a hashed directory with entries counts
    assert not tlscontext.system_store_empty()


def test_a_renewed_system_store_makes_a_new_context(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    store = tmp_path / "ca-certificates.crt"
    trustme.CA().cert_pem.write_to_path(str(store))
    monkeypatch.setattr(ssl, "get_default_verify_paths", lambda: ssl.DefaultVerifyPaths(
        str(store), None, "SSL_CERT_FILE", str(store), "SSL_CERT_DIR", "/nonexistent"))
    settings = HealthSettings(kind="tls")
    before = ProbeSpec.build("10.0.1.5", 443, settings).tls
    again = ProbeSpec.build("10.0.1.6", 443, settings).tls
    assert before is not None and again is not None and before.context is again.context
    trustme.CA().cert_pem.write_to_path(str(store))  # the store was updated
    after = ProbeSpec.build("10.0.1.5", 443, settings).tls
    assert after is not None and after.context is not before.context


def test_https_request_names_the_server() -> None:
    s = HealthSettings(kind="http", tls=True, tls_verify="none",
                       tls_server_name="app.example.com")
    assert b"Host: app.example.com\r\n" in http_request(s, "10.0.1.5", 443)
    assert b"Host: app.example.com:8443\r\n" in http_request(s, "10.0.1.5", 8443)
    plain = HealthSettings(kind="http", tls=True, tls_verify="none")
    assert b"Host: 10.0.1.5\r\n" in http_request(plain, "10.0.1.5", 443)
    assert b"Host: 10.0.1.5:80\r\n" in http_request(plain, "10.0.1.5", 80)
    # the PROXY header goes before the handshake, the request over TLS
    spec = ProbeSpec.build("10.0.1.5", 443, HealthSettings(
        kind="http", tls=True, tls_verify="none", proxy_protocol="v1"))
    assert spec.preamble == b"PROXY UNKNOWN\r\n" and spec.send.startswith(b"GET / HTTP/1.1")
    assert not spec.connect_only and spec.tls is not None
    assert ProbeSpec.build("10.0.1.5", 443, HealthSettings(kind="tls", tls_verify="none")) \
        .connect_only is False
