"""OAuth2 access tokens for IMAP and SMTP (SASL XOAUTH2), from Microsoft Entra ID via msal.

The only module that imports msal. Two flows (``[oauth2] flow``):

* ``client_credentials`` – the app signs in as itself with a client secret (from the
  environment variable ``client_secret_env``) or a certificate; Exchange Online lets it into
  the mailboxes an administrator granted it (``Add-MailboxPermission``). Unattended.
* ``device_code`` – a person signs in once with ``mailtracker login`` (a code to enter in a
  browser); msal keeps a refresh token and renews the access token from then on.

Tokens live in msal's cache, kept in ``token_cache`` (a JSON file, mode 0600, replaced
atomically, one process at a time through a lock file). A cached token is used until 5
minutes before it expires (msal's margin); after that, or when the mail server refused it
(``force_refresh``), a new one is fetched. Tokens and secrets never appear in logs, errors or
``repr``: :class:`AccessToken` shows only what the token says about itself (audience,
permissions, expiry).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import logging
import os
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from filelock import FileLock
from filelock import Timeout as LockTimeout

from mailtracker.errors import ConfigError, OAuth2Error, OAuth2UnavailableError, SecretError
from mailtracker.settings.config import OAuth2Settings, Settings

log = logging.getLogger(__name__)

#: msal adds these by itself and refuses them in ``scopes``.
RESERVED_SCOPES = frozenset({"offline_access", "openid", "profile"})
HTTP_TIMEOUT = 30.0  # seconds per request to the identity provider
LOCK_TIMEOUT = 60.0  # another process refreshing the same cache holds it for under a second
_RETRY_LATER = {"temporarily_unavailable", "server_error", "slow_down"}


@dataclass(frozen=True)
class AccessToken:
    """An access token and what it says about itself. ``value`` is left out of ``repr``.

    ``audience`` and ``permissions`` are read from the token without checking its signature
    (only the mail server can judge it); an opaque token (Google) has neither.
    """

    value: str = field(repr=False)
    expires_at: datetime | None = None
    audience: str | None = None
    permissions: tuple[str, ...] = ()  # app roles (IMAP.AccessAsApp) or delegated scopes
    account: str | None = None  # the signed-in person, for delegated tokens
    from_cache: bool = False
    source: str = ""  # where it came from: the authority URL or "password_command"

    def describe(self, now: datetime | None = None) -> str:
        """One line for people: audience, permissions, expiry, origin — never the token."""
        now = now or datetime.now(UTC)
        parts = [f"audience {self.audience}" if self.audience
                 else "audience not readable (opaque token)"]
        if self.account:
            parts.append(f"signed in as {self.account}")
        if self.permissions:
            parts.append("permissions " + " ".join(self.permissions))
        if self.expires_at is not None:
            minutes = int((self.expires_at - now).total_seconds() // 60)
            when = f"in {minutes} min" if minutes >= 0 else "EXPIRED"
            parts.append(f"expires {self.expires_at:%Y-%m-%d %H:%M} UTC ({when})")
        parts.append("from the token cache" if self.from_cache else f"new from {self.source}")
        return ", ".join(parts)


def token_claims(value: str) -> dict[str, Any]:
    """The payload of a JWT access token, unverified; ``{}`` for an opaque token."""
    pieces = value.split(".")
    if len(pieces) != 3:
        return {}
    try:
        raw = base64.urlsafe_b64decode(pieces[1] + "=" * (-len(pieces[1]) % 4))
        claims = json.loads(raw)
    except (binascii.Error, ValueError):
        return {}
    return claims if isinstance(claims, dict) else {}


def describe_token(value: str, *, source: str, from_cache: bool = False,
                   expires_in: float | None = None, now: datetime | None = None) -> AccessToken:
    """Wrap a token string, with audience, permissions and expiry read from it if a JWT."""
    now = now or datetime.now(UTC)
    claims = token_claims(value)
    expires_at: datetime | None = None
    if expires_in is not None:
        expires_at = now + timedelta(seconds=expires_in)
    elif isinstance(claims.get("exp"), int | float):
        expires_at = datetime.fromtimestamp(claims["exp"], UTC)
    audience = claims.get("aud")
    if isinstance(audience, list):
        audience = " ".join(str(a) for a in audience)
    permissions = claims.get("roles") or str(claims.get("scp", "")).split()
    account = next((claims[k] for k in ("upn", "preferred_username", "unique_name")
                    if isinstance(claims.get(k), str)), None)
    return AccessToken(value=value, expires_at=expires_at,
                       audience=str(audience) if audience else None,
                       permissions=tuple(str(p) for p in permissions if p), account=account,
                       from_cache=from_cache, source=source)


class TokenCacheFile:
    """msal's token cache in a file only the owner can read, changed by one process at a time."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = FileLock(str(path) + ".lock", timeout=LOCK_TIMEOUT)

    @contextlib.contextmanager
    def session(self) -> Iterator[Any]:
        """Lock, load (a ``msal.SerializableTokenCache``), and save it if msal changed it."""
        with self._locked():
            cache = self._load()
            yield cache
            if cache.has_state_changed:
                self._save(cache.serialize())

    def replace(self, cache: Any) -> None:
        """Store ``cache`` instead of what the file holds (after a new sign-in)."""
        with self._locked():
            self._save(cache.serialize())

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            with self._lock:
                yield
        except LockTimeout:
            raise OAuth2Error(f"{self.path}: the token cache stayed locked for "
                              f"{LOCK_TIMEOUT:g} s by another mailtracker process") from None
        except PermissionError as exc:
            raise SecretError(f"cannot use the token cache: {exc.strerror}: {exc.filename}",
                              key="oauth2.token_cache") from None

    def _load(self) -> Any:
        import msal

        cache = msal.SerializableTokenCache()
        try:
            mode = self.path.stat().st_mode
        except FileNotFoundError:
            return cache
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise SecretError(f"{self.path} holds access and refresh tokens but other users "
                              f"may read it; run: chmod 600 {self.path}",
                              key="oauth2.token_cache")
        try:
            cache.deserialize(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError, UnicodeError) as exc:
            # Tokens can always be fetched again; a device-code user is told to sign in.
            log.warning("token cache %s is unreadable (%s); starting with an empty one",
                        self.path, type(exc).__name__)
            cache = msal.SerializableTokenCache()
        return cache

    def _save(self, text: str) -> None:
        directory = self.path.parent
        fd, tmp = tempfile.mkstemp(prefix=".oauth2-cache-", dir=directory)  # mode 0600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class TokenProvider:
    """Access tokens per ``[oauth2]``; see the module docstring for the flows and caching."""

    def __init__(self, settings: OAuth2Settings, environ: Mapping[str, str], *,
                 timeout: float = HTTP_TIMEOUT):
        self.settings = settings
        self._environ = environ
        self._timeout = timeout
        self._cache = TokenCacheFile(settings.token_cache)
        self._secret: str | None = None  # scrubbed from every message, should one echo it

    @property
    def scopes(self) -> list[str]:
        return [s for s in self.settings.scopes if s.lower() not in RESERVED_SCOPES]

    def token(self, *, force_refresh: bool = False) -> AccessToken:
        """A token valid for at least 5 more minutes: from the cache, else from the identity
        provider. ``force_refresh`` skips the cache (after the mail server refused a token).

        Raises SecretError (client secret or certificate unusable), OAuth2Error (refused, or
        nobody signed in yet) or OAuth2UnavailableError (identity provider unreachable).
        """
        with self._cache.session() as cache:
            app = self._app(cache)
            if self.settings.flow == "client_credentials":
                if force_refresh:
                    app.remove_tokens_for_client()
                result = self._call(app.acquire_token_for_client, self.scopes)
            else:
                result = self._delegated(app, force_refresh)
        return self._accept(result)

    def sign_in(self, show: Callable[[str], None]) -> AccessToken:
        """Device code flow: ``show`` the instructions (URL and code), wait until the person
        signed in, and keep the result in the cache (replacing an earlier sign-in). For the
        client credentials flow: fetch a fresh token, proving the app's credentials work."""
        if self.settings.flow == "client_credentials":
            return self.token(force_refresh=True)
        import msal

        cache = msal.SerializableTokenCache()
        app = self._app(cache)
        flow = self._call(app.initiate_device_flow, self.scopes)
        if "user_code" not in flow:
            raise self._refused(flow, "could not start the device code sign-in")
        show(str(flow["message"]))
        token = self._accept(self._call(app.acquire_token_by_device_flow, flow))
        self._cache.replace(cache)
        return token

    def _delegated(self, app: Any, force_refresh: bool) -> dict[str, Any]:
        accounts = app.get_accounts()
        if not accounts:
            raise OAuth2Error(f"nobody has signed in yet (token cache {self.settings.token_cache}"
                              "): run 'mailtracker login' once, interactively")
        result = self._call(app.acquire_token_silent_with_error, self.scopes, accounts[0],
                            force_refresh=force_refresh)
        if result is None:
            raise OAuth2Error("the cached sign-in holds no usable refresh token: run "
                              "'mailtracker login' again")
        return dict(result)

    def _app(self, cache: Any) -> Any:
        import msal

        s = self.settings
        common: dict[str, Any] = dict(authority=s.authority, token_cache=cache,
                                      instance_discovery=False, timeout=self._timeout)
        if s.flow == "device_code":
            return self._call(msal.PublicClientApplication, s.client_id, **common)
        return self._call(msal.ConfidentialClientApplication, s.client_id,
                          client_credential=self._credential(), **common)

    def _credential(self) -> str | dict[str, str]:
        s = self.settings
        if s.client_secret_env:
            secret = self._environ.get(s.client_secret_env)
            if not secret:
                raise SecretError(f"environment variable {s.client_secret_env} is not set "
                                  "(named by client_secret_env)", key="oauth2.client_secret_env")
            self._secret = secret
            return secret
        assert s.certificate_path is not None and s.certificate_thumbprint is not None
        try:
            pem = s.certificate_path.read_text(encoding="ascii")
        except (OSError, UnicodeError) as exc:
            raise SecretError(f"cannot read {s.certificate_path}: "
                              f"{getattr(exc, 'strerror', None) or type(exc).__name__}",
                              key="oauth2.certificate_path") from None
        if "PRIVATE KEY-----" not in pem:
            raise SecretError(f"{s.certificate_path} holds no PEM private key",
                              key="oauth2.certificate_path")
        return {"private_key": pem, "thumbprint": s.certificate_thumbprint}

    def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call into msal; network failures become OAuth2UnavailableError."""
        where = self.settings.authority
        try:
            return fn(*args, **kwargs)
        except OSError as exc:  # requests' exceptions (msal's HTTP client) are OSErrors
            reason = type(exc).__name__
            if reason == "SSLError":
                reason = "TLS failed: is the identity provider's certificate trusted?"
            raise OAuth2UnavailableError(f"cannot reach the identity provider at {where} "
                                         f"({reason})") from None
        except ValueError as exc:  # msal: tenant discovery failed, unusable key, …
            raise OAuth2Error(f"{where}: {self._scrub(_first_line(str(exc)))}; check [oauth2] "
                              "tenant_id, authority and the certificate") from None

    def _accept(self, result: Mapping[str, Any]) -> AccessToken:
        if "access_token" not in result:
            raise self._refused(result, "refused to issue a token")
        from_cache = result.get("token_source") == "cache"
        token = describe_token(str(result["access_token"]), source=self.settings.authority,
                               from_cache=from_cache,
                               expires_in=float(result.get("expires_in") or 0) or None)
        log.debug("OAuth2 token %s", token.describe())
        return token

    def _refused(self, result: Mapping[str, Any], what: str) -> OAuth2Error:
        error = str(result.get("error") or "unknown_error")
        text = self._scrub(_first_line(str(result.get("error_description") or "")))
        message = f"{self.settings.authority} {what}: {error}" + (f": {text}" if text else "")
        if error in _RETRY_LATER:
            return OAuth2UnavailableError(message)
        return OAuth2Error(message + _HINTS.get(error, ""))

    def _scrub(self, text: str) -> str:
        if self._secret and len(self._secret) >= 4:
            text = text.replace(self._secret, "********")
        return text


_HINTS = {
    "invalid_client": " (is the client secret or certificate current? Secrets expire)",
    "unauthorized_client": " (check [oauth2] client_id and tenant_id)",
    "invalid_scope": " (check [oauth2] scopes)",
    "invalid_grant": " (the sign-in expired or was revoked: run 'mailtracker login' again)",
    "expired_token": " (the code was not entered in time: run 'mailtracker login' again)",
    "authorization_declined": " (the sign-in was declined)",
}


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    line = "".join(c if c.isprintable() else " " for c in line)
    return line[:300]


def sign_in(settings: Settings, environ: Mapping[str, str],
            show: Callable[[str], None]) -> AccessToken:
    """``mailtracker login``: see :meth:`TokenProvider.sign_in`. ConfigError without
    ``[oauth2]``."""
    if settings.oauth2 is None:
        raise ConfigError("no [oauth2] section: nothing to sign in to (see docs/oauth2.md)",
                          path=settings.path, key="oauth2")
    oauth2 = settings.oauth2
    servers = (settings.smtp, settings.imap)
    if settings.graph is not None and not any(s is not None and s.auth == "oauth2"
                                              for s in servers):
        oauth2 = replace(oauth2, scopes=settings.graph.scopes)  # the token is for Graph
    return TokenProvider(oauth2, environ).sign_in(show)
