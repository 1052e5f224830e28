"""The one exception tree of mailtracker and the exit codes it maps to.

Every error a user can cause or meet (bad config, a dead server, a locked store) is a
``MailtrackerError`` subclass. ``cli.py`` turns them into a one-line message and the named exit
code of the class; nothing else in the code base calls ``sys.exit``.
"""

from __future__ import annotations

from enum import IntEnum
from pathlib import Path


class ExitStatus(IntEnum):
    """Process exit codes. Stable: scripts and systemd units may depend on them."""

    OK = 0
    ERROR = 1
    USAGE = 2  # click's own code for bad options
    CONFIG = 3
    STORE = 4
    LOCKED = 5
    SMTP = 6
    IMAP = 7
    TEMPLATE = 8
    INVALID_INPUT = 9
    CHECK_FAILED = 10
    DELIVERY_FAILED = 11
    DEMO_FAILED = 12
    AUTH = 13
    MISSING_EXTRA = 14  # an optional part is not installed (pip install 'mailtracker[…]')
    GRAPH = 15  # Microsoft Graph unreachable or refusing (not a login problem)
    INTERRUPTED = 130


class MailtrackerError(Exception):
    """Root of every error mailtracker reports to a user."""

    exit_status: ExitStatus = ExitStatus.ERROR


class ConfigError(MailtrackerError):
    """The configuration is missing, unreadable or invalid. Names the file and the key."""

    exit_status = ExitStatus.CONFIG

    def __init__(self, message: str, *, path: Path | None = None, key: str | None = None):
        self.path = path
        self.key = key
        where = ""
        if path is not None:
            where = f"{path}"
            if key:
                where += f": [{key}]" if "." not in key else f": {key}"
            where += ": "
        elif key:
            where = f"{key}: "
        super().__init__(f"{where}{message}")


class SecretError(ConfigError):
    """A password or token could not be obtained (env var unset, command failed, …)."""


class OAuth2Error(MailtrackerError):
    """No OAuth2 access token could be obtained: the identity provider refused, or nobody
    has signed in yet (device code flow). The message says what to do; it never holds a
    token or secret."""

    exit_status = ExitStatus.AUTH


class OAuth2UnavailableError(OAuth2Error, ConnectionError):
    """The identity provider could not be reached or answered with a server error; trying
    again later may work (``watch`` treats it like a lost link)."""


class TaskDefinitionError(ConfigError):
    """The task definition (config/tasks/*.toml) is invalid."""


class InvalidInputError(MailtrackerError, ValueError):
    """A value given on the command line is invalid (address, role, name, milestone)."""

    exit_status = ExitStatus.INVALID_INPUT


class NotFoundError(InvalidInputError, LookupError):
    """The named recipient, quarantine entry or milestone does not exist."""


class TemplateError(MailtrackerError):
    """A mail template is missing, fails to render, or renders an unsafe header."""

    exit_status = ExitStatus.TEMPLATE

    def __init__(self, message: str, *, template: str | None = None):
        self.template = template
        super().__init__(f"template {template}: {message}" if template else message)


class StoreError(MailtrackerError):
    """The state file cannot be read or written. Nothing stored before is lost."""

    exit_status = ExitStatus.STORE

    def __init__(self, message: str, *, path: Path | None = None):
        self.path = path
        super().__init__(f"{path}: {message}" if path is not None else message)


class StoreLockedError(StoreError):
    """Another mailtracker process holds the store's lock."""

    exit_status = ExitStatus.LOCKED


class StoreCorruptError(StoreError):
    """The state file is not valid mailtracker JSON."""


class StoreRestoredError(StoreError):
    """The state file is older than the mail that went out (restored from an older backup?):
    sending now could send a second copy."""


class StoreFullError(StoreError, OSError):
    """The disk is full; the write was abandoned and the old state file kept."""


class MailServerError(MailtrackerError):
    """Base of SMTP and IMAP failures; ``host`` names the server."""

    def __init__(self, message: str, *, host: str | None = None):
        self.host = host
        super().__init__(message)


class SmtpError(MailServerError):
    """Sending failed at the connection, TLS or login level (not per message)."""

    exit_status = ExitStatus.SMTP


