"""Sending through Microsoft Graph, exactly once, inside the outbox protocol of ``notify.py``.

``sendMail`` answers ``202`` with no id, so it cannot tell a lost answer from a lost mail. So
each message (its MIME, with our Message-ID, ``.ics`` attachments and all) is first created as
a draft (``POST /users/{mailbox}/messages``, ``Prefer: IdType="ImmutableId"``); the draft's id
is stored; then the draft is sent (``POST …/messages/{id}/send``).

After a lost answer the message is looked for by its ``internetMessageId``, never sent blindly:

* found in Sent Items → ``sent``;
* still a draft, and the failed attempt provably never reached Graph (refused connection, TLS
  failure before the request was written) → sent again;
* otherwise looked for again after a grace period (the Sent Items copy may appear late), and
  if that still does not decide it → ``unknown``: never a second copy.

A run killed while a message was ``sending`` is settled the same way at the next start
(:func:`recover`): no draft id stored means ``send`` was never called, so it goes back to
``pending``. ``429``/``503`` with ``Retry-After`` are waited out by the client (Graph did not
process them). A refused token (exit 13), a missing permission or a full mailbox stop the
run; the message then goes back to ``pending`` (nothing was sent).
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email import policy

from mailtracker.app import App
from mailtracker.errors import GraphAuthError, GraphError, GraphLinkError
from mailtracker.graph import open_client
from mailtracker.graph.http import IMMUTABLE_IDS, MAX_IN_FLIGHT, GraphClient
from mailtracker.models import Notification, NotificationState
from mailtracker.outbound.mailbuild import OutgoingMail
from mailtracker.outbound.notify import NotifyResult, Sleep, _mark_sending, _record, _unsent

log = logging.getLogger("mailtracker.notify")

#: Seconds to wait before each further look for a message whose send answer was lost.
GRACE = (2.0, 5.0, 15.0)
SEND_RETRIES = 3  # further sends of a draft whose earlier send provably never reached Graph


@dataclass(frozen=True)
class Found:
    """Where a message with our Message-ID is: sent, still a draft (with its id), nowhere."""

    sent: bool
    draft_id: str | None


class GraphOutbox:
    """The Graph calls of one send, by internetMessageId and draft id."""

    def __init__(self, client: GraphClient):
        self.client = client

    def create_draft(self, mime: bytes) -> str:
        r = self.client.request("POST", self.client.user_url("/messages"),
                                need="Mail.ReadWrite", content=base64.b64encode(mime),
                                headers={"Content-Type": "text/plain", "Prefer": IMMUTABLE_IDS})
        return str(r.json()["id"])

    def send_draft(self, draft_id: str) -> None:
        self.client.request("POST", self.client.user_url(f"/messages/{draft_id}/send"),
                            need="Mail.Send", headers={"Prefer": IMMUTABLE_IDS})

    def is_draft(self, draft_id: str) -> bool:
        """Whether ``draft_id`` is still an unsent draft (not sent, not deleted)."""
        try:
            r = self.client.request("GET", self.client.user_url(f"/messages/{draft_id}"),
                                    need="Mail.Read", params={"$select": "isDraft"},
                                    headers={"Prefer": IMMUTABLE_IDS})
        except GraphError as exc:
            if exc.status == 404:
                return False
            raise
        return bool(r.json().get("isDraft"))

    def drafts_by_message_id(self) -> dict[str, str]:
        """Every draft's id by its internetMessageId (one listing of Drafts)."""
        url = self.client.user_url("/mailFolders/drafts/messages")
        params: dict[str, str] | None = {"$select": "id,internetMessageId", "$top": "250"}
        found: dict[str, str] = {}
        while url:
            data = self.client.request("GET", url, need="Mail.Read", params=params,
                                       headers={"Prefer": IMMUTABLE_IDS}).json()
            for m in data.get("value", []):
                if m.get("internetMessageId"):
                    found[str(m["internetMessageId"])] = str(m["id"])
            url, params = str(data.get("@odata.nextLink") or ""), None
        return found

    def find(self, message_id: str) -> Found:
        """Sent Items first, then Drafts."""
        if self._in_folder("sentitems", message_id):
            return Found(True, None)
        drafts = self._in_folder("drafts", message_id)
        return Found(False, drafts[0] if drafts else None)

    def _in_folder(self, folder: str, message_id: str) -> list[str]:
        quoted = message_id.replace("'", "''")  # OData string literal
        r = self.client.request(
            "GET", self.client.user_url(f"/mailFolders/{folder}/messages"), need="Mail.Read",
            params={"$filter": f"internetMessageId eq '{quoted}'", "$select": "id,isDraft"},
            headers={"Prefer": IMMUTABLE_IDS})
        return [str(m["id"]) for m in r.json().get("value", [])]


