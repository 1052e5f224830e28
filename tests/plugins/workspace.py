"""A mailtracker workspace (config file + state file) for CLI tests, wired to test servers.

``make_workspace(smtp=server, imap=(dovecot, user, password))`` writes
``<tmp>/config/mailtracker.toml`` and returns a ``Workspace`` whose ``cli(...)`` runs the real
click entry point (``CliRunner``) with the passwords in the environment only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from mailtracker.cli import main

SMTP_PW_ENV = "MT_TEST_SMTP_PASSWORD"
IMAP_PW_ENV = "MT_TEST_IMAP_PASSWORD"
AUTHSERV_ID = "mx.kommune.dk"  # as in tests/mail/*.eml


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def render_toml(sections: Mapping[str, Mapping[str, Any]]) -> str:
    out = []
    for name, table in sections.items():
        out.append(f"[{name}]")
        out += [f"{k} = {_toml_value(v)}" for k, v in table.items() if v is not None]
        out.append("")
    return "\n".join(out)


@dataclass
class Workspace:
    root: Path
    config_path: Path
    environ: dict[str, str]
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def store_path(self) -> Path:
        return self.config_path.parent / "mailtracker.json"

    def write(self) -> None:
        self.config_path.write_text(render_toml(self.sections), encoding="utf-8")
        self.config_path.chmod(0o600)

    def set(self, section: str, **values: Any) -> None:
        self.sections.setdefault(section, {}).update(values)
        self.write()

    def cli(self, *args: str, input: str | None = None,
            env: Mapping[str, str] | None = None) -> Result:
        runner = CliRunner()
        return runner.invoke(main, ["--config", str(self.config_path), *args], input=input,
                             env={**self.environ, **(env or {})}, catch_exceptions=False)

    def status(self) -> dict[str, Any]:
        result = self.cli("status", "--json")
        assert result.exit_code == 0, result.output
        data: dict[str, Any] = json.loads(result.stdout)
        return data

    def add_recipients(self, people: list[tuple[str, str, str]]) -> None:
        for role, name, email in people:
            result = self.cli("recipients", "add", "--role", role, "--name", name,
                              "--email", email)
            assert result.exit_code == 0, result.output


def make_workspace_at(root: Path, *, smtp: Any = None, imap: Any = None,
                      organisation: str = "Eksempel Kommune", **extra: Any) -> Workspace:
    """``smtp``: an SmtpTestServer; ``imap``: (dovecot, user, password)."""
    config_dir = root / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    ws = Workspace(root, config_dir / "mailtracker.toml", {})
    ws.sections["organisation"] = {"name": organisation}
    ws.sections["task"] = {"definition": "efaktura-8b", "language": "da"}
    if smtp is not None:
        ws.environ[SMTP_PW_ENV] = smtp.password
        ws.sections["smtp"] = {
            "host": smtp.host, "port": smtp.port, "tls": smtp.tls, "username": smtp.username,
            "password_env": SMTP_PW_ENV, "ca_file": str(smtp.ca_file),
            "from_address": "kp-ejer@kommune.example",
            "from_name": "Karen Pedersen, KP-systemansvarlig", "timeout": 5,
            "retry_delay": 0.05,
        }
    if imap is not None:
        server, user, password = imap
        ws.environ[IMAP_PW_ENV] = password
        ws.sections["imap"] = {
            "host": server.host, "port": server.port_tls, "tls": "implicit", "username": user,
            "password_env": IMAP_PW_ENV, "ca_file": str(server.ca_file), "timeout": 10,
        }
        ws.sections["trust"] = {"authserv_id": AUTHSERV_ID}
    for section, values in extra.items():
        ws.sections.setdefault(section, {}).update(values)
    ws.write()
    return ws


@pytest.fixture
def make_workspace(tmp_path: Path) -> Iterator[Callable[..., Workspace]]:
    counter = iter(range(1000))

    def make(**kwargs: Any) -> Workspace:
        return make_workspace_at(tmp_path / f"ws{next(counter)}", **kwargs)

    yield make


THREE = [
    ("system_owner", "Søren Ærø-Åse", "soeren@kommune.example"),
    ("agreement_admin", "Hansen, Bjørn", "bjoern.hansen@kommune.example"),
    ("oeir_coordinator", "Åse Øberg", "aase.oeberg@kommune.example"),
]
