"""Task status as data, text, JSON and Markdown (for pasting into KLIK). Pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from mailtracker.models import (
    DeliveryState,
    MilestoneRecord,
    Notification,
    NotificationState,
    OrientedFact,
    QuarantineEntry,
    Recipient,
    StateReader,
    TimelineEntry,
    UnparseableEntry,
)
from mailtracker.settings.taskdef import TaskDefinition
from mailtracker.task.followups import (
    FollowupStatus,
    followup_status,
    status_json,
    status_markdown,
    status_text,
)
from mailtracker.task.state import (
    KlikStatus,
    derived_milestones,
    klik_label,
    klik_status,
    next_step,
    orientation_of,
    role_coverage,
)

LOCAL_TZ = ZoneInfo("Europe/Copenhagen")


@dataclass(frozen=True, slots=True)
class TaskReport:
    """Everything ``status`` shows, in every output format."""

    task: TaskDefinition
    organisation: str
    now: datetime
    klik: KlikStatus
    recipients: list[dict[str, Any]]
    milestones: dict[str, MilestoneRecord]
    quarantine: list[QuarantineEntry]
    unparseable: list[UnparseableEntry]
    timeline: list[TimelineEntry]
    next_step: str
    next_step_da: str
    warnings: list[str]
    handled: int
    followups: FollowupStatus | None = None  # overdue milestones, follow-up mail, schedule
    klik_reason: str = ""  # why the KLIK status is what it is, in plain words
    trust: str = ""  # the sender authentication in force, e.g. 'exchange_online (tenant …)'


def build_report(task: TaskDefinition, view: StateReader, *, organisation: str, now: datetime,
                 lang: str = "en", warnings: Sequence[str] = (), trust: str = "") -> TaskReport:
    recipients = view.recipients()
    notifications = {n.key: n for n in view.notifications(task.key)}
    milestones = view.milestones(task.key)
    for extra in derived_milestones(milestones, now):
        milestones[extra.name] = extra
    facts = view.oriented_facts(task.key)
    status = klik_status(task, recipients, notifications, facts)
    coverage = role_coverage(task, recipients, notifications, facts)
    rows = [_recipient_row(task, r, notifications) for r in recipients]
    quarantine = [q for q in view.quarantine(task.key) if q.state == "pending"]
    return TaskReport(
        task=task, organisation=organisation, now=now, klik=status, recipients=rows,
        milestones=milestones, quarantine=quarantine, unparseable=view.unparseable(),
        timeline=view.timeline(task.key),
        next_step=next_step(task, status, coverage, milestones, lang),
        next_step_da=next_step(task, status, coverage, milestones, "da"),
        warnings=list(warnings), handled=view.handled_count(),
        followups=followup_status(task, view, now),
        klik_reason=klik_reason(task, recipients, notifications, facts, lang), trust=trust,
    )


_REASON = {
    "en": {"ack": " and acknowledged", "no_bounce": "no bounce", "bounced": "{n} bounced",
           "forgotten": "; {n} of them since forgotten, oriented {when}",
           "last": "last accepted {when}, ",
           "all": "all {n} required roles oriented{ack} ({when}{bounce}); "
                  "acknowledgements {acks} of {told}",
           "none": "no orientation sent yet; required roles: {missing}",
           "some": "{done} of {n} required roles oriented{ack} ({bounce}); "
                   "still missing: {missing}"},
    "da": {"ack": " og har kvitteret", "no_bounce": "ingen afvist", "bounced": "{n} afvist",
           "forgotten": "; {n} af dem siden glemt, orienteret {when}",
           "last": "sidst modtaget {when}, ",
           "all": "alle {n} krævede roller er orienteret{ack} ({when}{bounce}); "
                  "kvitteringer {acks} af {told}",
           "none": "ingen orientering sendt endnu; krævede roller: {missing}",
           "some": "{done} af {n} krævede roller er orienteret{ack} ({bounce}); "
                   "mangler stadig: {missing}"},
}


def klik_reason(task: TaskDefinition, recipients: Sequence[Recipient],
                notifications: Mapping[str, Notification],
                facts: Sequence[OrientedFact] = (), lang: str = "en") -> str:
    """Why the KLIK status is what it is: the card's rule (step 3 of "Metode og
    fremgangsmåde") is that the task may be marked fuldført once the relevant people are
    oriented, so that is counted per required role, with the evidence."""
    say = _REASON["da" if lang == "da" else "en"]
    coverage = [c for c in role_coverage(task, recipients, notifications, facts)
                if c.required]
    done = [c for c in coverage if c.oriented]
    ack_rule = say["ack"] if task.require_acknowledgement else ""
    told = [n for r in recipients if (n := orientation_of(task, r, notifications)) is not None
            and n.state is NotificationState.SENT]
    bounced = sum(1 for n in told if n.delivery is DeliveryState.BOUNCED)
    acks = sum(1 for n in told if n.acknowledged_at is not None)
    bounce_text = say["bounced"].format(n=bounced) if bounced else say["no_bounce"]
    forgotten = [f for f in facts if f.task == task.key]
    if forgotten:
        bounce_text += say["forgotten"].format(
            n=len(forgotten), when=", ".join(_local(f.sent_at) for f in forgotten))
    missing = ", ".join(_role_name(task, c.role, lang) for c in coverage if not c.oriented)
    if coverage and len(done) == len(coverage):
        last = max([n.sent_at for n in told if n.sent_at and n.delivery
                    is not DeliveryState.BOUNCED] + [f.sent_at for f in forgotten],
                   default=None)
        when = say["last"].format(when=_local(last)) if last else ""
        return say["all"].format(n=len(coverage), ack=ack_rule, when=when, bounce=bounce_text,
                                 acks=acks, told=len(told))
    if not told and not forgotten:
        return say["none"].format(missing=missing)
    return say["some"].format(done=len(done), n=len(coverage), ack=ack_rule,
                              bounce=bounce_text, missing=missing)


def _role_name(task: TaskDefinition, key: str, lang: str) -> str:
    """The role's key in English output (as the config and the CLI name it), its label in
    Danish."""
    role = task.role(key)
    return role.label_da if lang == "da" and role is not None else key


def _recipient_row(task: TaskDefinition, r: Recipient,
                   notifications: dict[str, Any]) -> dict[str, Any]:
    n = orientation_of(task, r, notifications)
    return {
        "email": r.email,
        "name": r.name,
        "role": r.role,
        "lang": r.lang,
        "notification": n.state.value if n else "not-sent",
        "message_id": n.message_id if n else None,
        "sent_at": _iso(n.sent_at) if n else None,
        "attempts": n.attempts if n else 0,
        "last_error": n.last_error if n else None,
        "acknowledged": bool(n and n.acknowledged_at),
        "acknowledged_at": _iso(n.acknowledged_at) if n else None,
        "delivery": n.delivery.value if n else None,
        "bounce_reason": n.bounce_reason if n else None,
    }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _milestone_json(rec: MilestoneRecord | None) -> dict[str, Any] | None:
    if rec is None:
        return None
    ev = rec.evidence
    out: dict[str, Any] = {"at": rec.at.isoformat(), "source": ev.source,
                           "message_id": ev.message_id, "from": ev.sender,
                           "subject": ev.subject}
    if ev.recorded_by:
        out["recorded_by"] = ev.recorded_by
    if ev.note:
        out["note"] = ev.note
    out.update(ev.details)
    return out


def to_json(report: TaskReport) -> dict[str, Any]:
    """The ``status --json`` document. Keys are stable: extend, never rename."""
    names = [m.key for m in report.task.milestones]
    names += [k for k in report.milestones if k not in names]
    return {
        "task": report.task.key,
        "title": report.task.title,
        "organisation": report.organisation,
        "klik_status": klik_label(report.task, report.klik),
        "klik_status_code": report.klik.value,
        "klik_status_reason": report.klik_reason,
        "trust": report.trust,
        "recipients": report.recipients,
        "milestones": {k: _milestone_json(report.milestones.get(k)) for k in names},
        "quarantine": len(report.quarantine),
        "unparseable": len(report.unparseable),
        "handled_messages": report.handled,
        "next_step": report.next_step,
        "warnings": report.warnings,
        "timeline": [{"at": t.at.isoformat(), "kind": t.kind, "text": t.text,
                      "message_id": t.message_id} for t in report.timeline],
        "generated_at": report.now.isoformat(),
        **status_json(report.task, report.followups),
    }


def _local(dt: datetime) -> str:
    return dt.astimezone(LOCAL_TZ).strftime("%Y-%m-%d %H:%M")


def to_text(report: TaskReport) -> str:
    t = report.task
    lines = [f"{t.title}", f"KLIK status: {klik_label(t, report.klik)}"
             + (f": {report.klik_reason}" if report.klik_reason else ""), ""]
    lines.append("Recipients:")
    if not report.recipients:
        lines.append("  (none yet: mailtracker recipients add …)")
    for r in report.recipients:
        ack = " · acknowledged" if r["acknowledged"] else ""
        bounce = f" · BOUNCED: {r['bounce_reason']}" if r["delivery"] == "bounced" else ""
        err = f" ({r['last_error']})" if r["last_error"] and r["notification"] != "sent" else ""
        lines.append(f"  {r['role']:<17} {r['name']} <{r['email']}>  "
                     f"{r['notification']}{ack}{bounce}{err}")
    lines += ["", "Milestones:"]
    for m in t.milestones:
        rec = report.milestones.get(m.key)
        mark = "✓" if rec else "·"
        when = f"  {_local(rec.at)}" if rec else ""
        src = f"  ({_evidence_text(rec)})" if rec else ""
        lines.append(f"  {mark} {m.label_en:<45}{when}{src}")
    if report.timeline:
        lines += ["", "Recent events:"]
        lines += [f"  {_local(t.at)}  {t.kind:<12}  {t.text}" for t in report.timeline[-10:]]
    lines += status_text(t, report.followups, _local)
    lines += ["", f"Next step: {report.next_step}"]
    if report.quarantine:
        lines.append(f"Quarantine: {len(report.quarantine)} message(s) need review "
                     "(mailtracker review)")
    if report.unparseable:
        lines.append(f"Unparseable: {len(report.unparseable)} message(s) could not be read")
    if report.trust:
        lines.append(f"Sender authentication: {report.trust}")
    lines += [f"Warning: {w}" for w in report.warnings]
    return "\n".join(lines)


def _evidence_text(rec: MilestoneRecord) -> str:
    """``mail: <subject>``, or for a milestone marked by hand ``manual: <note> (by <who>)``."""
    ev = rec.evidence
    text = ev.source
    detail = ev.subject if ev.source == "mail" else ev.note
    if detail:
        text += f": {detail}"
    if ev.source != "mail" and ev.recorded_by:
        text += f" (by {ev.recorded_by})"
    return text


def to_markdown(report: TaskReport) -> str:
    """A block to paste into KLIK (Danish, as KLIK is)."""
    t = report.task
    lines = [f"**{t.title}** — {report.organisation}", "",
             f"Status: **{klik_label(t, report.klik)}** (opdateret {_local(report.now)})", "",
             "| Rolle | Navn | Orientering | Kvitteret |", "|---|---|---|---|"]
    for r in report.recipients:
        role = t.role(r["role"])
        label = role.label_da if role else r["role"]
        sent = {"sent": "sendt", "failed": "fejlet", "unknown": "ukendt",
                "pending": "afventer", "sending": "sender", "not-sent": "ikke sendt"}.get(
            r["notification"], r["notification"])
        if r["delivery"] == "bounced":
            sent = "afvist (bounce)"
        if r["sent_at"] and r["notification"] == "sent":
            sent += f" {_local(datetime.fromisoformat(r['sent_at']))}"
        lines.append(f"| {label} | {_md(r['name'])} | {sent} | "
                     f"{'ja' if r['acknowledged'] else 'nej'} |")
    lines += ["", "| Milepæl | Dato | Dokumentation |", "|---|---|---|"]
    for m in t.milestones:
        rec = report.milestones.get(m.key)
        if rec is None:
            lines.append(f"| {m.label_da} | – | |")
            continue
        ev = rec.evidence
        proof = (f"mail fra {ev.sender}: »{_md(ev.subject or '')}«" if ev.source == "mail"
                 else f"registreret af {ev.recorded_by or 'bruger'}"
                 + (f": {_md(ev.note)}" if ev.note else ""))
        lines.append(f"| {m.label_da} | {_local(rec.at)} | {proof} |")
    lines += status_markdown(t, report.followups, _local)
    lines += ["", f"Næste skridt: {report.next_step_da}"]
    return "\n".join(lines)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")

