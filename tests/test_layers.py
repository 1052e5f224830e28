"""The pure modules stay pure: imported alone, none of them brings in the store, a network
library or ``App`` (each is imported in a fresh interpreter, so nothing else has loaded them)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mailtracker"
PURE_PACKAGES = ["task", "inbound/mail", "inbound/judge"]
PURE_MODULES = ["dossier.model", "dossier.timeline", "followup.schedule", "followup.calendar",
                "followup.definition", "followup.ics", "outbound.render", "models", "errors",
                "addresses"]
FORBIDDEN = ["tinydb", "imapclient", "aiosmtplib", "httpx", "msal", "mailtracker.store",
             "mailtracker.app"]


def _pure_modules() -> list[str]:
    names = list(PURE_MODULES)
    for package in PURE_PACKAGES:
        for path in sorted((PACKAGE / package).glob("*.py")):
            dotted = ".".join((path.relative_to(PACKAGE).with_suffix("")).parts)
            names.append(dotted.removesuffix(".__init__"))
    return names


@pytest.mark.parametrize("module", _pure_modules())
def test_a_pure_module_imports_no_store_no_network_library_and_no_app(module: str) -> None:
    code = (f"import sys, mailtracker.{module}\n"
            f"print(','.join(m for m in {FORBIDDEN!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "", f"mailtracker.{module} imports {out.stdout.strip()}"


def test_the_list_of_pure_modules_is_not_empty() -> None:
    assert len(_pure_modules()) > 20
