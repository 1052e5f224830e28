"""``notify`` to many recipients against a raw aiosmtplib loop over one connection.

The floor sends the very messages mailtracker would send (rendered and built as
``EmailMessage`` once, beforehand) with ``send_message`` over one STARTTLS + AUTH connection
to the same server; aiosmtplib flattens each, as it would for any caller.
"""

from __future__ import annotations

import asyncio
import ssl
from email import policy
from email.message import EmailMessage

import aiosmtplib

from benchmarks.environment import Environment, copy_store
from benchmarks.measure import Row, compare
from mailtracker.app import App, open_app
from mailtracker.models import Recipient
from mailtracker.outbound.notify import NotifyOptions, _plan, run_notify, select_recipients

ROLES = ("system_owner", "agreement_admin", "oeir_coordinator")


def recipients(count: int) -> list[Recipient]:
    """``count`` recipients: municipalities × the three required roles."""
    people = []
    for i in range(count):
        town, role = divmod(i, len(ROLES))
        people.append(Recipient(email=f"{ROLES[role]}.{town}@kommune{town}.example",
                                name=f"Modtager {i} Ærø", role=ROLES[role]))
    return people


def _fill(app: App, people: list[Recipient]) -> None:
    with app.store.transaction() as txn:
        for r in people:
            txn.put_recipient(r)


def _pre_rendered(app: App) -> list[EmailMessage]:
    """The messages ``notify`` would send now, rendered and built once, up front."""
    options = NotifyOptions()
    plan, skipped = _plan(app, select_recipients(app, options), options, app.now())
    assert not skipped
    return [m.message_for_attempt(app.now()) for m in plan]


async def _raw_loop(env: Environment, messages: list[EmailMessage]) -> None:
    smtp = aiosmtplib.SMTP(hostname=env.smtp.host, port=env.smtp.port, start_tls=True,
                           validate_certs=True, timeout=10,
                           tls_context=ssl.create_default_context(cafile=str(env.ca.ca_file)),
                           username=env.smtp.username, password=env.smtp.password)
    async with smtp:
        for message in messages:
            await smtp.send_message(message)


def notify_case(env: Environment, count: int, *, reps: int) -> Row:
    ws = env.workspace(imap=False)
    app = open_app(ws.config_path, ws.environ)
    _fill(app, recipients(count))
    base = ws.root / "base-store.json"
    copy_store(ws.store_path, base)
    messages = _pre_rendered(app)

    def ours() -> None:
        results = asyncio.run(run_notify(app, NotifyOptions()))
        assert len(results) == count and all(r.outcome == "sent" for r in results), results[:3]

    def floor() -> None:
        asyncio.run(_raw_loop(env, messages))

    row = compare(f"notify, {count} recipients", ours, floor, reps=reps, goal=1.3,
                  prepare=lambda: copy_store(base, ws.store_path))
    size = sum(len(m.as_bytes(policy=policy.SMTP)) for m in messages) / len(messages)
    row.notes.append(f"messages of {size / 1000:.1f} KB on average")
    return row

