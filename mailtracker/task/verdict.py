"""What one inbound message means for the task: its kind and evidence. Pure data.

The judge (``inbound/judge/classify.py``) writes verdicts; the task (``task/transition.py``)
turns them into state changes. Both depend on this module, never on each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from mailtracker.models import Evidence


class Kind(StrEnum):
    MILESTONE = "milestone"
    ACKNOWLEDGED = "acknowledged"
    AUTO_REPLY = "auto_reply"
    BOUNCE = "bounce"
    QUARANTINE = "quarantine"
    UNPARSEABLE = "unparseable"
    UNRELATED = "unrelated"


@dataclass(frozen=True)
class Classification:
    """What one message means for the task.

    ``milestone``: set for ``milestone`` and, for ``quarantine``, the milestone the message
    would have set. ``recipient``: our recipient (lower-case e-mail) an ``acknowledged``,
    ``bounce`` or ``auto_reply`` refers to. ``reason``: why a ``bounce``, ``quarantine``,
    ``unparseable`` or ignored ``unrelated``. ``evidence.details`` holds extras:
    ``start``/``join_url``/``ical_uid`` for webinars, ``from`` for a reply from another address.
    """

    kind: Kind
    summary: str
    evidence: Evidence
    milestone: str | None = None
    recipient: str | None = None
    reason: str | None = None
    rule: str | None = None