async def send_all(app: App, plan: Sequence[OutgoingMail], *, sleep: Sleep
                   ) -> list[NotifyResult]:
    """First every message becomes a draft (up to 4 created at once) and all the draft ids
    are stored in one write; then, as over SMTP, one store write per message marks it
    ``sending`` (with the previous one's result) before its draft is sent."""
    results: list[NotifyResult] = []
    pending: tuple[Notification, NotifyResult] | None = None
    with open_client(app.settings, app.environ) as client:
        outbox = GraphOutbox(client)
        drafts, refused = _make_drafts(app, outbox, plan)
        for mail in plan:
            key = mail.notification.key
            with app.store.transaction() as txn:
                if pending is not None:
                    _record(txn, *pending)
                if key in drafts:
                    n = _mark_sending(txn, mail, app.now())
            if key not in drafts:
                pending = _failed(app, mail, refused.get(key, "no draft"))
                results.append(pending[1])
                continue
            try:
                pending = await _send_one(app, outbox, mail, n, drafts[key], sleep)
            except GraphError as exc:
                if not _may_have_left(exc):
                    _unsent(app, n, exc)
                raise
            results.append(pending[1])
    if pending is not None:
        with app.store.transaction() as txn:
            _record(txn, *pending)
    return results


def _may_have_left(exc: GraphError) -> bool:
    return isinstance(exc, GraphLinkError) and exc.reached


def _failed(app: App, mail: OutgoingMail, why: str) -> tuple[Notification, NotifyResult]:
    r = mail.recipient
    n = (app.store.snapshot().notification(mail.notification.key) or mail.notification).with_(
        state=NotificationState.FAILED, updated_at=app.now(), last_error=why)
    return n, NotifyResult(r.email, r.name, r.role, "failed", why, n.message_id)


def _make_drafts(app: App, outbox: GraphOutbox, plan: Sequence[OutgoingMail]
                 ) -> tuple[dict[str, str], dict[str, str]]:
    """Draft ids by notification key (stored before any send), and the refusals (a draft
    Graph would not create, e.g. an invalid address). A draft stored by an earlier run is
    reused while it is still a draft; one whose id was lost in a crash is found by its
    Message-ID in Drafts. Stops (raises) when Graph is unreachable, refuses the token or
    permission, or the mailbox is full: what was made by then is stored first."""
    view = app.store.snapshot()
    drafts: dict[str, str] = {}
    for mail in plan:
        stored = view.notification(mail.notification.key)
        if stored is not None and stored.draft_id and outbox.is_draft(stored.draft_id):
            drafts[mail.notification.key] = stored.draft_id
    missing = [m for m in plan if m.notification.key not in drafts]
    if missing:
        strays = outbox.drafts_by_message_id()
        for mail in missing:
            if mail.message_id in strays:
                drafts[mail.notification.key] = strays[mail.message_id]
    todo = [m for m in missing if m.notification.key not in drafts]
    refused: dict[str, str] = {}
    stop: GraphError | None = None

    def create(mail: OutgoingMail) -> tuple[str, str | None, GraphError | None]:
        try:
            return mail.notification.key, _create(outbox, mail, app), None
        except GraphError as exc:
            return mail.notification.key, None, exc

    with ThreadPoolExecutor(MAX_IN_FLIGHT) as pool:
        for key, draft, exc in pool.map(create, todo):
            if draft is not None:
                drafts[key] = draft
            elif isinstance(exc, GraphAuthError | GraphLinkError) or (
                    exc is not None and exc.code == "ErrorQuotaExceeded"):
                stop = stop or exc
            elif exc is not None:
                refused[key] = str(exc)
    with app.store.transaction() as txn:
        for key, draft in drafts.items():
            current = txn.notification(key)
            if current is not None and current.draft_id != draft:
                txn.put_notification(current.with_(draft_id=draft))
    if stop is not None:
        raise stop
    return drafts, refused


