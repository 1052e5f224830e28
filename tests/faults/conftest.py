"""The campaign's figures: collected over the session, printed in pytest's summary and, with
``MAILTRACKER_FAULT_REPORT=path.json``, written as JSON."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults import REPORT_ENV
from tests.faults.campaign import Figures

_FIGURES = pytest.StashKey[Figures]()


@pytest.fixture(scope="session")
def campaign_figures(pytestconfig: pytest.Config) -> Iterator[Figures]:
    figures = pytestconfig.stash.setdefault(_FIGURES, Figures())
    yield figures
    report = os.environ.get(REPORT_ENV)
    if report and figures.runs:
        figures.write(Path(report))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter,
                            config: pytest.Config) -> None:
    figures = config.stash.get(_FIGURES, None)
    if figures is not None and figures.runs:
        terminalreporter.write_line(figures.summary())
