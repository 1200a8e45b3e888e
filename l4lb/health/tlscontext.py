"""The client SSLContexts of TLS health checks: built once per distinct settings (and file
contents), cached, and shared by every probe that uses them.

A context holds what the files say (the CA certificates, the client certificate and its key)
and the settings that are the same for every backend of a service (verification, ALPN, minimum
version); the server name (SNI) is given per connection (`SSLContext.wrap_bio`). Building one
reads and parses files and costs about a millisecond, so it happens when a configuration is
checked (the config loader asks `context_problem` through l4lb.config.host) and when the
checker builds a backend's probe spec; a probe never builds one.

The cache key is the settings plus, for each file (the system's CA file too, when it is the
one verified with), its device, inode, size and mtime, so a reload after a certificate was
renewed builds a new context, and one that changed nothing reuses the old. The cache keeps
the most recent MAX_CONTEXTS.

Why the defaults (docs/health.md, "Checks over TLS"):

- verify "required", with the system's CA store unless tls_ca_file is set: a check over TLS
  exists to find what a TCP connect cannot, and an expired or untrusted certificate is the
  commonest of those. Backends with self-signed certificates must say so (`tls_verify =
  "none"`) or name their CA (`tls_ca_file`), and the loader says which to write when the
  system store is empty (HAProxy refuses `verify required` without a `ca-file` the same way).
- the host name is checked only against `tls_server_name`: a backend is addressed by IP, and
  certificates rarely list IP addresses, so without a name only the chain and the dates are
  verified (HAProxy without `verifyhost` or `sni` does the same).
- minimum version TLS 1.2: Python's and OpenSSL's default; OpenSSL 3 refuses 1.0 and 1.1 at its
  default security level anyway.
"""

from __future__ import annotations

import os
import ssl
from collections import OrderedDict
from dataclasses import dataclass

from l4lb.health.settings import HealthSettings

MAX_CONTEXTS = 64  # contexts kept; one per distinct TLS settings of a service in practice
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

_Stamp = tuple[int, int, int, int] | None  # (dev, inode, size, mtime_ns); None: unreadable


class TlsContextError(ValueError):
    """A context cannot be built; `field` names the health key at fault, str() says why."""

    def __init__(self, field: str, text: str) -> None:
        super().__init__(text)
        self.field = field  # "tls_ca_file", "tls_client_cert", "tls_client_key", "tls_verify"


@dataclass(frozen=True)
class TlsOptions:
    """What a client context is built from (the TLS keys of one health table, less SNI)."""

    verify: bool  # verify the certificate chain and dates
    check_hostname: bool  # and its names against the server name (verify and SNI set)
    ca_file: str | None  # None: the system's store (when verifying)
    client_cert: str | None  # PEM certificate (chain) presented to the backend
    client_key: str | None  # its key; None: in client_cert's file
    alpn: tuple[str, ...]  # protocols offered, in order
    min_version: str  # "1.2" or "1.3"

    @classmethod
    def of(cls, settings: HealthSettings) -> TlsOptions:
        verify = settings.tls_verify == "required"
        return cls(verify=verify,
                   check_hostname=verify and settings.tls_server_name is not None,
                   ca_file=settings.tls_ca_file, client_cert=settings.tls_client_cert,
                   client_key=settings.tls_client_key, alpn=settings.tls_alpn,
                   min_version=settings.tls_min_version)

    def files(self) -> tuple[str | None, ...]:
        """The files the context is built from; verifying without a CA file, the system
        store's file too (so a reload after the store was updated builds a new context)."""
        system = ssl.get_default_verify_paths().cafile \
            if self.verify and self.ca_file is None else None
        return self.ca_file, self.client_cert, self.client_key, system


@dataclass(frozen=True)
class TlsClient:
    """The TLS side of one backend's probe spec: the shared context and the server name,
    or why there is no context (the files changed since the configuration was checked: such
    probes are inconclusive, like other local failures)."""

    context: ssl.SSLContext | None
    server_name: str | None  # SNI and the name checked (None: no SNI, no name check)
    problem: str = ""  # why context is None
    client_cert: bool = False  # a client certificate is presented


def _stamp(path: str | None) -> _Stamp:
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _ssl_text(exc: BaseException) -> str:
    """The readable part of an ssl or OS error: "[X509: NO_CERTIFICATE_OR_CRL_FOUND] ..." ->
    "no certificate or crl found"."""
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason:
        return reason.lower().replace("_", " ")
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc)


