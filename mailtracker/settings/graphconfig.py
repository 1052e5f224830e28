"""``[graph]``: Microsoft 365 mail read and sent through Microsoft Graph (docs/graph.md).

Parsed by ``config.py`` like the other sections; kept apart so that file stays readable.
Tokens come from ``[oauth2]`` (msal), with this section's ``scopes``.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Literal, cast

from mailtracker.addresses import check_email
from mailtracker.errors import ConfigError
from mailtracker.settings.config import _section, is_loopback_host

GraphPostAction = Literal["none", "category", "move"]

GRAPH_KEYS = {"mailbox", "folder", "endpoint", "ca_file", "read", "send", "since",
              "post_action", "category", "move_to", "timeout", "scopes", "watch_interval",
              "from_name"}
DEFAULT_ENDPOINT = "https://graph.microsoft.com/v1.0"
DEFAULT_SCOPES = ("https://graph.microsoft.com/.default",)


@dataclass(frozen=True, slots=True)
class GraphSettings:
    """``[graph]`` (names as in issue 14). ``keyword`` and ``max_message_bytes`` let the
    poller treat it like ``[imap]``: the category is Graph's keyword."""

    mailbox: str  # UPN or object id
    folder: str = "Inbox"
    endpoint: str = DEFAULT_ENDPOINT
    ca_file: Path | None = None
    read: bool = True
    send: bool = True
    since: date | None = date(2026, 1, 1)
    post_action: GraphPostAction = "none"
    category: str = "mailtracker"
    move_to: str = "Behandlet"
    timeout: float = 60.0
    scopes: tuple[str, ...] = DEFAULT_SCOPES
    watch_interval: float = 300.0
    from_name: str | None = None  # the display name on sent mail; default: the organisation
    max_message_bytes: int = 25 * 1024 * 1024

    @property
    def keyword(self) -> str:
        return self.category

    @property
    def from_address(self) -> str:
        return self.mailbox if "@" in self.mailbox else "mailtracker@localhost"


def parse_graph(data: Mapping[str, Any], path: Path) -> GraphSettings | None:
    """``[graph]`` checked; contradictions with ``[imap]``/``[smtp]`` name the key."""
    if "graph" not in data:
        return None
    sec = _section(data, "graph", path)
    sec.unknown_keys(GRAPH_KEYS)
    mailbox = sec.req_str("mailbox").strip()
    if "@" in mailbox:
        try:
            check_email(mailbox)
        except ValueError as exc:
            raise sec.fail("mailbox", str(exc)) from None
    elif any(c in mailbox for c in "/?#% "):
        raise sec.fail("mailbox", "must be the mailbox address (UPN) or its object id")
    read, send = sec.flag("read", True), sec.flag("send", True)
    if read and "imap" in data:
        raise sec.fail("read", "is true, so mail is read through Graph: remove [imap], or set "
                               "read = false to keep reading over IMAP")
    if send and "smtp" in data:
        raise sec.fail("send", "is true, so mail is sent through Graph: remove [smtp], or set "
                               "send = false to keep sending over SMTP")
    if "oauth2" not in data:
        raise sec.fail("mailbox", "[graph] needs an [oauth2] section (the app registration "
                                  "whose tokens Graph accepts); see docs/graph.md")
    post_action = cast(GraphPostAction, sec.choice("post_action", "none",
                                                   ("none", "category", "move")))
    if post_action == "move" and not str(sec.data.get("move_to", "")).strip():
        raise sec.fail("move_to", 'is required with post_action = "move" (the folder to move '
                                  'handled mail to, e.g. "Behandlet")')
    return GraphSettings(
        mailbox=mailbox, folder=sec.req_str("folder", "Inbox").strip(),
        endpoint=_endpoint(sec), ca_file=sec.existing_file("ca_file", path.parent),
        read=read, send=send, since=_since(sec), post_action=post_action,
        category=sec.req_str("category", "mailtracker").strip(),
        move_to=sec.req_str("move_to", "Behandlet").strip(),
        timeout=sec.number("timeout", 60.0, 1.0, 600.0), scopes=_scopes(sec),
        watch_interval=sec.number("watch_interval", 300.0, 1.0, 3600.0),
        from_name=sec.text("from_name"),
    )


def _endpoint(sec: Any) -> str:
    endpoint = sec.req_str("endpoint", DEFAULT_ENDPOINT).strip().rstrip("/")
    parts = urllib.parse.urlsplit(endpoint)
    if parts.query or parts.fragment or not parts.hostname:
        raise sec.fail("endpoint", f"must be a URL like {DEFAULT_ENDPOINT}, not {endpoint!r}")
    if parts.scheme == "https":
        return str(endpoint)
    if parts.scheme == "http" and is_loopback_host(parts.hostname):
        return str(endpoint)
    raise sec.fail("endpoint", f"must be https:// (plain http only on loopback), not "
                               f"{endpoint!r}")


def _since(sec: Any) -> date | None:
    raw = sec.data.get("since", "2026-01-01")
    if isinstance(raw, date):
        return raw
    if isinstance(raw, str):
        try:
            return date.fromisoformat(raw)
        except ValueError:
            pass
    raise sec.fail("since", f"must be a date like 2026-01-01, not {raw!r}")


def _scopes(sec: Any) -> tuple[str, ...]:
    value = sec.data.get("scopes", list(DEFAULT_SCOPES))
    if (not isinstance(value, list) or not value
            or not all(isinstance(v, str) and v.strip() and v.isprintable() for v in value)):
        raise sec.fail("scopes", "must be a non-empty list of strings")
    return tuple(v.strip() for v in value)


def check_graph_oauth2(graph: GraphSettings | None, data: Mapping[str, Any], path: Path) -> None:
    """The client credentials flow takes one ``/.default`` scope (Entra's rule)."""
    oauth2 = data.get("oauth2")
    if graph is None or not isinstance(oauth2, Mapping):
        return
    if oauth2.get("flow", "client_credentials") == "client_credentials" and (
            len(graph.scopes) != 1 or not graph.scopes[0].endswith("/.default")):
        raise ConfigError("the client credentials flow takes exactly one scope ending in "
                          "'/.default' (for Graph: 'https://graph.microsoft.com/.default')",
                          path=path, key="graph.scopes")
