"""The command line as a user meets it: help everywhere, documented commands, one-line errors
with named exit codes, tracebacks only with --debug."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from mailtracker.cli import main
from tests.plugins.workspace import Workspace

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _commands(group: click.Group, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    for name, cmd in sorted(group.commands.items()):
        full = f"{prefix}{name}"
        yield full, cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, full + " ")


ALL = list(_commands(main))


@pytest.mark.parametrize(("name", "cmd"), ALL, ids=[n for n, _ in ALL])
def test_every_command_has_help_and_is_in_readme(name: str, cmd: click.Command) -> None:
    result = CliRunner().invoke(main, [*name.split(), "--help"])
    assert result.exit_code == 0
    assert (cmd.help or "").strip(), f"{name} has no help text"
    assert f"`{name}" in README or f"mailtracker {name}" in README, f"{name} not in README"


def test_init_writes_private_config_and_refuses_to_overwrite(tmp_path: Path) -> None:
    runner = CliRunner()
    path = tmp_path / "config" / "mailtracker.toml"
    first = runner.invoke(main, ["init", "--municipality", "Ærø Kommune", "--path", str(path)])
    assert first.exit_code == 0, first.output
    assert 'name = "Ærø Kommune"' in path.read_text(encoding="utf-8")
    assert path.stat().st_mode & 0o077 == 0
    second = runner.invoke(main, ["init", "--path", str(path)])
    assert second.exit_code == 3 and "already exists" in second.output


def test_missing_config_is_one_line_with_the_fix(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["--config", str(tmp_path / "none.toml"), "status"])
    assert result.exit_code == 3
    assert result.output.count("\n") == 1
    assert "mailtracker init" in result.output and "Traceback" not in result.output


@pytest.fixture
def ws(make_workspace: Callable[..., Workspace]) -> Workspace:
    return make_workspace()


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--role", "system_owner", "--name", "A", "--email", "not-an-address"], 9,
     "not a valid e-mail address"),
    (["--role", "boss", "--name", "A", "--email", "a@kommune.dk"], 9, "unknown role 'boss'"),
    (["--role", "finance", "--name", "A\nB", "--email", "a@kommune.dk"], 9,
     "control characters"),
    (["--role", "finance", "--name", "A", "--email", "a@kommune.dk\r\nBcc: x@evil.dk"], 9,
     "control characters"),
])
def test_bad_recipient_is_refused_and_nothing_stored(ws: Workspace, args: list[str], code: int,
                                                     message: str) -> None:
    result = ws.cli("recipients", "add", *args)
    assert result.exit_code == code
    assert message in result.output
    assert json.loads(ws.cli("recipients", "list", "--json").stdout) == []


def test_danish_names_round_trip(ws: Workspace) -> None:
    ws.add_recipients([("system_owner", "Søren Ærø-Åse", "soeren@kommune.dk"),
                       ("agreement_admin", "Hansen, Bjørn", "BJOERN@Kommune.DK")])
    listed = json.loads(ws.cli("recipients", "list", "--json").stdout)
    assert {(r["name"], r["email"]) for r in listed} == {
        ("Søren Ærø-Åse", "soeren@kommune.dk"), ("Hansen, Bjørn", "BJOERN@kommune.dk")}
    dup = ws.cli("recipients", "add", "--role", "finance", "--name", "X", "--email",
                 "soeren@kommune.dk")
    assert dup.exit_code == 9 and "--replace" in dup.output
    removed = ws.cli("recipients", "remove", "soeren@kommune.dk")
    assert removed.exit_code == 0
    missing = ws.cli("recipients", "remove", "soeren@kommune.dk")
    assert missing.exit_code == 9 and "no recipient" in missing.output


def test_forget_removes_every_trace(ws: Workspace) -> None:
    ws.add_recipients([("finance", "Åse Økonomi", "aase@kommune.dk")])
    result = ws.cli("forget", "aase@kommune.dk", "--yes")
    assert result.exit_code == 0
    assert "aase@kommune.dk" not in ws.store_path.read_text(encoding="utf-8")


def test_internal_error_has_no_traceback_without_debug(
        ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    import mailtracker.task.report as report

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(report, "build_report", boom)
    quiet = CliRunner().invoke(main, ["--config", str(ws.config_path), "status"], env=ws.environ)
    assert quiet.exit_code == 1
    assert "internal error: RuntimeError: simulated bug" in quiet.output
    assert "--debug" in quiet.output and "Traceback" not in quiet.output
    loud = CliRunner().invoke(main, ["--config", str(ws.config_path), "--debug", "status"],
                              env=ws.environ)
    assert loud.exit_code == 1  # the same exit code, now with the traceback
    assert "Traceback (most recent call last)" in loud.output
    assert "RuntimeError: simulated bug" in loud.output


def test_config_show_never_prints_secrets(make_workspace: Callable[..., Workspace],
                                          smtp_server: object) -> None:
    w = make_workspace(smtp=smtp_server)
    result = w.cli("config", "show")
    assert result.exit_code == 0
    assert "MT_TEST_SMTP_PASSWORD" in result.output  # where it comes from …
    secret = w.environ["MT_TEST_SMTP_PASSWORD"]
    assert secret not in result.output  # … never what it is
    as_json = json.loads(w.cli("config", "show", "--json").stdout)
    assert secret not in json.dumps(as_json, ensure_ascii=False)


def test_status_json_shape_is_stable(ws: Workspace) -> None:
    ws.add_recipients([("system_owner", "Søren", "s@kommune.dk")])
    status = ws.status()
    assert {"task", "klik_status", "recipients", "milestones", "quarantine"} <= set(status)
    assert status["task"] == "efaktura-8b" and status["klik_status"] == "ikke startet"
    row = status["recipients"][0]
    assert {"email", "name", "role", "notification", "message_id", "acknowledged"} <= set(row)
    assert all(v is None for v in status["milestones"].values())
    assert re.match(r"^Tilføj|^Add", status["next_step"])


def test_status_refuses_json_together_with_a_format(ws: Workspace) -> None:
    result = ws.cli("status", "--format", "markdown", "--json")
    assert result.exit_code == 2
    assert "--json and --format exclude each other" in result.output
    assert ws.cli("status", "--format", "json").exit_code == 2  # --json is the one way
    assert ws.cli("status", "--format", "markdown").exit_code == 0


@pytest.mark.parametrize("value", ["2026-12-10", "2026-12-10T09:30", "10/12/2026"])
def test_every_example_in_a_clock_error_is_accepted_when_pasted_back(
        ws: Workspace, value: str) -> None:
    refused = ws.cli("status", env={"MAILTRACKER_NOW": value})
    assert refused.exit_code == 3, refused.output
    example = re.search(r"\(e\.g\. ([^)]+)\)", refused.output)
    assert example is not None, refused.output
    accepted = ws.cli("status", env={"MAILTRACKER_NOW": example.group(1)})
    assert accepted.exit_code == 0, accepted.output
