"""The demo's expected final state, checked on the ``status --json`` document. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Expected:
    """What the scenario sent into the world, so the end state can be compared with it."""

    agreement_id: str
    guide_id: str
    webinar_id: str
    spoof_id: str
    webinar_start: datetime
    join_url: str
    replied: str  # recipient whose reply must acknowledge
    auto_replied: str  # recipient whose auto-reply must not
    bounced: str  # recipient whose orientation bounced
    last_poll_changes: int  # a poll after everything was handled must change nothing
    last_poll_scanned: int


def _milestone(status: dict[str, Any], name: str) -> dict[str, Any]:
    record = (status.get("milestones") or {}).get(name)
    return record if isinstance(record, dict) else {}


def _milestone_from(status: dict[str, Any], name: str, message_id: str) -> bool:
    record = _milestone(status, name)
    return record.get("source") == "mail" and record.get("message_id") == message_id


def _webinar_start_is(status: dict[str, Any], expected: datetime) -> bool:
    record = _milestone(status, "webinar_invited")
    try:
        start = datetime.fromisoformat(str(record.get("start")))
    except ValueError:
        return False
    return start.tzinfo is not None and start == expected


def check_final_state(status: dict[str, Any], quarantined_ids: Sequence[str],
                      expected: Expected) -> list[tuple[str, bool]]:
    """Each expectation as (what, met?), in the order the demo prints them."""
    rows = {r["email"]: r for r in status.get("recipients", [])}
    required = [r for r in rows.values() if r["role"] in
                ("system_owner", "agreement_admin", "oeir_coordinator")]

    def row(address: str) -> dict[str, Any]:
        found = rows.get(address)
        return found if isinstance(found, dict) else {}

    return [
        ("every orientation mail was accepted by the server",
         bool(rows) and all(r["notification"] == "sent" for r in rows.values())),
        ("KLIK status is fuldført (every required role oriented)",
         status.get("klik_status_code") == "done" and bool(required)),
        ("service agreement received, from EG's genuine mail",
         _milestone_from(status, "service_agreement_received", expected.agreement_id)),
        ("setup guide received", _milestone_from(status, "guide_received", expected.guide_id)),
        ("webinar invitation received", _milestone_from(status, "webinar_invited",
                                                        expected.webinar_id)),
        ("webinar start read in Danish time (TZID Romance Standard Time)",
         _webinar_start_is(status, expected.webinar_start)),
        ("webinar Teams link found",
         _milestone(status, "webinar_invited").get("join_url") == expected.join_url),
        ("the reply acknowledges the orientation", row(expected.replied).get("acknowledged")
         is True),
        ("the out-of-office auto-reply does not acknowledge",
         row(expected.auto_replied).get("acknowledged") is False),
        ("the bounce is marked on the mistyped address",
         row(expected.bounced).get("delivery") == "bounced"),
        ("nobody else is marked as bounced",
         all(r.get("delivery") != "bounced" for a, r in rows.items()
             if a != expected.bounced)),
        ("the spoofed 'EG' mail is in quarantine, and nothing else",
         status.get("quarantine") == 1 and list(quarantined_ids) == [expected.spoof_id]),
        ("the spoof set no milestone (agreement not signed)",
         not _milestone(status, "service_agreement_signed")),
        ("no message was unparseable", status.get("unparseable") == 0),
        ("polling again changes nothing (each mail counts once)",
         expected.last_poll_changes == 0 and expected.last_poll_scanned == 0),
    ]
