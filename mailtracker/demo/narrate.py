"""What the demo prints: each step, the status timeline, the quarantine, where files lie."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from mailtracker.task.report import TaskReport, to_text

if TYPE_CHECKING:
    from mailtracker.app import App
    from mailtracker.demo.mails import Inbound
    from mailtracker.demo.servers import DemoTls
    from mailtracker.inbound.poller import PollReport
    from mailtracker.outbound.notify import NotifyResult

LOCAL = ZoneInfo("Europe/Copenhagen")


class Narrator:
    """Sends each line to ``out`` and keeps them (``lines``)."""

    def __init__(self, out: Callable[[str], None]):
        self._out = out
        self.lines: list[str] = []

    def say(self, *lines: str) -> None:
        for line in lines:
            self.lines.append(line)
            self._out(line)

    def __call__(self, *lines: str) -> None:
        self.say(*lines)

    def workspace(self, root: Path, config: Path, smtp_port: int, mailbox: str,
                  tls: DemoTls) -> None:
        """``mailbox``: which mailbox the demo reads, e.g. ``in-memory mailbox (no IMAP)``."""
        self.say("mailtracker demo: Demo Kommune and the KLIK task eFaktura 8b, on loopback",
                 "",
                 f"Workspace  {root}",
                 f"  config   {config} (the password is only in the demo's environment)",
                 f"  SMTP     aiosmtpd on 127.0.0.1:{smtp_port}  submission: STARTTLS required, "
                 "AUTH PLAIN/LOGIN",
                 f"  mailbox  {mailbox}",
                 f"  CA       {tls.ca_file} (made for this run; the servers' certificates "
                 "are verified against it)", "")

    def recipients(self, app: App) -> None:
        self.say("1. Recipients (mailtracker recipients add)")
        for r in app.store.snapshot().recipients():
            self.say(f"   {r.role:<17} {r.name} <{r.email}> ({r.lang})")
        self.say("")

    def sent(self, results: Sequence[NotifyResult], sent_dir: Path,
             bounced: Sequence[str]) -> None:
        self.say("2. Orientation mail (mailtracker notify)")
        for r in results:
            detail = f": {r.detail}" if r.detail else ""
            self.say(f"   {r.outcome:<8} {r.role:<17} {r.recipient}{detail}")
        for address in bounced:
            self.say(f"   The demo MX has no mailbox {address}: it accepted the mail, then "
                     "sent a DSN bounce back to the sender.")
        self.say(f"   The mail as the server received it: {sent_dir}/*.eml", "")

    def arrived(self, step: int, title: str, mails: Sequence[Inbound]) -> None:
        self.say(f"{step}. {title}")
        for mail in mails:
            verdict = (f"  [Authentication-Results: {_verdict(mail.auth_results)}]"
                       if mail.auth_results else "")
            self.say(f"   · {mail.label}{verdict}")
        self.say("")

    def polls(self, reports: Sequence[PollReport]) -> None:
        self.say("5. Polling the inbox (mailtracker poll), after the answers, after the "
                 "outside mail, and once more")
        for number, report in enumerate(reports, 1):
            self.say(f"   poll {number}: {report.summary_line()}")
            self.say(*(f"     - {change}" for change in report.changes))
        self.say("")

    def outcome(self, report: TaskReport, root: Path, arrivals: Sequence[str]) -> None:
        """``arrivals``: Message-IDs in the order the mail arrived, to order events of the
        same second (IMAP's INTERNALDATE has whole seconds; the demo takes one or two)."""
        self.say("Status timeline (Danish time)")
        rank = {message_id: n for n, message_id in enumerate(arrivals, 1)}
        events: list[tuple[datetime, int, str, str]] = [
            (datetime.fromisoformat(r["sent_at"]), -1, "sent",
             f"orientation to {r['name']} <{r['email']}> ({r['role']})")
            for r in report.recipients if r["sent_at"]]
        events += [(e.at, rank.get(e.message_id or "", 0), e.kind, e.text)
                   for e in report.timeline]
        for at, _rank, kind, text in sorted(events, key=lambda e: (
                e[0].replace(microsecond=0), e[1])):
            self.say(f"  {at.astimezone(LOCAL):%H:%M:%S}  {kind:<12}  {text}")
        self.say("", "Quarantine (mailtracker review)")
        if not report.quarantine:
            self.say("  (empty)")
        for q in report.quarantine:
            self.say(f"  {q.id}  from {q.sender}: {q.subject}",
                     f"           would set {q.milestone}; held because: {q.reason}")
        self.say("", "Status (mailtracker status)",
                 *(f"  {line}" for line in to_text(report).splitlines()), "",
                 "Files", f"  sent mail   {root / 'sent'}",
                 f"  mailboxes   {root / 'mailboxes'} (every demo mailbox, one .eml per "
                 "message)",
                 f"  store       {root / 'config' / 'mailtracker.json'}", "")

    def checks(self, checks: Sequence[tuple[str, bool]]) -> None:
        self.say("Expected final state")
        self.say(*(f"  {'✓' if ok else '✗'} {text}" for text, ok in checks))
        failed = sum(not ok for _text, ok in checks)
        self.say("", "Demo OK: the whole loop works." if not failed else
                 f"Demo FAILED: {failed} expectation(s) not met.")


def _verdict(auth_results: str) -> str:
    """``dkim=pass, spf=pass, dmarc=pass`` from the MX's header."""
    methods = [part.strip().split(" ")[0] for part in auth_results.split(";")[1:]]
    return ", ".join(m for m in methods if "=" in m)
