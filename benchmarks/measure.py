"""Timing: both sides of a ratio in one run, alternating, median of several repetitions."""

from __future__ import annotations

import gc
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Row:
    """One line of the result table. ``goal`` is the highest acceptable ratio (None: none)."""

    case: str
    ours: float  # seconds, median
    floor: float | None  # seconds, median
    goal: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float | None:
        if self.floor is None or self.floor <= 0:
            return None
        return self.ours / self.floor

    @property
    def verdict(self) -> str:
        if self.goal is None or self.ratio is None:
            return ""
        return "ok" if self.ratio <= self.goal else "ABOVE GOAL"


def compare(case: str, ours: Callable[[], object], floor: Callable[[], object], *, reps: int,
            goal: float | None, prepare: Callable[[], object] | None = None,
            warmup: int = 1) -> Row:
    """Time ``ours`` and ``floor`` ``reps`` times each, alternating which goes first.

    ``prepare`` runs (untimed) before every call of ``ours`` (e.g. to restore a state file).
    A warm-up round of each side comes first and is not counted (server caches, imports).
    """
    def timed(fn: Callable[[], object], before: Callable[[], object] | None) -> float:
        if before is not None:
            before()
        gc.collect()
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    for _ in range(warmup):
        timed(ours, prepare)
        timed(floor, None)
    a: list[float] = []
    b: list[float] = []
    for i in range(reps):
        if i % 2 == 0:
            a.append(timed(ours, prepare))
            b.append(timed(floor, None))
        else:
            b.append(timed(floor, None))
            a.append(timed(ours, prepare))
    row = Row(case, statistics.median(a), statistics.median(b), goal)
    row.notes.append(f"{reps} reps, spread ours {min(a) * 1e3:.1f}-{max(a) * 1e3:.1f} ms, "
                     f"floor {min(b) * 1e3:.1f}-{max(b) * 1e3:.1f} ms")
    return row


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.2f} s"


def table(rows: list[Row]) -> str:
    """The rows as a Markdown table (readable in a terminal, pasteable into README)."""
    out = ["| case | mailtracker | floor | ratio | goal | |",
           "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        ratio = f"{r.ratio:.2f}×" if r.ratio is not None else "-"
        goal = f"≤ {r.goal:g}×" if r.goal is not None else "-"
        out.append(f"| {r.case} | {_seconds(r.ours)} | {_seconds(r.floor)} | {ratio} | {goal} "
                   f"| {r.verdict} |")
    return "\n".join(out)


def details(rows: list[Row]) -> str:
    return "\n".join(f"- {r.case}: {'; '.join(r.notes)}" for r in rows if r.notes)
