"""The HTTP side of :mod:`tests.plugins.fakegraph`: what each Graph URL does, the JSON of a
message, Exchange's stamping of incoming mail, and the request handler (faults, limits)."""

from __future__ import annotations

import base64
import binascii
import email
import email.policy
import json
import re
import urllib.parse
from datetime import UTC, datetime
from email.message import EmailMessage
from email.message import Message as EmailMsg
from email.utils import parseaddr
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.plugins.fakegraph import FakeGraph, Folder, Mailbox, Message

Answer = tuple[int, Any, dict[str, str]]
_USER = r"/v1\.0/users/(?P<u>[^/]+)"


class Routes:
    def __init__(self, graph: FakeGraph, headers: EmailMsg):
        self.g = graph
        self.headers = headers

    def route(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> Answer:
        from tests.plugins.fakegraph import GraphError

        table = [
            ("GET", _USER + r"/mailFolders/(?P<f>[^/]+)/messages/delta", self.delta, "ReadBasic"),
            ("GET", _USER + r"/mailFolders/(?P<f>[^/]+)/messages", self.list, "ReadBasic"),
            ("GET", _USER + r"/mailFolders/(?P<f>[^/]+)/childFolders", self.children,
             "ReadBasic"),
            ("GET", _USER + r"/mailFolders/(?P<f>[^/]+)", self.get_folder, "ReadBasic"),
            ("GET", _USER + r"/mailFolders", self.top_folders, "ReadBasic"),
            ("GET", _USER + r"/messages/(?P<m>[^/]+)/\$value", self.mime, "Read"),
            ("GET", _USER + r"/messages/(?P<m>[^/]+)", self.get_message, "ReadBasic"),
            ("POST", _USER + r"/messages/(?P<m>[^/]+)/send", self.send, "Send"),
            ("POST", _USER + r"/messages/(?P<m>[^/]+)/move", self.move, "ReadWrite"),
            ("POST", _USER + r"/messages", self.create, "ReadWrite"),
            ("PATCH", _USER + r"/messages/(?P<m>[^/]+)", self.patch, "ReadWrite"),
        ]
        for verb, pattern, handler, need in table:
            match = re.fullmatch(pattern, path)
            if verb == method and match:
                box = self.g.mailbox(match["u"])
                self.g.authorize(self.headers.get("Authorization"), "Mail." + need, box)
                if self.g.quota_exceeded and method != "GET" and need != "Send":
                    raise GraphError(403, "ErrorQuotaExceeded", "The mailbox is full.")
                args = {k: v for k, v in match.groupdict().items() if k != "u"}
                return handler(box, query=query, body=body, **args)  # type: ignore[operator]
        raise GraphError(400, "BadRequest", f"Unsupported request {method} {path}")

    # -- folders -------------------------------------------------------------------------

    def _folder_json(self, folder: Folder) -> dict[str, Any]:
        return {"id": folder.id, "displayName": folder.name, "parentFolderId": folder.parent}

    def get_folder(self, box: Mailbox, f: str, **_: Any) -> Answer:
        return 200, self._folder_json(self.g.folder(box, f)), {}

    def top_folders(self, box: Mailbox, **_: Any) -> Answer:
        return 200, {"value": [self._folder_json(x) for x in box.folders.values()
                               if x.parent is None]}, {}

    def children(self, box: Mailbox, f: str, **_: Any) -> Answer:
        parent = self.g.folder(box, f)
        return 200, {"value": [self._folder_json(x) for x in box.folders.values()
                               if x.parent == parent.id]}, {}

    # -- reading -------------------------------------------------------------------------

    def delta(self, box: Mailbox, f: str, query: dict[str, list[str]], **_: Any) -> Answer:
        from tests.plugins.fakegraph import GraphError

        folder = self.g.folder(box, f)
        token = (query.get("$skiptoken") or query.get("$deltatoken") or [None])[0]
        if token is None:
            select = (query.get("$select") or [""])[0].split(",")
            state = {"s": 0, "e": self.g.last_seq, "o": 0, "sel": [s for s in select if s],
                     "g": self.g.generation, "f": folder.id}
        else:
            try:
                state = json.loads(base64.urlsafe_b64decode(token.encode()))
            except (binascii.Error, ValueError):
                raise GraphError(400, "BadRequest", "Invalid delta token.") from None
            if state.get("g") != self.g.generation or state.get("f") != folder.id:
                raise GraphError(410, "syncStateNotFound", "The sync state generation is "
                                 "not found.", {"Location": self._link(box, folder, None)})
            if "$deltatoken" in query:
                state = {**state, "s": state["e"], "e": self.g.last_seq, "o": 0}
        size = _page_size(self.headers.get("Prefer"))
        changes = self._changes(box, folder, state["s"], state["e"])
        page = [self._json(box, change, state["sel"])
                for change in changes[state["o"]:state["o"] + size]]
        result: dict[str, Any] = {"value": page}
        if state["o"] + size < len(changes):
            result["@odata.nextLink"] = self._link(box, folder, {**state, "o": state["o"] + size},
                                                   "$skiptoken")
        else:
            done = {**state, "o": 0}
            if self.g.replay_next_delta:
                self.g.replay_next_delta = False
                done = {**done, "e": state["s"]}  # the next round starts where this one did
            result["@odata.deltaLink"] = self._link(box, folder, done, "$deltatoken")
        headers = {"Preference-Applied": f"odata.maxpagesize={size}"} if self.headers.get(
            "Prefer") else {}
        return 200, result, headers

    def _changes(self, box: Mailbox, folder: Folder, after: int, upto: int
                 ) -> list[tuple[int, Any]]:
        """(change number, message or removed id) in the window, oldest first."""
        items: list[tuple[int, Any]] = [(m.seq, m) for m in box.messages.values()
                                        if m.folder == folder.id and after < m.seq <= upto]
        items += [(seq, mid) for seq, fid, mid in box.removed
                  if fid == folder.id and after < seq <= upto]
        return sorted(items, key=lambda x: x[0])

    def _json(self, box: Mailbox, change: tuple[int, Any], select: list[str]) -> dict[str, Any]:
        item = change[1]
        if isinstance(item, str):
            return {"id": item, "@removed": {"reason": "deleted"}}
        return message_json(item, select, box)

    def _link(self, box: Mailbox, folder: Folder, state: dict[str, Any] | None,
              name: str = "") -> str:
        base = (f"{self.g.endpoint}/users/{urllib.parse.quote(box.address)}/mailFolders/"
                f"{folder.id}/messages/delta")
        if state is None:
            return base
        token = base64.urlsafe_b64encode(json.dumps(state).encode()).decode()
        return f"{base}?{name}={token}"

    def list(self, box: Mailbox, f: str, query: dict[str, list[str]], **_: Any) -> Answer:
        from tests.plugins.fakegraph import GraphError

        folder = self.g.folder(box, f)
        flt = (query.get("$filter") or [""])[0]
        match = re.fullmatch(r"internetMessageId eq '(.*)'", flt)
        if flt and match is None:
            raise GraphError(400, "ErrorInvalidUrlQueryFilter", "unsupported filter")
        wanted = match[1].replace("''", "'") if match else None
        found = [m for m in box.messages.values() if m.folder == folder.id
                 and (wanted is None or m.header("Message-ID") == wanted)]
        found = [m for m in found if self.g.visible(box, m)]
        select = [s for s in (query.get("$select") or [""])[0].split(",") if s]
        return 200, {"value": [message_json(m, select or None, box) for m in found]}, {}

    def get_message(self, box: Mailbox, m: str, query: dict[str, list[str]],
                    **_: Any) -> Answer:
        select = [s for s in (query.get("$select") or [""])[0].split(",") if s]
        return 200, message_json(self.g.message(box, m), select or None, box), {}

    def mime(self, box: Mailbox, m: str, **_: Any) -> Answer:
        return 200, self.g.message(box, m).mime, {}

    # -- writing -------------------------------------------------------------------------

    def create(self, box: Mailbox, body: bytes, **_: Any) -> Answer:
        from tests.plugins.fakegraph import GraphError, Message, _new_id

        if (self.headers.get("Content-Type") or "").startswith("text/plain"):
            try:
                mime = base64.b64decode(body, validate=True)
            except binascii.Error:
                raise GraphError(400, "ErrorMimeContentInvalidBase64String",
                                 "Invalid base64 string for MIME content.") from None
        else:
            mime = _json_to_mime(json.loads(body or b"{}"), box.address)
        drafts = box.well_known("drafts")
        msg = Message(_new_id(), drafts.id, mime, datetime.now(UTC), is_draft=True,
                      seq=self.g.bump())
        box.messages[msg.id] = msg
        return 201, message_json(msg, None, box), {}

    def send(self, box: Mailbox, m: str, **_: Any) -> Answer:
        from tests.plugins.fakegraph import GraphError

        msg = self.g.message(box, m)
        if not msg.is_draft:
            raise GraphError(400, "ErrorInvalidOperation", "The item was already sent.")
        box.removed.append((self.g.bump(), msg.folder, msg.id))
        msg.is_draft = False
        msg.folder = box.well_known("sentitems").id
        msg.hidden_looks = self.g.sent_delay
        msg.seq = self.g.bump()
        self.g.outgoing.append(msg.mime)
        return 202, None, {}

    def move(self, box: Mailbox, m: str, body: bytes, **_: Any) -> Answer:
        from tests.plugins.fakegraph import _new_id

        msg = self.g.message(box, m)
        target = self.g.folder(box, json.loads(body)["destinationId"])
        box.removed.append((self.g.bump(), msg.folder, msg.id))
        if 'IdType="ImmutableId"' not in (self.headers.get("Prefer") or ""):
            del box.messages[msg.id]
            msg.id = _new_id()
            box.messages[msg.id] = msg
        msg.folder, msg.seq = target.id, self.g.bump()
        return 201, message_json(msg, None, box), {}

    def patch(self, box: Mailbox, m: str, body: bytes, **_: Any) -> Answer:
        msg = self.g.message(box, m)
        changes = json.loads(body)
        if "categories" in changes:
            msg.categories = list(changes["categories"])
        msg.seq = self.g.bump()
        return 200, message_json(msg, None, box), {}


def _page_size(prefer: str | None) -> int:
    match = re.search(r"odata\.maxpagesize=(\d+)", prefer or "")
    return max(1, min(int(match[1]), 1000)) if match else 10


def _json_to_mime(doc: dict[str, Any], mailbox: str) -> bytes:
    from tests.plugins.fakegraph import GraphError

    msg = EmailMessage()
    msg["From"] = mailbox
    msg["To"] = ", ".join(r["emailAddress"]["address"] for r in doc.get("toRecipients", []))
    msg["Subject"] = doc.get("subject", "")
    if doc.get("internetMessageId"):
        msg["Message-ID"] = doc["internetMessageId"]
    for header in doc.get("internetMessageHeaders", []):
        if not header["name"].lower().startswith("x-"):
            raise GraphError(400, "InvalidInternetMessageHeader", "The internet message "
                             f"header name '{header['name']}' should start with 'x-' or 'X-'.")
        msg[header["name"]] = header["value"]
    msg.set_content(doc.get("body", {}).get("content", ""))
    return msg.as_bytes()


def message_json(msg: Message, select: list[str] | None, box: Mailbox) -> dict[str, Any]:
    frm = parseaddr(msg.header("From") or "")
    full: dict[str, Any] = {
        "id": msg.id, "parentFolderId": msg.folder, "isDraft": msg.is_draft,
        "subject": msg.header("Subject"), "internetMessageId": msg.header("Message-ID"),
        "receivedDateTime": msg.received.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "from": {"emailAddress": {"name": frm[0], "address": frm[1]}} if frm[1] else None,
        "categories": list(msg.categories), "conversationId": "AAQk" + msg.id[-8:],
    }
    sent_items = box.well_known("sentitems").id
    if not msg.is_draft and msg.folder != sent_items and box.headers_in_delta:
        full["internetMessageHeaders"] = msg.header_list()
    if full["internetMessageId"] is None:
        del full["internetMessageId"]
    if select:
        return {k: v for k, v in full.items() if k in select or k == "id"}
    return {k: v for k, v in full.items() if k != "internetMessageHeaders"}


def exchange_stamp(raw: bytes, *, dmarc: str, header_from: str | None, tenant: str) -> bytes:
    """Rename upstream Authentication-Results to ``-Original``; prepend Exchange's own."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = raw.partition(b"\n\n")
    nl = b"\r\n" if sep == b"\r\n\r\n" else b"\n"
    head = re.sub(rb"(?im)^Authentication-Results:", b"Authentication-Results-Original:", head)
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    domain = header_from or parseaddr(str(msg.get("From", "")))[1].rpartition("@")[2]
    ar = (f"Authentication-Results: spf=pass (sender IP is 192.0.2.25) "
          f"smtp.mailfrom={domain}; dkim=pass (signature was verified) header.d={domain};"
          f"dmarc={dmarc} action=none header.from={domain};compauth="
          f"{'pass' if dmarc == 'pass' else 'fail'} reason=100").encode()
    top = ar + nl + f"X-MS-Exchange-CrossTenant-Id: {tenant}".encode() + nl
    return top + head + sep + body


def handler(graph: FakeGraph) -> type[BaseHTTPRequestHandler]:
    from tests.plugins.fakegraph import MAX_CONCURRENT, Fault, GraphError

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True  # headers and body are separate writes

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_PATCH(self) -> None:
            self._serve("PATCH")

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            parts = urllib.parse.urlsplit(self.path)
            with graph._lock:
                graph.requests.append((method, parts.path))
                graph.in_flight += 1
                graph.max_in_flight = max(graph.max_in_flight, graph.in_flight)
                crowded = graph.in_flight > MAX_CONCURRENT
            try:
                if crowded:
                    raise GraphError(429, "ApplicationThrottled", "Too many concurrent "
                                     "requests", {"Retry-After": "1"})
                fault = self._fault(method, parts.path)
                if fault is not None and not fault.drop:
                    headers = ({"Retry-After": str(fault.retry_after)}
                               if fault.retry_after is not None else {})
                    raise GraphError(fault.status, fault.code, "injected fault", headers)
                with graph._lock:
                    status, payload, headers = Routes(graph, self.headers).route(
                        method, parts.path, urllib.parse.parse_qs(parts.query), body)
                if fault is not None:  # the work is done; the answer is lost
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self._send(status, payload, headers)
            except GraphError as exc:
                self._send(exc.status, {"error": {"code": exc.code, "message": exc.message}},
                           exc.headers)
            finally:
                with graph._lock:
                    graph.in_flight -= 1

        def _fault(self, method: str, path: str) -> Fault | None:
            with graph._lock:
                for fault in graph.faults:
                    if fault.method == method and fault.path_part in path and fault.times > 0:
                        fault.times -= 1
                        return fault
            return None

        def _send(self, status: int, payload: Any, headers: dict[str, str]) -> None:
            data = (payload if isinstance(payload, bytes)
                    else b"" if payload is None else json.dumps(payload).encode())
            self.send_response(status)
            ctype = "message/rfc822" if isinstance(payload, bytes) else "application/json"
            if data:
                self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

    return Handler
