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


# No arrow runs back up: the mail parser knows nothing of the judge, the judge nothing of the
# settings or the task's state, the task nothing of inbound mail handling. (Read from the
# source's import statements: what a module names is what it depends on.)
NO_ARROW = {
    "inbound/mail": ("mailtracker.inbound.judge", "mailtracker.inbound.poller",
                     "mailtracker.settings", "mailtracker.task"),
    "inbound/judge": ("mailtracker.settings", "mailtracker.inbound.poller",
                      "mailtracker.task.state", "mailtracker.task.transition",
                      "mailtracker.task.report"),
    "task": ("mailtracker.inbound",),
}


def _imports(path: Path) -> set[str]:
    import ast

    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("package", sorted(NO_ARROW))
def test_no_import_runs_back_up(package: str) -> None:
    wrong = [f"{path.relative_to(ROOT)} imports {name}"
             for path in sorted((PACKAGE / package).glob("*.py"))
             for name in sorted(_imports(path))
             if name.startswith(NO_ARROW[package])]
    assert wrong == []


@pytest.mark.parametrize("module, absent", [
    # a poll that finds nothing new: no parser, no judge, no calendar, no IMAP library yet
    ("inbound.poller", ["mailtracker.inbound.mail.parse", "mailtracker.inbound.judge.classify",
                        "icalendar", "imapclient", "jinja2", "msal", "httpx", "email.parser"]),
    # status and the CLI: no mail libraries at all
    ("cli", ["imapclient", "aiosmtplib", "icalendar", "jinja2", "msal", "httpx"]),
    ("task.report", ["imapclient", "aiosmtplib", "icalendar", "jinja2", "msal", "httpx"]),
])
def test_heavy_libraries_are_imported_only_when_used(module: str, absent: list[str]) -> None:
    code = (f"import sys, mailtracker.{module}\n"
            f"print(','.join(m for m in {absent!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "", f"mailtracker.{module} imports {out.stdout.strip()}"
