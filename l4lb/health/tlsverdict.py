"""Checks over TLS: the operator-readable reasons of a probe's TLS failures and passes.

Pure: each function turns what the ssl module reported (an exception, the negotiated version,
cipher and the certificate's notAfter) into the short reason that the backend's state, its
DOWN log line and `l4lb backends` show:

    TLS: certificate verify failed: certificate has expired
    TLS: certificate verify failed: hostname mismatch (not valid for 'app.example.com')
    TLS handshake failed: alert unknown ca
    TLS error after the handshake: alert certificate required
    TLS handshake failed: the backend answered in plain text: b'HTTP/1.1 400 Bad Request...'
    TLS handshake ok: TLSv1.3 TLS_AES_256_GCM_SHA384, certificate valid until 2027-03-01
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Mapping

_SHOW_BYTES = 40  # bytes of a plain-text reply shown in a reason
_TLS_CONTENT_TYPES = range(0x14, 0x19)  # the first byte of a TLS record (RFC 8446, 5.1)
# X509_V_ERR_* codes (openssl/x509_vfy.h) where the backend's CA is simply not trusted here:
# the reason then says which key fixes it
_UNTRUSTED = frozenset({18, 19, 20, 21})  # self-signed, self-signed in chain, no issuer x2
_HOSTNAME_MISMATCH = 62
_IP_MISMATCH = 64
_UNTRUSTED_HINT = ' (set tls_ca_file to the CA that signed it, or tls_verify = "none")'


def shown(data: bytes) -> str:
    """The first bytes of a reply, for a reason."""
    return repr(data[:_SHOW_BYTES]) + ("..." if len(data) > _SHOW_BYTES else "")


def is_plain_text(head: bytes) -> bool:
    """Whether the first bytes from the backend cannot be the start of a TLS record."""
    return bool(head) and head[0] not in _TLS_CONTENT_TYPES


def verify_failure(exc: ssl.SSLCertVerificationError) -> str:
    """The reason of a certificate that did not verify."""
    code = exc.verify_code
    message = (exc.verify_message or exc.reason or "unknown error").rstrip(".")
    if code in (_HOSTNAME_MISMATCH, _IP_MISMATCH):
        _, _, rest = message.partition(", certificate is ")
        detail = f" ({rest})" if rest else ""
        return f"TLS: certificate verify failed: hostname mismatch{detail}"
    hint = _UNTRUSTED_HINT if code in _UNTRUSTED else ""
    return f"TLS: certificate verify failed: {message[:1].lower()}{message[1:]}{hint}"


def handshake_failure(exc: BaseException, head: bytes) -> str:
    """The reason of a handshake the backend broke off or answered wrongly. `head`: the first
    bytes the backend sent (b"" if none)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return verify_failure(exc)
    if is_plain_text(head):
        return f"TLS handshake failed: the backend answered in plain text: {shown(head)}"
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return "TLS handshake failed: connection closed by the backend"
    if isinstance(exc, ConnectionResetError):
        return "TLS handshake failed: connection reset"
    reason = getattr(exc, "reason", None)
    if isinstance(reason, str) and reason:
        return f"TLS handshake failed: {_words(reason)}"
    if isinstance(exc, OSError) and exc.strerror:
        return f"TLS handshake failed: {exc.strerror.lower()}"
    return f"TLS handshake failed: {exc}"


def session_failure(exc: BaseException) -> str:
    """The reason of a TLS error after the handshake (an alert while reading the reply, such
    as a TLS 1.3 server's refusal of the client certificate)."""
    reason = getattr(exc, "reason", None)
    text = _words(reason) if isinstance(reason, str) and reason else str(exc)
    return f"TLS error after the handshake: {text}"


def _words(reason: str) -> str:
    """"TLSV13_ALERT_CERTIFICATE_REQUIRED" -> "alert certificate required"."""
    text = reason.lower()
    for prefix in ("sslv3_", "tlsv13_", "tlsv1_", "tlsv12_"):
        if text.startswith(prefix):
            text = text[len(prefix):]
            break
    return text.replace("_", " ")


def not_after(cert: Mapping[str, object] | None) -> str | None:
    """The certificate's notAfter as a date, "2027-03-01" (None: not known: with tls_verify =
    "none" the ssl module decodes no certificate)."""
    if not cert:
        return None
    text = cert.get("notAfter")
    if not isinstance(text, str):
        return None
    try:
        seconds = ssl.cert_time_to_seconds(text)
    except ValueError:
        return None
    return time.strftime("%Y-%m-%d", time.gmtime(seconds))


def passed(version: str | None, cipher: str | None, valid_until: str | None,
           alpn: str | None) -> str:
    """The reason of a completed handshake (kind "tls")."""
    parts = " ".join(p for p in (version, cipher) if p)
    extra = []
    if alpn:
        extra.append(f"alpn {alpn}")
    if valid_until:
        extra.append(f"certificate valid until {valid_until}")
    tail = ", ".join(extra)
    return "TLS handshake ok" + (f": {parts}" if parts else "") + (f", {tail}" if tail else "")

