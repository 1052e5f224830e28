"""Lay out the dossier's timeline: marks in lanes, vertical rules, a time axis. Pure.

The page's template draws the SVG from this layout (so every text is escaped by Jinja2's
autoescape). Labels never collide: a mark's shape and its label form one box, and a box that
would overlap an earlier one in its lane moves down a row, the lane growing to fit; a label
that would run past the right edge goes to the left of its mark. Text widths are estimated
generously (``CHAR_EM`` of the font size per character, wide enough for DejaVu Sans, the widest
of the usual sans-serif fonts), and the browser test measures the real boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

Shape = Literal["sent", "answered", "bounced", "failed", "eg", "manual", "scheduled",
                "reminder", "escalation"]
RuleKind = Literal["today", "webinar", "deadline", "overdue"]

WIDTH = 1000  # the SVG's user units; it scales to the page
LEFT = 200  # lane titles
RIGHT = 12
FONT = 11
CHAR_EM = 0.68  # per character, of the font size
ROW = 16  # one row of marks in a lane
PAD = 5  # above and below a lane's rows
MARK = 6  # half the size of a mark's shape
GAP = 6  # between boxes in a row, and between a shape and its label
MAX_LABEL = 34  # characters; the full text is in the mark's <title>
MAX_LANE = 28
TICK_BAND = 20  # the tick labels' row, between the rules' labels and the axis
_MONTHS = {"da": ("jan.", "feb.", "mar.", "apr.", "maj", "jun.", "jul.", "aug.", "sep.", "okt.",
                   "nov.", "dec."),
           "en": ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
                  "Dec")}


def short_date(local: datetime, lang: str, *, year: bool = True) -> str:
    """``3. mar. 2026`` / ``3 Mar 2026`` (without the year for the timeline's ticks)."""
    month = _MONTHS["en" if lang == "en" else "da"][local.month - 1]
    text = f"{local.day} {month}" if lang == "en" else f"{local.day}. {month}"
    return f"{text} {local.year}" if year else text


@dataclass(frozen=True, slots=True)
class Mark:
    """Something that happened (or will) to one lane: a mail sent, answered, bounced, …"""

    at: datetime
    lane: str
    label: str  # short text beside the shape
    title: str  # the full text, shown on hover and read by screen readers
    shape: Shape


@dataclass(frozen=True, slots=True)
class Rule:
    """A moment that concerns every lane: today, the webinar, a deadline."""

    at: datetime
    label: str
    kind: RuleKind


@dataclass(frozen=True, slots=True)
class Box:
    x: float
    y: float
    w: float
    h: float

    def overlaps(self, other: Box) -> bool:
        return (self.x < other.x + other.w and other.x < self.x + self.w
                and self.y < other.y + other.h and other.y < self.y + self.h)


@dataclass(frozen=True, slots=True)
class Placed:
    """A mark or a rule's label where it is drawn: ``x``/``y`` is the shape's centre."""

    x: float
    y: float
    text: str
    title: str
    kind: str  # the mark's shape or the rule's kind
    label_x: float
    anchor: Literal["start", "end"]
    box: Box  # shape and label together


@dataclass(frozen=True, slots=True)
class Lane:
    title: str
    short: str
    top: float
    height: float


@dataclass(frozen=True, slots=True)
class Layout:
    width: int
    height: float
    axis_y: float
    lanes: tuple[Lane, ...]
    marks: tuple[Placed, ...]
    rules: tuple[Placed, ...]  # their labels sit above the axis; lines run to the bottom
    ticks: tuple[tuple[float, str], ...]
    start: datetime
    end: datetime


def shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


def text_width(text: str) -> float:
    return len(text) * FONT * CHAR_EM


def layout(lanes: Sequence[str], marks: Sequence[Mark], rules: Sequence[Rule],
           start: datetime, end: datetime, tz: ZoneInfo, lang: str) -> Layout:
    """Place ``marks`` in ``lanes`` (in that order) and ``rules`` on a time axis from
    ``start`` to ``end`` (the caller pads them). Marks of unknown lanes get a lane at the end."""
    if end <= start:
        end = start + timedelta(days=1)
    span = (end - start).total_seconds()

    def x_of(at: datetime) -> float:
        frac = min(max((at - start).total_seconds() / span, 0.0), 1.0)
        return LEFT + frac * (WIDTH - LEFT - RIGHT)

    rule_rows: list[list[Box]] = []
    placed_rules = [_place(x_of(r.at), 0.0, r.label, r.label, r.kind, rule_rows)
                    for r in sorted(rules, key=lambda r: r.at)]
    axis_y = PAD + max(len(rule_rows), 1) * ROW + TICK_BAND  # tick labels sit above the axis
    order = list(dict.fromkeys([*lanes, *(m.lane for m in marks)]))
    placed_lanes: list[Lane] = []
    placed_marks: list[Placed] = []
    top = axis_y + 6
    for title in order:
        rows: list[list[Box]] = []
        mine = sorted((m for m in marks if m.lane == title), key=lambda m: m.at)
        placed = [_place(x_of(m.at), top, m.label, m.title, m.shape, rows) for m in mine]
        height = PAD * 2 + max(len(rows), 1) * ROW
        placed_lanes.append(Lane(title, shorten(title, MAX_LANE), top, height))
        placed_marks += placed
        top += height
    ticks = tuple((x_of(t), label) for t, label in _ticks(start, end, tz, lang))
    return Layout(WIDTH, top + PAD, axis_y, tuple(placed_lanes), tuple(placed_marks),
                  tuple(placed_rules), ticks, start, end)


def _place(x: float, top: float, text: str, title: str, kind: str,
           rows: list[list[Box]]) -> Placed:
    """The first row (from the top) where the shape and its label overlap nothing."""
    label = shorten(text, MAX_LABEL)
    width = text_width(label)
    right_room = WIDTH - RIGHT - (x + MARK + GAP)
    if width <= right_room:
        anchor: Literal["start", "end"] = "start"
        label_x = x + MARK + GAP
        left, box_w = x - MARK, 2 * MARK + GAP + width
    else:
        anchor = "end"
        label_x = x - MARK - GAP
        left, box_w = label_x - width, width + GAP + 2 * MARK
    for index in range(len(rows) + 1):
        if index == len(rows):
            rows.append([])
        y = top + PAD + index * ROW + ROW / 2
        box = Box(left, y - ROW / 2 + 1, box_w, ROW - 2)
        padded = Box(box.x - GAP / 2, box.y, box.w + GAP, box.h)
        if not any(padded.overlaps(b) for b in rows[index]):
            rows[index].append(padded)
            return Placed(x, y, label, title, kind, label_x, anchor, box)
    raise AssertionError("unreachable: a new row is always free")


def _ticks(start: datetime, end: datetime, tz: ZoneInfo,
           lang: str) -> list[tuple[datetime, str]]:
    """Midnights (local) from ``start`` to ``end``: days, weeks or months, at most 12."""
    months = _MONTHS["en" if lang == "en" else "da"]
    first = start.astimezone(tz)
    days = (end - start).days + 1
    out: list[tuple[datetime, str]] = []
    if days > 12 * 14:  # months
        month = datetime(first.year, first.month, 1, tzinfo=tz)
        step = max(1, -(-days // 30 // 12))
        while month <= end:
            if month >= start:
                out.append((month, f"{months[month.month - 1]} {month.year}"))
            index = month.month - 1 + step
            month = datetime(month.year + index // 12, index % 12 + 1, 1, tzinfo=tz)
        return out
    step = next(s for s in (1, 2, 7, 14) if days / s <= 12)
    day = datetime(first.year, first.month, first.day, tzinfo=tz)
    if step >= 7:  # weeks start on Monday
        day += timedelta(days=(7 - day.weekday()) % 7)
    while day <= end:
        if day >= start:
            out.append((day, short_date(day, lang, year=False)))
        day = datetime.combine(day.date() + timedelta(days=step), day.time(), tzinfo=tz)
    return out
