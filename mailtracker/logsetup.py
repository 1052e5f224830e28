"""Logging to stderr in a form journald and a terminal both read well.

Lines carry a syslog priority prefix (``<6>``) when stderr is the journal (``JOURNAL_STREAM``
is set by systemd), so ``journalctl -p warning`` filters correctly; otherwise a timestamp.
Log records never contain secrets: nothing logs a password or token, and text taken from mail
is stripped of control characters before it reaches a log line.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TextIO

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
             logging.CRITICAL: 2}


class _SafeFormatter(logging.Formatter):
    def __init__(self, journal: bool):
        fmt = "%(message)s" if journal else "%(asctime)s %(levelname)s %(message)s"
        super().__init__(fmt, datefmt="%Y-%m-%dT%H:%M:%S%z")
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        # One record, one line: CR/LF from hostile mail must not forge log lines.
        text = "".join(c if c.isprintable() or c == "\t" else " " for c in text)
        if self.journal:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{text}"
        return text


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each record, so a handler made
    while stderr was temporarily redirected (click's test runner) never holds on to, and
    keeps filling, that old buffer."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: object) -> None:
        pass


def setup_logging(debug: bool) -> None:
    logger = logging.getLogger("mailtracker")
    if logger.handlers:
        logger.setLevel(logging.DEBUG if debug else logging.INFO)
        return
    handler = _StderrHandler()
    handler.setFormatter(_SafeFormatter(journal=bool(os.environ.get("JOURNAL_STREAM"))))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False
