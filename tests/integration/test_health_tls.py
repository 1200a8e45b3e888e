"""Checks over TLS (kind = "tls", and tls = true with kinds "http" and "send_expect") against
loopback TLS servers: asyncio servers with an SSLContext, their certificates made at test time
by trustme (a CA, leaf certificates, an expired one, a client certificate for mTLS; nothing is
committed). Every test is bounded in time and stops what it started."""

from __future__ import annotations

import asyncio
import datetime
import socket
import ssl
import struct
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import pytest

from l4lb.health import HealthSettings, ProbeResult, probe_once
from l4lb.health.probe import ProbeSpec
from l4lb.health.settings import parse_status_spec

from .test_health_probes import open_fds, run

trustme = pytest.importorskip("trustme", reason="the test extra installs trustme")

pytestmark = pytest.mark.timeout(60)

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
NAME = "app.example.com"
# what a pass over TLS adds to the reason of http and send_expect (trustme's certificates are
# valid until 3000)
TLS13 = " (TLSv1.3, certificate valid until 3000-01-01)"
OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\nhealthy\n"


class Pki:
    """A CA, a server certificate for NAME, and their files in a temporary directory."""

    def __init__(self, tmp: Path) -> None:
        self.ca = trustme.CA()
        self.leaf = self.ca.issue_cert(NAME)
        self.dir = tmp
        self.ca_file = str(tmp / "ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)

    def server_context(self, leaf: object | None = None) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        (leaf or self.leaf).configure_cert(ctx)  # type: ignore[attr-defined]
        return ctx

    def client_files(self, ca: object | None = None, name: str = "client") -> tuple[str, str]:
        """A client certificate issued by `ca` (this CA by default): (cert file, key file)."""
        issuer = ca if ca is not None else self.ca
        cert = issuer.issue_cert(f"{name}@example.com")  # type: ignore[attr-defined]
        cert_file, key_file = self.dir / f"{name}.crt", self.dir / f"{name}.key"
        cert.cert_chain_pems[0].write_to_path(str(cert_file))
        cert.private_key_pem.write_to_path(str(key_file))
        return str(cert_file), str(key_file)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


@asynccontextmanager
async def tls_server(handler: Handler, ctx: ssl.SSLContext | None) -> AsyncIterator[int]:
    """A loopback server (TLS when ctx is given) running `handler` per connection."""
    async def wrapped(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await handler(r, w)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            w.close()
    srv = await asyncio.start_server(wrapped, "127.0.0.1", 0, ssl=ctx,
                                     ssl_handshake_timeout=5.0 if ctx else None)
    try:
        yield srv.sockets[0].getsockname()[1]
    finally:
        srv.close()
        await srv.wait_closed()


@contextmanager
def blocking_server(ctx: ssl.SSLContext, plain_prefix: int = 0,
                    seen: list[bytes] | None = None) -> Iterator[int]:
    """A one-thread blocking OpenSSL server (which, unlike asyncio's, sends its alerts): reads
    `plain_prefix` bytes in the clear (into `seen`), does the handshake, waits for the client
    to go."""
    lsock = socket.create_server(("127.0.0.1", 0))
    lsock.settimeout(0.1)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = lsock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2.0)
                try:
                    if plain_prefix and seen is not None:
                        seen.append(conn.recv(plain_prefix, socket.MSG_WAITALL))
                    with ctx.wrap_socket(conn, server_side=True) as tls_conn:
                        tls_conn.recv(1)
                except OSError:  # ssl.SSLError included: the client's certificate, a reset
                    pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield lsock.getsockname()[1]
    finally:
        stop.set()
        thread.join(5.0)
        lsock.close()


def probe_blocking(ctx: ssl.SSLContext, settings: HealthSettings, **kw: object) -> ProbeResult:
    with blocking_server(ctx, **kw) as port:  # type: ignore[arg-type]
        return run(probe_once("127.0.0.1", port, settings))


def probe(handler: Handler, ctx: ssl.SSLContext | None, settings: HealthSettings) -> ProbeResult:
    async def go() -> ProbeResult:
        async with tls_server(handler, ctx) as port:
            return await probe_once("127.0.0.1", port, settings)
    return run(go())


def tls(**kw: object) -> HealthSettings:
    return HealthSettings(kind="tls", interval=1.0, timeout=0.5, **kw)  # type: ignore[arg-type]


async def hold(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """Keep the connection until the client goes (a TLS server with nothing to say)."""
    await r.read(1)


# -- kind "tls": the handshake and the certificate ---------------------------------------------


def test_handshake_passes_with_the_ca_and_the_name(pki: Pki) -> None:
    before = open_fds()
    result = probe(hold, pki.server_context(), tls(tls_ca_file=pki.ca_file,
                                                   tls_server_name=NAME))
    assert result.ok and result.conclusive, result
    # the reason names the version, the cipher and the certificate's end of validity
    year = datetime.date.today().year
    assert result.reason.startswith("TLS handshake ok: TLSv1.3 TLS_"), result.reason
    assert "certificate valid until " in result.reason
    valid_until = int(result.reason.rsplit("until ", 1)[1][:4])
    assert valid_until >= year + 1
    assert open_fds() == before


def test_expired_certificate_fails_with_the_reason(pki: Pki) -> None:
    expired = pki.ca.issue_cert(NAME, not_after=datetime.datetime(2020, 1, 1,
                                                                  tzinfo=datetime.UTC))
    result = probe(hold, pki.server_context(expired), tls(tls_ca_file=pki.ca_file,
                                                          tls_server_name=NAME))
    assert not result.ok and result.conclusive
    assert result.reason == "TLS: certificate verify failed: certificate has expired"


def test_wrong_host_name_fails_when_verifying(pki: Pki) -> None:
    result = probe(hold, pki.server_context(), tls(tls_ca_file=pki.ca_file,
                                                   tls_server_name="db.example.com"))
    assert not result.ok
    assert result.reason.startswith("TLS: certificate verify failed: hostname mismatch"), \
        result.reason
    assert "db.example.com" in result.reason
    # without a server name only the chain is verified (the backend is an IP address)
    assert probe(hold, pki.server_context(), tls(tls_ca_file=pki.ca_file)).ok


def test_untrusted_and_self_signed_certificates(pki: Pki) -> None:
    # the CA's own certificate as the server's: self-signed
    self_signed = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    pki.ca.configure_trust(self_signed)
    ca_key = pki.dir / "ca.key"
    pki.ca.private_key_pem.write_to_path(str(ca_key))
    self_signed.load_cert_chain(pki.ca_file, str(ca_key))
    refused = probe(hold, self_signed, tls())  # verify "required" with the system store
    assert not refused.ok
    assert refused.reason.startswith("TLS: certificate verify failed: self-signed certificate")
    assert 'tls_verify = "none"' in refused.reason  # says what to write
    passed = probe(hold, self_signed, tls(tls_verify="none"))
    assert passed.ok, passed
    # nothing was verified, so no certificate was decoded: no date
    assert "certificate valid until" not in passed.reason
    # issued by a CA this host does not trust
    other = probe(hold, pki.server_context(), tls())
    assert other.reason.startswith("TLS: certificate verify failed: unable to get local "
                                   "issuer certificate"), other.reason


def test_server_that_never_speaks_tls_times_out(pki: Pki) -> None:
    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await asyncio.sleep(2.0)
    result = probe(silent, None, tls(tls_verify="none", tls_ca_file=None))
    assert not result.ok and result.conclusive
    assert result.reason == "TLS handshake timed out (no reply to the ClientHello)"
    assert 0.45 <= result.latency < 1.5  # within the probe's timeout (0.5 s)


def test_plain_http_server_is_named(pki: Pki) -> None:
    async def plain_http(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read(100)
        w.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await w.drain()
    result = probe(plain_http, None, tls(tls_verify="none"))
    assert not result.ok and result.conclusive
    assert result.reason == ("TLS handshake failed: the backend answered in plain text: "
                             "b'HTTP/1.1 400 Bad Request\\r\\nContent-Length'...")


def test_backend_that_closes_at_once(pki: Pki) -> None:
    async def closer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read(100)  # the ClientHello; then a FIN
    result = probe(closer, None, tls(tls_verify="none"))
    assert not result.ok
    assert result.reason == "TLS handshake failed: connection closed by the backend"

    async def resetter(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read(100)
        w.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                              struct.pack("ii", 1, 0))
        w.transport.abort()  # SO_LINGER 0: the close sends an RST
    result = probe(resetter, None, tls(tls_verify="none"))
    assert result.reason == "TLS handshake failed: connection reset", result


def test_sni_and_alpn_reach_the_server(pki: Pki) -> None:
    ctx = pki.server_context()
    seen: list[str | None] = []
    ctx.sni_callback = lambda obj, name, c: seen.append(name)  # type: ignore[assignment,misc]
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    result = probe(hold, ctx, tls(tls_ca_file=pki.ca_file, tls_server_name=NAME,
                                  tls_alpn=("h2",)))
    assert result.ok and ", alpn h2, " in result.reason, result.reason
    assert seen == [NAME]
    # no server name: no SNI at all (like HAProxy for an IP backend)
    seen.clear()
    assert probe(hold, ctx, tls(tls_ca_file=pki.ca_file)).ok
    assert seen == [None]
    # a protocol the server does not speak: this server (OpenSSL's default) selects none and
    # goes on; the check reports what was negotiated, it does not judge it (as HAProxy)
    other = probe(hold, ctx, tls(tls_ca_file=pki.ca_file, tls_alpn=("imap",)))
    assert other.ok and "alpn" not in other.reason, other


@pytest.mark.parametrize("version", ["TLSv1.3", "TLSv1.2"])
def test_client_certificate_for_mtls_backends(pki: Pki, version: str) -> None:
    ctx = pki.server_context()
    ctx.verify_mode = ssl.CERT_REQUIRED
    pki.ca.configure_trust(ctx)  # clients must show a certificate of this CA
    if version == "TLSv1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    cert, key = pki.client_files()
    good = probe_blocking(ctx, tls(tls_ca_file=pki.ca_file, tls_client_cert=cert,
                                   tls_client_key=key))
    assert good.ok, good
    assert good.reason.startswith(f"TLS handshake ok: {version} ")
    # TLS 1.3: the server's session ticket says it took the certificate, at once
    assert "no session ticket" not in good.reason and good.latency < 0.4, good
    # a certificate of a CA the server does not trust: in TLS 1.3 the server says so only
    # after the client's side of the handshake completed (the probe waits for its verdict)
    stranger = pki.client_files(ca=trustme.CA(), name="stranger")
    bad = probe_blocking(ctx, tls(tls_ca_file=pki.ca_file, tls_client_cert=stranger[0],
                                  tls_client_key=stranger[1]))
    assert (bad.ok, bad.conclusive) == (False, True)
    assert bad.reason == "TLS handshake failed: alert unknown ca", bad.reason
    # https over mTLS: without a certificate the server refuses, and the reason says so
    no_cert = probe_blocking(ctx, HealthSettings(kind="http", tls=True,
                                                 tls_ca_file=pki.ca_file, interval=1.0,
                                                 timeout=0.5))
    assert not no_cert.ok
    assert no_cert.reason == ("TLS error after the handshake: alert certificate required"
                              if version == "TLSv1.3" else
                              "TLS handshake failed: alert handshake failure"), no_cert.reason


def test_tls13_server_without_session_tickets(pki: Pki) -> None:
    # it says nothing when it accepts the client's certificate: the probe passes at its
    # timeout and says that the backend's verdict is not known
    ctx = pki.server_context()
    ctx.verify_mode = ssl.CERT_REQUIRED
    pki.ca.configure_trust(ctx)
    ctx.num_tickets = 0
    cert, key = pki.client_files()
    result = probe_blocking(ctx, tls(tls_ca_file=pki.ca_file, tls_client_cert=cert,
                                     tls_client_key=key))
    assert result.ok and result.reason.endswith(
        "(no session ticket came: the backend's verdict on the client certificate is "
        "unknown)"), result
    assert result.latency >= 0.45
    # a refusal is still seen (its alert)
    stranger = pki.client_files(ca=trustme.CA(), name="stranger")
    bad = probe_blocking(ctx, tls(tls_ca_file=pki.ca_file, tls_client_cert=stranger[0],
                                  tls_client_key=stranger[1]))
    assert bad.reason == "TLS handshake failed: alert unknown ca", bad


def test_tls13_server_that_closes_without_its_alert(pki: Pki) -> None:
    # asyncio's server drops a refused client without sending the alert: no session ticket
    # came, so the certificate was not accepted
    ctx = pki.server_context()
    ctx.verify_mode = ssl.CERT_REQUIRED
    pki.ca.configure_trust(ctx)
    stranger = pki.client_files(ca=trustme.CA(), name="stranger")
    bad = probe(hold, ctx, tls(tls_ca_file=pki.ca_file, tls_client_cert=stranger[0],
                               tls_client_key=stranger[1]))
    assert bad.reason == ("TLS handshake failed: the backend closed the connection without "
                          "accepting the client certificate"), bad
    cert, key = pki.client_files()
    assert probe(hold, ctx, tls(tls_ca_file=pki.ca_file, tls_client_cert=cert,
                                tls_client_key=key)).ok


# -- tls = true: HTTPS and send/expect over TLS ------------------------------------------------


def answering(response: bytes) -> tuple[Handler, list[bytes]]:
    requests: list[bytes] = []

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        requests.append(await r.readuntil(b"\r\n\r\n"))
        w.write(response)
        await w.drain()
    return handler, requests


def https(pki: Pki, **kw: object) -> HealthSettings:
    return HealthSettings(kind="http", tls=True, tls_ca_file=pki.ca_file, tls_server_name=NAME,
                          interval=1.0, timeout=0.5, **kw)  # type: ignore[arg-type]


def test_https_status_and_body(pki: Pki) -> None:
    handler, requests = answering(OK)
    result = probe(handler, pki.server_context(), https(pki, http_path="/healthz",
                                                        http_expect_body=b"healthy"))
    assert (result.ok, result.reason) == (True, "HTTP 200 OK, body matched" + TLS13)
    # the request went over TLS, with Host the server name (the SNI) and the port
    assert requests[0].startswith(b"GET /healthz HTTP/1.1\r\nHost: app.example.com:")
    sick, _ = answering(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
    result = probe(sick, pki.server_context(), https(pki))
    assert (result.ok, result.reason) == (False, "HTTP 503 Service Unavailable")
    handler, _ = answering(OK)
    result = probe(handler, pki.server_context(), https(
        pki, http_expect_status=parse_status_spec("204")))
    assert (result.ok, result.reason) == (False, "HTTP 200 OK")
    # a large body arrives in several TLS records: read until the match
    big = b"x" * 30000
    handler, _ = answering(b"HTTP/1.1 200 OK\r\nContent-Length: 30009\r\n\r\n" + big[:12000]
                           + b"healthy\n\n" + big[12000:])
    result = probe(handler, pki.server_context(), https(pki, http_expect_body=b"healthy"))
    assert (result.ok, result.reason) == (True, "HTTP 200 OK, body matched" + TLS13)
    # without verification no certificate is decoded: the version alone
    handler, _ = answering(OK)
    result = probe(handler, pki.server_context(), HealthSettings(
        kind="http", tls=True, tls_verify="none", interval=1.0, timeout=0.5))
    assert (result.ok, result.reason) == (True, "HTTP 200 OK (TLSv1.3)")


def test_https_against_a_failing_certificate_never_sends_the_request(pki: Pki) -> None:
    expired = pki.ca.issue_cert(NAME, not_after=datetime.datetime(2021, 6, 1,
                                                                  tzinfo=datetime.UTC))
    handler, requests = answering(OK)
    result = probe(handler, pki.server_context(expired), https(pki))
    assert result.reason == "TLS: certificate verify failed: certificate has expired"
    assert requests == []


def test_send_expect_over_tls(pki: Pki) -> None:
    async def pong(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        if await r.readline() == b"PING\r\n":
            w.write(b"+PONG\r\n")
            await w.drain()
    settings = HealthSettings(kind="send_expect", tls=True, tls_ca_file=pki.ca_file,
                              send=b"PING\r\n", expect=b"+PONG", interval=1.0, timeout=0.5)
    assert probe(pong, pki.server_context(), settings) == \
        ProbeResult(True, "expect matched" + TLS13,
                    pytest.approx(0.05, abs=0.5))  # type: ignore[arg-type]
    wrong = HealthSettings(kind="send_expect", tls=True, tls_ca_file=pki.ca_file,
                           send=b"PING\r\n", expect=b"+OK", interval=1.0, timeout=0.5)
    result = probe(pong, pki.server_context(), wrong)
    assert (result.ok, result.reason) == (False, "expect mismatch: got b'+PONG\\r\\n'")


def test_proxy_header_goes_first_in_the_clear(pki: Pki) -> None:
    seen: list[bytes] = []
    settings = tls(tls_ca_file=pki.ca_file, proxy_protocol="v1")
    result = probe_blocking(pki.server_context(), settings, plain_prefix=15, seen=seen)
    assert result.ok, result
    assert seen == [b"PROXY UNKNOWN\r\n"]


# -- contexts: built once, shared, rebuilt when a file changes ---------------------------------


def test_one_context_per_distinct_settings(pki: Pki) -> None:
    settings = tls(tls_ca_file=pki.ca_file, tls_server_name=NAME)
    a = ProbeSpec.build("127.0.0.1", 443, settings)
    b = ProbeSpec.build("127.0.0.2", 8443, settings)
    assert a.tls is not None and b.tls is not None
    assert a.tls.context is not None and a.tls.context is b.tls.context
    other = ProbeSpec.build("127.0.0.1", 443, tls(tls_ca_file=pki.ca_file, tls_alpn=("h2",)))
    assert other.tls is not None and other.tls.context is not a.tls.context
    # a renewed CA file (new content, new mtime) gets a new context
    trustme.CA().cert_pem.write_to_path(pki.ca_file)
    renewed = ProbeSpec.build("127.0.0.1", 443, settings)
    assert renewed.tls is not None and renewed.tls.context is not a.tls.context


def test_missing_file_at_probe_time_is_inconclusive(pki: Pki) -> None:
    gone = pki.dir / "gone.pem"
    pki.ca.cert_pem.write_to_path(str(gone))
    settings = tls(tls_ca_file=str(gone))
    gone.unlink()
    result = probe(hold, pki.server_context(), settings)
    assert not result.ok and not result.conclusive
    assert result.reason == ("TLS: cannot set up the client: health.tls_ca_file: cannot be "
                             "loaded: no such file or directory")


# -- the loop's share ----------------------------------------------------------------------------


def test_tls_work_is_sliced_across_loop_turns(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    # a handshake step costs up to a millisecond: with a slice of 0, one loop callback runs at
    # most one TLS step (after the ClientHello), and every probe still finishes
    from l4lb.health import probe as probe_module
    monkeypatch.setattr(probe_module, "TLS_SLICE", 0.0)
    steps: list[int] = []  # the loop callback (engine batch) of each TLS step after connect
    real_step = probe_module.ProbeEngine._step

    def counted(self: probe_module.ProbeEngine, p: probe_module.Probe, events: int) -> None:
        if p.phase != probe_module._CONNECTING:
            steps.append(self._batch)
        real_step(self, p, events)
    monkeypatch.setattr(probe_module.ProbeEngine, "_step", counted)
    settings = tls(tls_ca_file=pki.ca_file, tls_server_name=NAME)

    async def go() -> list[ProbeResult]:
        async with tls_server(hold, pki.server_context()) as port:
            engine = probe_module.ProbeEngine()
            try:
                spec = ProbeSpec.build("127.0.0.1", port, settings)
                return list(await asyncio.gather(*(probe_module.run_probe(spec, engine)
                                                   for _ in range(30))))
            finally:
                engine.close()
    results = run(go())
    assert all(r.ok for r in results), [r for r in results if not r.ok]
    per_batch: dict[int, int] = {}
    for b in steps:
        per_batch[b] = per_batch.get(b, 0) + 1
    assert steps and max(per_batch.values()) == 1, per_batch