class SmtpTlsError(SmtpError):
    """TLS could not be established or verified; no password was sent."""


class SmtpAuthError(SmtpError):
    """The SMTP server refused the login."""

    exit_status = ExitStatus.AUTH


class SmtpTimeoutError(SmtpError, TimeoutError):
    """The SMTP server did not answer in time."""


class ImapError(MailServerError):
    """Reading the mailbox failed."""

    exit_status = ExitStatus.IMAP


class ImapTlsError(ImapError):
    """TLS could not be established or verified; no password was sent."""


class ImapAuthError(ImapError):
    """The IMAP server refused the login."""

    exit_status = ExitStatus.AUTH


class ImapTimeoutError(ImapError, TimeoutError):
    """The IMAP server did not answer in time (dead link)."""


class ImapFolderError(ImapError):
    """The configured folder does not exist or cannot be selected."""


class DeliveryFailedError(MailtrackerError):
    """``notify`` finished, but some notifications failed or have an unknown outcome."""

    exit_status = ExitStatus.DELIVERY_FAILED


class CheckFailedError(MailtrackerError):
    """``check`` found at least one problem."""

    exit_status = ExitStatus.CHECK_FAILED


class DemoFailedError(MailtrackerError):
    """The demo did not reach the expected final state."""

    exit_status = ExitStatus.DEMO_FAILED


# Likely causes of the commonest connection failures, by what the error text says; the first
# match names the cause. Kept here, beside the errors, so every command words them the same.
_CAUSES = (
    (("WRONG_VERSION_NUMBER", "wrong version number", "record layer failure"),
     "the port does not speak the TLS mode configured: use 993 (IMAP) or 465 (SMTP) with "
     'tls = "implicit", 143 (IMAP) or 587 (SMTP) with tls = "starttls"'),
    (("CERTIFICATE_VERIFY_FAILED", "certificate verify failed", "self-signed",
      "unable to get local issuer"),
     "the server's certificate is not trusted: fix the certificate, or set ca_file to the CA "
     "that signed it"),
    (("Connect call failed", "Connection refused", "ECONNREFUSED"),
     "nothing accepts connections there: check host and port, or whether the server is up"),
    (("Name or service not known", "nodename nor servname", "getaddrinfo failed"),
     "the host name does not resolve: check host"),
    (("timed out", "no answer within"),
     "no answer in time: a firewall, a wrong port or a dead link"),
)


def with_advice(exc: MailServerError) -> str:
    """The error's message, ending with its likely cause (when recognised) and what to run."""
    text = str(exc)
    cause = next((why for needles, why in _CAUSES
                  if any(n.lower() in text.lower() for n in needles)), None)
    if cause:
        text += f". Likely cause: {cause}"
    if "mailtracker check" not in text:
        text += ". Run 'mailtracker check' to see what to fix"
    return text


class MissingExtraError(MailtrackerError):
    """An optional part is not installed; the message says which extra to install (or, for
    ``demo --mailbox dovecot``, which system package)."""

    exit_status = ExitStatus.MISSING_EXTRA


class GraphError(MailServerError):
    """Microsoft Graph failed: unreachable, throttled past our patience, or an error answer.
    ``code`` is Graph's error code (``ErrorItemNotFound``…), ``status`` the HTTP status."""

    exit_status = ExitStatus.GRAPH

    def __init__(self, message: str, *, host: str | None = None, status: int | None = None,
                 code: str | None = None):
        self.status = status
        self.code = code
        super().__init__(message, host=host)


class GraphAuthError(GraphError):
    """The token was refused (401) even after a fresh one, or a permission is missing (403)."""

    exit_status = ExitStatus.AUTH


class GraphLinkError(GraphError, ConnectionError):
    """The connection failed. ``reached`` is False only when the request provably never
    reached the server (refused connection, DNS or TLS failure before it was written)."""

    def __init__(self, message: str, *, host: str | None = None, reached: bool = True):
        self.reached = reached
        super().__init__(message, host=host)


class GraphThrottledError(GraphError):
    """Graph still answered 429 (or 503 with Retry-After) after every retry: the request was
    not processed, so it is safe to make again later."""
