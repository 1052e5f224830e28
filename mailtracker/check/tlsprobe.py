"""What a mail server shows before login: STARTTLS, TLS version, certificate, AUTH mechanisms.

``probe`` talks just far enough (greeting, EHLO or CAPABILITY, STARTTLS, handshake, EHLO or
CAPABILITY again) and hangs up. It never logs in, so no password goes over its connections,
which also makes it safe to repeat without verification to see a rejected certificate.
Used by ``check``; sending and reading mail go through ``outbound.smtp`` and ``inbound.imap``.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.x509.oid import NameOID

from mailtracker.settings.config import TlsMode

Kind = Literal["smtp", "imap"]

_READ_LIMIT = 65536  # longest reply line we read; a real one is far shorter


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


def probe(kind: Kind, host: str, port: int, tls: TlsMode, ctx: ssl.SSLContext,
          timeout: float) -> Probe:
    """Connect to ``host:port`` the way ``tls`` says and record what the server shows."""
    result = Probe()
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        result.error = exc
        return result
    try:
        conn = _Conn(ctx.wrap_socket(raw, server_hostname=host) if tls == "implicit" else raw)
        try:
            dialogue = _smtp_dialogue if kind == "smtp" else _imap_dialogue
            dialogue(conn, tls, ctx, host, result)
        finally:
            conn.close()
    except (OSError, ProbeProtocolError) as exc:
        result.error = exc
    finally:
        raw.close()
    return result


def unverified_cert(kind: Kind, host: str, port: int, tls: TlsMode,
                    timeout: float) -> bytes | None:
    """The server's certificate (DER) without verifying it, to say what is wrong with it."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # only to look at the certificate; nothing secret is sent
    return probe(kind, host, port, tls, ctx, timeout).cert_der


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


class _Conn:
    """A socket read line by line; ``start_tls`` swaps in the TLS layer."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file = sock.makefile("rb")

    def send(self, line: str) -> None:
        self.sock.sendall(line.encode("ascii") + b"\r\n")

    def line(self) -> str:
        data = self.file.readline(_READ_LIMIT)
        if not data:
            raise ProbeProtocolError("the server closed the connection")
        return data.decode("latin-1").rstrip("\r\n")

    def start_tls(self, ctx: ssl.SSLContext, host: str) -> None:
        self.file.close()
        self.sock = ctx.wrap_socket(self.sock, server_hostname=host)
        self.file = self.sock.makefile("rb")

    def record_tls(self, result: Probe) -> None:
        assert isinstance(self.sock, ssl.SSLSocket)
        result.version = self.sock.version() or ""
        result.cipher = (self.sock.cipher() or ("",))[0]
        result.cert_der = self.sock.getpeercert(binary_form=True)

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _smtp_reply(conn: _Conn, command: str | None, expect: int) -> list[str]:
    """Send ``command`` (None: read the greeting); the reply's texts, if its code is
    ``expect``."""
    if command is not None:
        conn.send(command)
    lines = [conn.line()]
    while lines[-1][3:4] == "-":
        lines.append(conn.line())
    if not lines[-1][:3].isdigit() or int(lines[-1][:3]) != expect:
        raise ProbeProtocolError(f"{(command or 'greeting').split()[0]}: the server answered "
                                 f"{lines[-1][:200]!r}")
    return [line[4:] for line in lines]


def _smtp_dialogue(conn: _Conn, tls: TlsMode, ctx: ssl.SSLContext, host: str,
                   result: Probe) -> None:
    _smtp_reply(conn, None, 220)
    ehlo = f"EHLO [{conn.sock.getsockname()[0]}]"
    extensions = _smtp_reply(conn, ehlo, 250)[1:]
    if tls == "starttls":
        result.starttls_offered = any(e.upper().split()[:1] == ["STARTTLS"]
                                      for e in extensions)
        if not result.starttls_offered:
            return
        _smtp_reply(conn, "STARTTLS", 220)
        conn.start_tls(ctx, host)
        extensions = _smtp_reply(conn, ehlo, 250)[1:]  # what was offered in clear is void
    if tls != "none":
        conn.record_tls(result)
    for ext in extensions:
        words = ext.upper().replace("=", " ").split()  # "AUTH PLAIN" or the old "AUTH=PLAIN"
        if words[:1] == ["AUTH"]:
            result.mechanisms = tuple(sorted(set(words[1:])))
    with contextlib.suppress(OSError, ProbeProtocolError):
        _smtp_reply(conn, "QUIT", 221)


def _imap_command(conn: _Conn, tag: str, command: str) -> list[str]:
    """Send a tagged command; its untagged lines, if the tagged answer is OK."""
    conn.send(f"{tag} {command}")
    untagged = []
    while not (line := conn.line()).startswith(f"{tag} "):
        untagged.append(line)
    if not line[len(tag) + 1:].upper().startswith("OK"):
        raise ProbeProtocolError(f"{command}: the server answered {line[:200]!r}")
    return untagged


def _imap_capabilities(conn: _Conn, tag: str) -> set[str]:
    return {cap.upper() for line in _imap_command(conn, tag, "CAPABILITY")
            if line.upper().startswith("* CAPABILITY ") for cap in line.split()[2:]}


def _imap_dialogue(conn: _Conn, tls: TlsMode, ctx: ssl.SSLContext, host: str,
                   result: Probe) -> None:
    greeting = conn.line()
    if not greeting.upper().startswith("* OK"):
        raise ProbeProtocolError(f"unexpected IMAP greeting {greeting[:200]!r}")
    if tls == "starttls":
        result.starttls_offered = "STARTTLS" in _imap_capabilities(conn, "c1")
        if not result.starttls_offered:
            return
        _imap_command(conn, "c2", "STARTTLS")
        conn.start_tls(ctx, host)
    if tls != "none":
        conn.record_tls(result)
    capabilities = _imap_capabilities(conn, "c3")  # after TLS: the pre-TLS list is void
    result.mechanisms = tuple(sorted(c[5:] for c in capabilities if c.startswith("AUTH=")))
    result.logindisabled = "LOGINDISABLED" in capabilities
    with contextlib.suppress(OSError, ProbeProtocolError):
        _imap_command(conn, "c4", "LOGOUT")