async def _send_one(app: App, outbox: GraphOutbox, mail: OutgoingMail, n: Notification,
                    draft: str, sleep: Sleep) -> tuple[Notification, NotifyResult]:
    state, detail = await _send_draft(outbox, n.message_id, draft, sleep)
    outcome = {NotificationState.SENT: "sent", NotificationState.UNKNOWN: "unknown",
               NotificationState.PENDING: "deferred", NotificationState.FAILED: "failed"}[state]
    now = app.now()
    r = mail.recipient
    updated = n.with_(state=state, updated_at=now, last_error=detail or None, draft_id=draft,
                      sent_at=now if state is NotificationState.SENT else n.sent_at)
    return updated, NotifyResult(r.email, r.name, r.role, outcome, detail, n.message_id)


def _create(outbox: GraphOutbox, mail: OutgoingMail, app: App) -> str:
    """The draft, carrying our Message-ID; a lost answer is settled by looking in Drafts."""
    mime = mail.message_for_attempt(app.now()).as_bytes(policy=policy.SMTP)
    try:
        return outbox.create_draft(mime)
    except GraphLinkError as exc:
        if not exc.reached:
            raise
        found = outbox.find(mail.message_id)
        if found.draft_id is not None:
            return found.draft_id
        return outbox.create_draft(mime)  # no draft came of it: nothing can have been sent


async def _send_draft(outbox: GraphOutbox, message_id: str, draft: str, sleep: Sleep
                      ) -> tuple[NotificationState, str]:
    for attempt in range(SEND_RETRIES + 1):
        try:
            outbox.send_draft(draft)
            return NotificationState.SENT, ""
        except GraphLinkError as exc:
            if exc.reached:
                return await settle(outbox, message_id, str(exc), sleep)
            if attempt == SEND_RETRIES:
                return NotificationState.PENDING, f"not sent (will retry on the next run): {exc}"
            await sleep(GRACE[min(attempt, len(GRACE) - 1)])
        except GraphAuthError:
            raise
        except GraphError as exc:
            if exc.code == "ErrorQuotaExceeded":
                raise
            if exc.status is not None and (exc.status >= 500 or exc.status == 404):
                return await settle(outbox, message_id, str(exc), sleep)
            return NotificationState.FAILED, str(exc)
    raise AssertionError("unreachable")


async def settle(outbox: GraphOutbox, message_id: str, why: str, sleep: Sleep
                 ) -> tuple[NotificationState, str]:
    """After a lost answer to a send: sent if Sent Items has it (looking again after each
    grace period), else ``unknown`` — never a second send."""
    for pause in (0.0, *GRACE):
        if pause:
            await sleep(pause)
        try:
            if outbox.find(message_id).sent:
                return NotificationState.SENT, ""
        except GraphError as exc:
            if isinstance(exc, GraphAuthError):
                raise
            why = f"{why}; looking for it failed too: {exc}"
    return NotificationState.UNKNOWN, (
        f"{why} — not found in Sent Items after {sum(GRACE):.0f} s; it may have been "
        "delivered: not re-sent automatically (check Sent Items, then use --resend if it "
        "was not sent)")


def recover(app: App, sleep: Callable[[float], None] = time.sleep) -> None:
    """Settle notifications a killed run left ``sending`` (see the module docstring)."""
    stuck = [n for n in app.store.snapshot().notifications(app.task.key)
             if n.state is NotificationState.SENDING]
    if not stuck:
        return
    with open_client(app.settings, app.environ) as client:
        outbox = GraphOutbox(client)
        for n in stuck:
            state, detail = _recover_one(outbox, n, sleep)
            with app.store.transaction() as txn:
                current = txn.notification(n.key) or n
                txn.put_notification(current.with_(
                    state=state, last_error=detail or None, updated_at=app.now(),
                    sent_at=app.now() if state is NotificationState.SENT else current.sent_at))
            log.warning("%s to %s was interrupted while sending: now %s", n.template,
                        n.recipient, state.value)


def _recover_one(outbox: GraphOutbox, n: Notification, sleep: Callable[[float], None]
                 ) -> tuple[NotificationState, str]:
    found = outbox.find(n.message_id)
    if found.sent:
        return NotificationState.SENT, ""
    if n.draft_id is None:  # send was never called: the draft (if any) is reused
        return NotificationState.PENDING, "the previous run stopped before sending"
    for pause in GRACE:
        sleep(pause)
        if outbox.find(n.message_id).sent:
            return NotificationState.SENT, ""
    return NotificationState.UNKNOWN, (
        "the previous run stopped while sending through Graph and the mail is not in Sent "
        "Items; it may have been delivered: check Sent Items, then use --resend if it was "
        "not sent")
