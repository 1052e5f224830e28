"""Headless Chromium for tests that look at a page as a person would: a screenshot, a print to
PDF, and the boxes the browser laid out. ``./run test`` installs ``chromium`` and
``poppler-utils`` (``pdfinfo``, ``pdftotext``); without them these tests skip on a developer's
machine and fail in CI.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        message = f"{tool} is not installed (./run test installs it with apt-get)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@dataclass(frozen=True)
class Chromium:
    binary: str
    profile: Path

    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = [self.binary, "--headless", "--no-sandbox", "--disable-gpu",
                   "--hide-scrollbars", "--no-first-run", "--disable-extensions",
                   f"--user-data-dir={self.profile}", *args]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                                check=False)
        assert result.returncode == 0, result.stderr[-2000:]
        return result

    def screenshot(self, page: Path, out: Path, width: int = 1100, height: int = 1600) -> Path:
        self._run(f"--window-size={width},{height}", f"--screenshot={out}", page.as_uri())
        assert out.is_file()
        return out

    def print_pdf(self, page: Path, out: Path) -> Path:
        self._run("--no-pdf-header-footer", f"--print-to-pdf={out}", page.as_uri())
        assert out.is_file()
        return out

    def dom_after_scripts(self, page: Path) -> str:
        """The DOM once the page's scripts ran (for test copies that measure layout)."""
        return self._run("--virtual-time-budget=5000", "--dump-dom", page.as_uri()).stdout


@pytest.fixture
def chromium(tmp_path: Path) -> Chromium:
    binary = next((p for p in (shutil.which("chromium"), shutil.which("chromium-browser"),
                               shutil.which("google-chrome")) if p), None)
    if binary is None:
        _need("chromium")
    assert binary is not None
    return Chromium(binary, tmp_path / "chromium-profile")


def pdf_pages(pdf: Path) -> int:
    out = subprocess.run([_need("pdfinfo"), str(pdf)], capture_output=True, text=True,
                         check=True).stdout
    return int(next(line.split()[-1] for line in out.splitlines()
                    if line.startswith("Pages:")))


def pdf_text(pdf: Path) -> str:
    return subprocess.run([_need("pdftotext"), "-enc", "UTF-8", str(pdf), "-"],
                          capture_output=True, text=True, check=True).stdout