def system_store_empty() -> bool:
    """True when OpenSSL's default CA file and directory hold no certificate."""
    paths = ssl.get_default_verify_paths()
    if paths.cafile and os.path.isfile(paths.cafile) and os.path.getsize(paths.cafile) > 0:
        return False
    if paths.capath and os.path.isdir(paths.capath):
        try:
            with os.scandir(paths.capath) as entries:
                return not any(e.name.endswith((".0", ".pem", ".crt")) for e in entries)
        except OSError:
            return True
    return True


def build_context(options: TlsOptions) -> ssl.SSLContext:
    """A new client context for `options`; TlsContextError naming the key at fault."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = _VERSIONS[options.min_version]
    if options.verify:
        ctx.check_hostname = options.check_hostname
        ctx.verify_mode = ssl.CERT_REQUIRED
        if options.ca_file is not None:
            try:
                ctx.load_verify_locations(cafile=options.ca_file)
            except (ssl.SSLError, OSError) as exc:
                raise TlsContextError("tls_ca_file", _ca_problem(exc)) from None
        else:
            if system_store_empty():
                raise TlsContextError("tls_verify", "no CA certificates in the system store")
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if options.client_cert is not None:
        try:
            ctx.load_cert_chain(options.client_cert, options.client_key)
        except (ssl.SSLError, OSError) as exc:
            raise _cert_problem(exc, options) from None
    if options.alpn:
        ctx.set_alpn_protocols(list(options.alpn))
    return ctx


def _ca_problem(exc: BaseException) -> str:
    text = _ssl_text(exc)
    if "no certificate" in text or "no start line" in text or "pem" in text:
        return "holds no PEM certificate"
    return f"cannot be loaded: {text}"


def _cert_problem(exc: BaseException, options: TlsOptions) -> TlsContextError:
    text = _ssl_text(exc)
    if "key values mismatch" in text:
        return TlsContextError("tls_client_key", "is not the key of tls_client_cert")
    if isinstance(exc, ssl.SSLError) and getattr(exc, "library", "") == "PEM" and \
            options.client_key is not None and _loads_as_cert(options.client_cert):
        return TlsContextError("tls_client_key", "holds no PEM private key")
    if options.client_key is None and _loads_as_cert(options.client_cert):
        return TlsContextError("tls_client_cert", "holds no private key: set tls_client_key "
                               "to the file that has it")
    return TlsContextError("tls_client_cert", "holds no PEM certificate" if "pem" in text
                           or "no start line" in text else f"cannot be loaded: {text}")


def _loads_as_cert(path: str | None) -> bool:
    """Whether `path` holds a PEM certificate (to tell which of cert and key is wrong)."""
    if path is None:
        return False
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cafile=path)
    except (ssl.SSLError, OSError):
        return False
    return True


_cache: OrderedDict[tuple[TlsOptions, tuple[_Stamp, ...]], ssl.SSLContext] = OrderedDict()


def context_for(options: TlsOptions) -> ssl.SSLContext:
    """The shared context for `options` and the files as they are now (built on first use)."""
    key = (options, tuple(_stamp(p) for p in options.files()))
    ctx = _cache.get(key)
    if ctx is not None:
        _cache.move_to_end(key)
        return ctx
    ctx = build_context(options)
    _cache[key] = ctx
    while len(_cache) > MAX_CONTEXTS:
        _cache.popitem(last=False)
    return ctx


def context_problem(settings: HealthSettings) -> tuple[str, str] | None:
    """(key, problem) when no context can be built for these settings, else None (and the
    context is in the cache for the probes)."""
    try:
        context_for(TlsOptions.of(settings))
    except TlsContextError as exc:
        return exc.field, str(exc)
    return None


def client_for(settings: HealthSettings) -> TlsClient:
    """The TLS side of a probe spec under `settings` (which speak TLS)."""
    try:
        ctx = context_for(TlsOptions.of(settings))
    except TlsContextError as exc:
        return TlsClient(None, settings.tls_server_name,
                         f"TLS: cannot set up the client: health.{exc.field}: {exc}")
    return TlsClient(ctx, settings.tls_server_name,
                     client_cert=settings.tls_client_cert is not None)
