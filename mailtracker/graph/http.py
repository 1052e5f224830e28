"""HTTP to Microsoft Graph: the only module that imports httpx.

:class:`GraphClient` sends one request at a time per thread, at most
:data:`MAX_IN_FLIGHT` at once per mailbox (Graph's documented limit for the Outlook service),
with the bearer token from ``[oauth2]``. It turns answers into plain :class:`Response` data or
:mod:`mailtracker.errors` exceptions:

* ``401`` (and ``403 ErrorAccessDenied``: a permission granted since the token was issued):
  one forced token refresh, then :class:`~mailtracker.errors.GraphAuthError` (exit 13);
* ``403``: ``ErrorQuotaExceeded`` is a full mailbox; anything else names the permission the
  call needs (``Mail.ReadWrite``, ``Mail.Send``) and the RBAC scope that may be missing;
* ``429``, and ``503``/``504`` carrying ``Retry-After``: wait as told (else exponential
  backoff with jitter) and try again, up to ``retries`` times: Graph did not process them;
* a connection that fails before the request was written (refused, DNS, TLS) is
  :class:`~mailtracker.errors.GraphLinkError` with ``reached=False``; one lost later has
  ``reached=True``. Only idempotent requests (GET) are retried after a dropped link (twice).

The token goes only to the configured endpoint's origin: a ``nextLink`` pointing elsewhere is
refused. Tokens never appear in logs or errors.
"""

from __future__ import annotations

import json
import logging
import random
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import httpx

from mailtracker.errors import GraphAuthError, GraphError, GraphLinkError

if TYPE_CHECKING:
    from mailtracker.settings.graphconfig import GraphSettings
    from mailtracker.settings.oauth2 import AccessToken

log = logging.getLogger("mailtracker.graph")

MAX_IN_FLIGHT = 4  # concurrent requests per app and mailbox (Graph throttling limits)
RETRIES = 5
BACKOFF_FIRST = 1.0
BACKOFF_CAP = 60.0
IMMUTABLE_IDS = 'IdType="ImmutableId"'

TokenSource = Callable[[bool], "AccessToken"]  # argument: force a fresh token


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]  # lower-case names
    content: bytes

    def json(self) -> dict[str, Any]:
        if not self.content:
            return {}
        data = json.loads(self.content)
        if not isinstance(data, dict):
            raise GraphError("Microsoft Graph sent an answer that is not a JSON object")
        return data


_PERMISSION_HINT = {
    "Mail.ReadBasic": "Mail.ReadWrite (application permission; Mail.Read at least)",
    "Mail.Read": "Mail.ReadWrite (application permission; Mail.Read at least)",
    "Mail.ReadWrite": "Mail.ReadWrite (application permission)",
    "Mail.Send": "Mail.Send (application permission)",
}


