"""What a mail server shows before login: STARTTLS, TLS version, certificate, AUTH mechanisms.

``probe`` talks just far enough (greeting, EHLO or CAPABILITY, STARTTLS, handshake, EHLO or
CAPABILITY again) and hangs up, through the same libraries that send and read mail:
aiosmtplib for SMTP, imapclient for IMAP. It never logs in, so no password goes over its
connections, which also makes it safe to repeat without verification to see a rejected
certificate. Used by ``check``.
"""

from __future__ import annotations

import contextlib
import ssl
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import aiosmtplib
from cryptography import x509
from cryptography.x509.oid import NameOID
from imapclient import IMAPClient

from mailtracker.settings.config import TlsMode

Kind = Literal["smtp", "imap"]

class ProbeProtocolError(Exception):
    """The server answered something the probe did not expect (text says what)."""


@dataclass
class Probe:
    """What the server showed. ``error`` is why the conversation stopped early, if it did:
    an ``ssl.SSLCertVerificationError``, another ``OSError`` (``TimeoutError``,
    ``ssl.SSLError``, refused, …) or a ``ProbeProtocolError``; the fields before it are set."""

    starttls_offered: bool | None = None  # None unless tls = "starttls" and it got that far
    version: str = ""  # "TLSv1.3"
    cipher: str = ""
    cert_der: bytes | None = None
    mechanisms: tuple[str, ...] = ()  # upper case, e.g. ("LOGIN", "PLAIN")
    logindisabled: bool = False  # IMAP LOGINDISABLED
    error: Exception | None = None


async def probe(kind: Kind, host: str, port: int, tls: TlsMode, ctx: ssl.SSLContext,
                timeout: float) -> Probe:
    """Connect to ``host:port`` the way ``tls`` says and record what the server shows.

    The IMAP probe blocks (imapclient is synchronous); ``check`` runs nothing else meanwhile.
    """
    result = Probe()
    try:
        if kind == "smtp":
            await _smtp_probe(host, port, tls, ctx, timeout, result)
        else:
            _imap_probe(host, port, tls, ctx, timeout, result)
    except Exception as exc:  # the libraries' own types: reduce to what check explains
        result.error = _cause(exc)
    return result


