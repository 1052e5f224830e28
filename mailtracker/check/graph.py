"""``check`` for ``[graph]``: the token (audience, permissions, expiry — never the token), the
mailbox reachable, the folder (and ``move_to``) found, and the permissions read, send and the
post-action need. Lines in the same form as the SMTP and IMAP groups."""

from __future__ import annotations

from datetime import datetime

from mailtracker.app import App
from mailtracker.check import _Group
from mailtracker.errors import ConfigError, GraphAuthError, GraphError, OAuth2Error, SecretError
from mailtracker.graph import open_client
from mailtracker.inbound.graph import GraphReader
from mailtracker.settings.graphconfig import GraphSettings
from mailtracker.settings.oauth2 import AccessToken

GRAPH_AUDIENCES = {"https://graph.microsoft.com", "00000003-0000-0000-c000-000000000000",
                   "https://graph.microsoft.us", "https://dod-graph.microsoft.us",
                   "https://microsoftgraph.chinacloudapi.cn"}
_IMPLIES = {"Mail.Read": {"Mail.Read", "Mail.ReadWrite", "Mail.Read.Shared",
                          "Mail.ReadWrite.Shared"},
            "Mail.ReadWrite": {"Mail.ReadWrite", "Mail.ReadWrite.Shared"},
            "Mail.Send": {"Mail.Send", "Mail.Send.Shared"}}
_DOCS = "docs/graph.md"


def needed_permissions(s: GraphSettings) -> list[str]:
    """Drafts (for sending), categories and moves need Mail.ReadWrite; reading Mail.Read."""
    needs: list[str] = []
    if s.send or (s.read and s.post_action != "none"):
        needs.append("Mail.ReadWrite")
    elif s.read:
        needs.append("Mail.Read")
    if s.send:
        needs.append("Mail.Send")
    return needs


def graph_group(app: App, now: datetime) -> _Group:
    s = app.settings.graph
    assert s is not None
    g = _Group("graph", f"Microsoft Graph {s.endpoint} (mailbox {s.mailbox})")
    client = open_client(app.settings, app.environ)
    rest = ["permissions", "mailbox", "folder", *(["move_to"] if s.post_action == "move"
                                                  else [])]
    with client:
        try:
            token = client.token()
        except (SecretError, OAuth2Error) as exc:
            g.add("token", "fail", str(exc), f"see {_DOCS}; 'mailtracker login' says what the "
                                             "identity provider answered")
            g.block("the token", rest)
            return g
        g.secret = token.value
        _token_line(g, token, now)
        _permissions(g, s, token)
        try:
            client.request("GET", client.user_url("/mailFolders/inbox"), need="Mail.Read",
                           params={"$select": "id"})
        except GraphError as exc:
            g.add("mailbox", "fail", str(exc), _mailbox_fix(exc, s))
            g.block("the mailbox", rest[2:])
            return g
        g.add("mailbox", "ok", f"{s.mailbox} reachable")
        _folders(g, GraphReader(client, s), s)
    return g


def _token_line(g: _Group, token: AccessToken, now: datetime) -> None:
    detail = f"{token.describe(now)} (the token itself is not shown)"
    if token.audience and token.audience.lower().rstrip("/") not in GRAPH_AUDIENCES:
        g.add("token", "fail", detail, "the token is not for Microsoft Graph: set [graph] "
              "scopes = [\"https://graph.microsoft.com/.default\"]")
    else:
        g.add("token", "ok", detail)


def _permissions(g: _Group, s: GraphSettings, token: AccessToken) -> None:
    has = {p.split("/")[-1] for p in token.permissions}
    if not token.permissions:
        g.add("permissions", "warn", "the token does not list its permissions",
              f"make sure the app has {', '.join(needed_permissions(s))} ({_DOCS})")
        return
    missing = [p for p in needed_permissions(s) if not has & _IMPLIES[p]]
    if missing:
        g.add("permissions", "fail", f"the token grants {' '.join(sorted(has))}; missing "
              f"{', '.join(missing)}", f"add the application permission(s) "
              f"{', '.join(missing)} in Entra ID, grant admin consent (or the RBAC for "
              f"Applications role), then run 'mailtracker check' again ({_DOCS})")
    else:
        g.add("permissions", "ok", f"{', '.join(needed_permissions(s))} granted")


def _mailbox_fix(exc: GraphError, s: GraphSettings) -> str:
    if isinstance(exc, GraphAuthError) and exc.status == 403:
        return (f"give the app access to {s.mailbox}: an RBAC for Applications management "
                f"scope that includes it, or the tenant-wide grant ({_DOCS})")
    if exc.code == "ErrorInvalidUser" or exc.status == 404:
        return f"[graph] mailbox ({s.mailbox!r}) must be the mailbox's address or object id"
    return "is [graph] endpoint right, and is Microsoft Graph reachable from here?"


def _folders(g: _Group, reader: GraphReader, s: GraphSettings) -> None:
    names = [("folder", s.folder), *([("move_to", s.move_to)] if s.post_action == "move"
                                     else [])]
    for key, name in names:
        try:
            reader.folder_id(name)
        except ConfigError as exc:
            g.add(key, "fail", str(exc), f"set [graph] {key} to a well-known name (Inbox), a "
                  "display name or a path such as 'Indbakke/EG'")
        except GraphError as exc:
            g.add(key, "fail", str(exc))
        else:
            g.add(key, "ok", f"{name!r} found")