class GraphClient:
    """See the module docstring. Use as a context manager, or call :meth:`close`."""

    def __init__(self, settings: GraphSettings, tokens: TokenSource, *,
                 sleep: Callable[[float], None] = time.sleep, retries: int = RETRIES,
                 jitter: Callable[[], float] = random.random):
        self.settings = settings
        self._tokens = tokens
        self._token: AccessToken | None = None
        self._sleep = sleep
        self._retries = retries
        self._jitter = jitter
        self._slots = threading.BoundedSemaphore(MAX_IN_FLIGHT)
        parts = urllib.parse.urlsplit(settings.endpoint)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self.host = parts.netloc
        verify: ssl.SSLContext | bool = ssl.create_default_context(
            cafile=str(settings.ca_file) if settings.ca_file else None)
        if parts.scheme == "http":  # loopback only (config checks it)
            verify = False
        self._http = httpx.Client(verify=verify, timeout=settings.timeout, trust_env=False,
                                  headers={"User-Agent": "mailtracker", "Accept":
                                           "application/json"})

    def __enter__(self) -> GraphClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"GraphClient({self.settings.endpoint!r}, mailbox={self.settings.mailbox!r})"

    # -- URLs ----------------------------------------------------------------------------

    def user_url(self, rest: str = "") -> str:
        """``{endpoint}/users/{mailbox}{rest}``."""
        return (f"{self.settings.endpoint}/users/"
                f"{urllib.parse.quote(self.settings.mailbox, safe='@')}{rest}")

    def owns(self, url: str) -> bool:
        """Whether ``url`` is under the configured endpoint (where the token may go)."""
        return url.startswith(self.settings.endpoint + "/")

    # -- requests ------------------------------------------------------------------------

    def token(self, *, force: bool = False) -> AccessToken:
        """The cached token while it has 5 minutes left (msal's margin), else a new one."""
        token = self._token
        if (force or token is None or (token.expires_at is not None and token.expires_at
                                       - datetime.now(UTC) < timedelta(minutes=5))):
            token = self._token = self._tokens(force)
        return token

    def request(self, method: str, url: str, *, need: str, params: Mapping[str, str] | None
                = None, body: Any = None, content: bytes | None = None,
                headers: Mapping[str, str] | None = None) -> Response:
        """One Graph call with the retries and error mapping of the module docstring."""
        if not self.owns(url):
            raise GraphError(f"refusing to send the access token to {_safe(url)}: not under "
                             f"{self.settings.endpoint}", host=self.host)
        idempotent = method == "GET"
        refreshed = False
        attempt = 0
        while True:
            try:
                response = self._once(method, url, params, body, content, headers,
                                      self.token(force=False))
            except GraphLinkError as exc:
                # A GET whose connection dropped is tried again (twice at most); a refused
                # connection is not: the caller decides (watch backs off, a command stops).
                if not idempotent or not exc.reached or attempt >= min(self._retries, 2):
                    raise
                attempt += 1
                log.warning("%s; trying again (%d/%d)", exc, attempt, self._retries)
                self._sleep(self._backoff(attempt))
                continue
            if response.status in (401, 403) and not refreshed and _error_of(response)[0] in (
                    "InvalidAuthenticationToken", "ErrorAccessDenied", "HTTP 401"):
                refreshed = True  # a permission granted since the token was issued counts
                self.token(force=True)
                continue
            wait = self._throttled(response)
            if wait is not None and attempt < self._retries:
                attempt += 1
                log.info("Graph answered %d; waiting %.1f s (%d/%d)", response.status, wait,
                         attempt, self._retries)
                self._sleep(wait)
                continue
            if response.status >= 400:
                raise self._error(response, need, url)
            return response

    def _once(self, method: str, url: str, params: Mapping[str, str] | None, body: Any,
              content: bytes | None, headers: Mapping[str, str] | None,
              token: AccessToken) -> Response:
        all_headers = {"Authorization": f"Bearer {token.value}", **(headers or {})}
        try:
            with self._slots:
                r = self._http.request(method, url, params=params, json=body, content=content,
                                       headers=all_headers)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise GraphLinkError(f"cannot connect to Microsoft Graph at {self.host}: "
                                 f"{_reason(exc)}", host=self.host, reached=False) from None
        except httpx.TransportError as exc:
            raise GraphLinkError(f"the connection to Microsoft Graph at {self.host} was lost "
                                 f"during {method} {_safe(url)}: {_reason(exc)}",
                                 host=self.host, reached=True) from None
        log.debug("%s %s -> %d", method, _safe(url), r.status_code)
        return Response(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.content)

    def _throttled(self, response: Response) -> float | None:
        """Seconds to wait before trying again, or None if this answer is final."""
        retry_after = response.headers.get("retry-after")
        if response.status == 429 or (response.status in (503, 504) and retry_after):
            seconds = _seconds(retry_after)
            return seconds if seconds is not None else self._backoff(1)
        return None

    def _backoff(self, attempt: int) -> float:
        """Exponential, capped, with full jitter in its upper half."""
        base = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** (attempt - 1))
        return float(base * (0.5 + self._jitter() / 2))

    def _error(self, response: Response, need: str, url: str) -> GraphError:
        code, message = _error_of(response)
        where = f"{self.host}: " if self.host else ""
        if response.status == 401:
            return GraphAuthError(
                f"{where}Microsoft Graph refused the access token even after a fresh one "
                f"({code}: {message}); run 'mailtracker check'", host=self.host,
                status=401, code=code)
        if response.status == 403 and code == "ErrorQuotaExceeded":
            return GraphError(f"{where}the mailbox {self.settings.mailbox} is full "
                              f"(ErrorQuotaExceeded): free space, nothing was lost",
                              host=self.host, status=403, code=code)
        if response.status == 403:
            return GraphAuthError(
                f"{where}access denied to mailbox {self.settings.mailbox} ({code}: {message}): "
                f"the app needs {_PERMISSION_HINT.get(need, need)}, granted by an admin, and "
                f"the mailbox must be in its RBAC for Applications scope; see docs/graph.md",
                host=self.host, status=403, code=code)
        return GraphError(f"{where}Microsoft Graph answered {response.status} to "
                          f"{_safe(url)} ({code}: {message})", host=self.host,
                          status=response.status, code=code)


def _error_of(response: Response) -> tuple[str, str]:
    try:
        error = json.loads(response.content or b"{}").get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    code = str(error.get("code") or f"HTTP {response.status}")
    message = " ".join(str(error.get("message") or "").split())[:300]
    return code, message or "no message"


def _seconds(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, min(float(value), 3600.0))
    except ValueError:
        return None


def _safe(url: str) -> str:
    """The URL without its query (delta and skip tokens are long and say nothing)."""
    parts = urllib.parse.urlsplit(url)
    return parts.path or url


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "the server's TLS certificate is not trusted (set [graph] ca_file?)"
    return " ".join(text.split())[:200]


__all__ = ["IMMUTABLE_IDS", "MAX_IN_FLIGHT", "GraphClient", "Response", "TokenSource"]