async def unverified_cert(kind: Kind, host: str, port: int, tls: TlsMode,
                          timeout: float) -> bytes | None:
    """The server's certificate (DER) without verifying it, to say what is wrong with it."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # only to look at the certificate; nothing secret is sent
    return (await probe(kind, host, port, tls, ctx, timeout)).cert_der


def _cause(exc: BaseException) -> Exception:
    """The ``OSError`` (refused, timeout, TLS, certificate) behind a library's exception, or
    a ``ProbeProtocolError`` saying what the server answered."""
    chain: list[BaseException] = []
    seen: BaseException | None = exc
    while seen is not None and seen not in chain:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    # aiosmtplib's errors are OSErrors too: the one underneath says what went wrong
    for item in chain:
        if isinstance(item, OSError) and not isinstance(item, aiosmtplib.SMTPException):
            return item
    if any(isinstance(item, aiosmtplib.SMTPTimeoutError | aiosmtplib.SMTPConnectTimeoutError)
           for item in chain):
        return TimeoutError(str(exc))
    for item in chain:
        if isinstance(item, OSError):
            return item
    return ProbeProtocolError(" ".join(str(exc).split())[:300] or type(exc).__name__)


def _record_tls(sock: ssl.SSLObject | ssl.SSLSocket | None, result: Probe) -> None:
    if sock is None:
        raise ProbeProtocolError("no TLS layer on the connection")
    result.version = sock.version() or ""
    result.cipher = (sock.cipher() or ("",))[0]
    result.cert_der = sock.getpeercert(binary_form=True)


async def _smtp_probe(host: str, port: int, tls: TlsMode, ctx: ssl.SSLContext,
                      timeout: float, result: Probe) -> None:
    client = aiosmtplib.SMTP(hostname=host, port=port, use_tls=tls == "implicit",
                             start_tls=False, tls_context=ctx, timeout=timeout)
    await client.connect()
    try:
        await client.ehlo()
        if tls == "starttls":
            result.starttls_offered = client.supports_extension("starttls")
            if not result.starttls_offered:
                return
            await client.starttls()
            await client.ehlo()  # what was offered in clear is void
        if tls != "none":
            assert client.transport is not None
            _record_tls(client.transport.get_extra_info("ssl_object"), result)
        result.mechanisms = tuple(sorted({m.upper() for m in client.server_auth_methods}))
        with contextlib.suppress(aiosmtplib.SMTPException, OSError):
            await client.quit()
    finally:
        client.close()


def _imap_probe(host: str, port: int, tls: TlsMode, ctx: ssl.SSLContext, timeout: float,
                result: Probe) -> None:
    client = IMAPClient(host, port, ssl=tls == "implicit", ssl_context=ctx, timeout=timeout)
    try:
        if tls == "starttls":
            result.starttls_offered = client.has_capability("STARTTLS")
            if not result.starttls_offered:
                return
            client.starttls(ctx)
        if tls != "none":
            sock = client.socket()
            _record_tls(sock if isinstance(sock, ssl.SSLSocket) else None, result)
        capabilities = {c.decode("ascii", "replace").upper() for c in client.capabilities()}
        result.mechanisms = tuple(sorted(c[5:] for c in capabilities if c.startswith("AUTH=")))
        result.logindisabled = "LOGINDISABLED" in capabilities
        with contextlib.suppress(Exception):
            client.logout()
    finally:
        with contextlib.suppress(OSError):
            client.shutdown()


@dataclass(frozen=True)
class CertInfo:
    names: tuple[str, ...]  # DNS names and IP addresses it is valid for
    issuer: str  # the issuer's CN, else its O
    not_after: datetime  # aware, UTC

    def days_left(self, now: datetime) -> int:
        return (self.not_after - now).days

    def describe(self, now: datetime) -> str:
        return (f"certificate for {', '.join(self.names) or '(no names)'}, issued by "
                f"'{self.issuer}', valid until {self.not_after:%Y-%m-%d} "
                f"({self.days_left(now)} days left)")


def read_cert(der: bytes | None) -> CertInfo | None:
    """The names, issuer and expiry of a DER certificate; None if there is none or it is
    unreadable."""
    if der is None:
        return None
    try:
        cert = x509.load_der_x509_certificate(der)
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = [*san.get_values_for_type(x509.DNSName),
                     *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))]
        except x509.ExtensionNotFound:
            names = [str(a.value)
                     for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
        return CertInfo(tuple(names), _name_text(cert.issuer), cert.not_valid_after_utc)
    except ValueError:
        return None


def _name_text(name: x509.Name) -> str:
    for oid in (NameOID.COMMON_NAME, NameOID.ORGANIZATION_NAME):
        attributes = name.get_attributes_for_oid(oid)
        if attributes:
            return str(attributes[0].value)
    return name.rfc4514_string()


def explain_rejection(exc: ssl.SSLCertVerificationError, host: str, ca_file: Path | None,
                      cert: CertInfo | None, now: datetime) -> tuple[str, str]:
    """What is wrong with a rejected certificate, and what to do: ``(detail, fix)``."""
    about = cert.describe(now) if cert else "certificate details unreadable"
    detail = f"certificate not accepted ({exc.verify_message}); {about}"
    code = exc.verify_code
    if code in (62, 64):  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH
        names = ", ".join(cert.names) if cert else "another name"
        return detail, (f"the certificate is for {names}, not {host}: set host to one of "
                        "those names")
    if code == 10:  # X509_V_ERR_CERT_HAS_EXPIRED
        return detail, "the server's administrator must renew the certificate"
    if code == 9:  # X509_V_ERR_CERT_NOT_YET_VALID
        return detail, "check this computer's clock"
    issuer = f" ('{cert.issuer}')" if cert else ""
    trusted = (f"; ca_file is now {ca_file}, a different CA" if ca_file else
               "; the system's CA store does not know it")
    return detail, f"set ca_file to the CA that signed it{issuer}{trusted}"
