"""Passwords and OAuth2 access tokens for SMTP and IMAP.

Passwords come from an env var, a command, or the system keyring; never from the config file,
never logged. ``password_command`` works like mbsync's PassCmd: its first line of output is
the password (e.g. ``pass show mail/kommune``). With ``auth = "oauth2"`` the credential is an
access token: from ``[oauth2]`` (msal, see ``oauth2.py``), or else the password source prints
one (e.g. a script asking Google for a token).
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Literal

from mailtracker.errors import ConfigError, SecretError
from mailtracker.settings.config import ImapSettings, SecretSource, Settings, SmtpSettings

if TYPE_CHECKING:
    from mailtracker.settings.oauth2 import AccessToken

Section = Literal["smtp", "imap"]

KEYRING_SERVICE = "mailtracker"


def resolve_credential(settings: Settings, section: Section, environ: Mapping[str, str], *,
                       force_refresh: bool = False) -> str | None:
    """What ``section`` logs in with: the password, or with ``auth = "oauth2"`` an access
    token (``force_refresh``: a new one, not the cached one). None if no source is set."""
    server = _server(settings, section)
    if server.auth == "oauth2":
        return fetch_token(settings, section, environ, force_refresh=force_refresh).value
    return resolve_password(server.secret, environ, section=section, username=server.username)


def fetch_token(settings: Settings, section: Section, environ: Mapping[str, str], *,
                force_refresh: bool = False) -> AccessToken:
    """The access token for ``section`` (``auth = "oauth2"``), with what it says about itself.

    Raises SecretError, OAuth2Error or OAuth2UnavailableError (see ``oauth2.TokenProvider``).
    """
    from mailtracker.settings.oauth2 import TokenProvider, describe_token

    server = _server(settings, section)
    if settings.oauth2 is not None:
        return TokenProvider(settings.oauth2, environ).token(force_refresh=force_refresh)
    value = resolve_password(server.secret, environ, section=section, username=server.username)
    if not value:
        raise SecretError('auth = "oauth2" needs an [oauth2] section or a password source '
                          "that prints an access token", key=f"{section}.auth")
    return describe_token(value, source=_source_name(server.secret))


def token_renewer(settings: Settings, section: Section, environ: Mapping[str, str]
                  ) -> Callable[[], AccessToken] | None:
    """For ``auth = "oauth2"``: a function that fetches a new token (for the one retry after
    the server refused one). None for password logins, which are never retried."""
    if _server(settings, section).auth != "oauth2":
        return None
    return lambda: fetch_token(settings, section, environ, force_refresh=True)


def _server(settings: Settings, section: Section) -> SmtpSettings | ImapSettings:
    server = settings.smtp if section == "smtp" else settings.imap
    if server is None:
        raise ConfigError(f"no [{section}] section", path=settings.path, key=section)
    return server


def _source_name(source: SecretSource) -> str:
    if source.password_env:
        return f"${source.password_env}"
    return "password_command" if source.password_command else "the keyring"


def resolve_password(source: SecretSource, environ: Mapping[str, str], *, section: str,
                     username: str | None) -> str | None:
    """The password for ``section`` ("smtp"/"imap"), or None if no source is configured."""
    if source.password_env:
        value = environ.get(source.password_env)
        if not value:
            raise SecretError(f"environment variable {source.password_env} is not set "
                              f"(named by password_env)", key=f"{section}.password_env")
        return value
    if source.password_command:
        return _from_command(source.password_command, section)
    if source.keyring:
        return _from_keyring(section, username)
    return None


def _from_command(command: str, section: str) -> str:
    key = f"{section}.password_command"
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise SecretError(f"cannot parse the command: {exc}", key=key) from None
    if not argv:
        raise SecretError("is empty", key=key)
    try:
        result = subprocess.run(argv, capture_output=True, timeout=60, check=False,
                                stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise SecretError(f"command not found: {argv[0]}", key=key) from None
    except subprocess.TimeoutExpired:
        raise SecretError("the command did not finish within 60 s", key=key) from None
    if result.returncode != 0:
        # The command's stderr may be useful (e.g. "gpg: decryption failed"), its stdout not:
        # stdout is where a password would be.
        err = result.stderr.decode("utf-8", "replace").strip().splitlines()
        hint = f": {err[-1][:200]}" if err else ""
        raise SecretError(f"the command exited with status {result.returncode}{hint}", key=key)
    lines = result.stdout.decode("utf-8", "replace").splitlines()
    if not lines or not lines[0]:
        raise SecretError("the command printed no password", key=key)
    return lines[0]


def _from_keyring(section: str, username: str | None) -> str:
    key = f"{section}.keyring"
    try:
        import keyring  # optional dependency: pip install 'mailtracker[keyring]'
    except ImportError:
        raise SecretError("keyring = true needs the 'keyring' package "
                          "(pip install 'mailtracker[keyring]')", key=key) from None
    account = f"{section}:{username or ''}"
    try:
        value = keyring.get_password(KEYRING_SERVICE, account)
    except Exception as exc:  # keyring backends raise their own types
        raise SecretError(f"keyring error: {type(exc).__name__}", key=key) from None
    if not value:
        raise SecretError(f"no password in the keyring for service {KEYRING_SERVICE!r}, account "
                          f"{account!r} (store one with: keyring set {KEYRING_SERVICE} {account})",
                          key=key)
    return str(value)
