"""``mailtracker demo``: the whole loop on loopback servers, as a user runs it, with a real
Dovecot and with the in-memory mailbox."""

from __future__ import annotations

import asyncio
import email
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from mailtracker.demo import mails
from mailtracker.demo.mailbox import MemoryMailboxes
from mailtracker.demo.scenario import CAST, DemoStateError, run_demo
from mailtracker.demo.servers import SubmissionServer, make_demo_ca
from mailtracker.errors import (
    DemoFailedError,
    ExitStatus,
    InvalidInputError,
    MissingExtraError,
    SmtpAuthError,
)
from mailtracker.inbound.mail.parse import parse
from mailtracker.outbound.smtp import SendOutcome, SmtpSession
from mailtracker.settings.config import SecretSource, SmtpSettings

REPO = Path(__file__).resolve().parents[1]
KP_OWNER = next(p for p in CAST if p.role == "kp_owner").email
MODES = ["memory", "dovecot"]
MAILBOX_LINE = {
    "memory": r"  mailbox  in-memory mailbox \(no IMAP\)",
    "dovecot": r"  mailbox  Dovecot 2\.\d+\.\S+ on 127\.0\.0\.1:\d+ \(implicit TLS, "
               r"unprivileged: runs as (?!root\b)\S+\)",
}


def _cli(*args: str, cwd: Path, env: dict[str, str] | None = None,
         python: tuple[str, ...] = ("-m", "mailtracker")) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, *python, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def _needs_dovecot(mode: str) -> None:
    if mode == "dovecot" and shutil.which("dovecot") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("dovecot is not on PATH (apt-get install dovecot-imapd)")
        pytest.skip("dovecot is not on PATH (apt-get install dovecot-imapd)")


def _by_part(part: str) -> str:
    return next(p.email for p in CAST if p.part == part)


def _parsed(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


@pytest.fixture(scope="module", params=MODES)
def kept_demo(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
              ) -> tuple[Any, list[str]]:
    """One Danish demo run per mailbox whose workspace is kept, shared by the tests that
    only read."""
    _needs_dovecot(request.param)
    lines: list[str] = []
    result = run_demo(tmp_path_factory.mktemp("demo") / "ws", True, "da", lines.append,
                      request.param)
    return result, lines


@pytest.mark.parametrize("mode", MODES)
def test_mailtracker_demo_command_exits_0_and_its_workspace_answers_status(
        tmp_path: Path, mode: str) -> None:
    _needs_dovecot(mode)
    workspace = tmp_path / "ws"
    run = _cli("demo", "--mailbox", mode, "--keep", str(workspace), cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Demo OK" in run.stdout
    line = re.search(f"^{MAILBOX_LINE[mode]}$", run.stdout, re.MULTILINE)
    assert line, run.stdout
    if mode == "dovecot":  # the demo's Dovecot is gone with it
        port = int(re.findall(r"127\.0\.0\.1:(\d+)", line.group(0))[0])
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
    shown = _cli("--config", str(workspace / "config" / "mailtracker.toml"), "status",
                 "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    status = json.loads(shown.stdout)
    assert (status["klik_status"], status["quarantine"]) == ("fuldført", 1)
    assert {k for k, v in status["milestones"].items() if v} == {
        "service_agreement_received", "guide_received", "webinar_invited"}


def test_the_demo_reaches_the_expected_final_state(kept_demo: tuple[Any, list[str]]) -> None:
    result, lines = kept_demo
    assert result.ok and result.lines == lines
    assert lines[-1] == "Demo OK: the whole loop works."
    assert any(line.startswith(f"The KLIK dossier of this state: {result.workdir}/report.html")
               for line in lines)
    assert not [line for line in lines if line.lstrip().startswith("✗")]
    status = result.status
    assert status["organisation"] == "Demo Kommune"
    assert status["klik_status"] == "fuldført"
    rows = {r["email"]: r for r in status["recipients"]}
    assert {r["role"] for r in rows.values()} == {
        "system_owner", "agreement_admin", "oeir_coordinator", "finance", "kp_owner"}
    assert rows[_by_part("reply")]["acknowledged"] is True
    assert rows[_by_part("auto_reply")]["acknowledged"] is False
    assert rows[_by_part("bounce")]["delivery"] == "bounced"
    assert "5.1.1" in rows[_by_part("bounce")]["bounce_reason"]
    agreement = status["milestones"]["service_agreement_received"]
    assert agreement["from"] == "kundeservice@eg.dk" and "underskrift" in agreement["subject"]
    webinar = status["milestones"]["webinar_invited"]
    assert webinar["join_url"].startswith("https://teams.microsoft.com/l/meetup-join/")
    assert webinar["start"].endswith(("+01:00", "+02:00"))  # Danish time, from the TZID
    assert status["quarantine"] == 1 and status["unparseable"] == 0


def test_the_output_shows_timeline_quarantine_and_where_the_mail_lies(
        kept_demo: tuple[Any, list[str]]) -> None:
    result, lines = kept_demo
    text = "\n".join(lines)
    for heading in ("Status timeline (Danish time)", "Quarantine (mailtracker review)",
                    "Status (mailtracker status)", "Expected final state"):
        assert heading in lines
    assert "dmarc=fail" in text  # why the spoof is held
    assert f"{result.workdir / 'sent'}/*.eml" in text
    assert str(result.workdir / "config" / "mailtracker.toml") in text


def test_the_sent_mail_is_what_each_recipient_received(kept_demo: tuple[Any, list[str]]
                                                       ) -> None:
    result, _lines = kept_demo
    rows = {r["email"]: r for r in result.status["recipients"]}
    sent = sorted((result.workdir / "sent").glob("*.eml"))
    assert len(sent) == len(CAST)
    for path in sent:
        msg = _parsed(path.read_bytes())
        to = msg["To"].addresses[0].addr_spec
        assert msg["Message-ID"] == rows[to]["message_id"]
        inbox = result.workdir / "mailboxes" / to / "INBOX"
        if to == _by_part("bounce"):
            assert not inbox.exists()  # nobody has that mailbox
            continue
        received = [_parsed(p.read_bytes()) for p in inbox.glob("*.eml")]
        assert msg["Message-ID"] in [m["Message-ID"] for m in received]


def test_no_password_is_written_to_the_workspace(kept_demo: tuple[Any, list[str]]) -> None:
    result, _lines = kept_demo
    config = (result.workdir / "config" / "mailtracker.toml").read_text(encoding="utf-8")
    assert 'password_env = "MAILTRACKER_DEMO_PASSWORD"' in config
    assert "password =" not in config
    assert (result.workdir / "config" / "mailtracker.toml").stat().st_mode & 0o077 == 0


def test_lang_selects_the_recipients_language(tmp_path: Path,
                                              kept_demo: tuple[Any, list[str]]) -> None:
    danish, _lines = kept_demo
    english = run_demo(tmp_path / "en", True, "en", lambda line: None)
    assert {r["lang"] for r in english.status["recipients"]} == {"en"}

    def subjects(workdir: Path) -> set[str]:
        return {str(_parsed(p.read_bytes())["Subject"]) for p in (workdir / "sent").glob("*")}

    assert subjects(english.workdir).isdisjoint(subjects(danish.workdir))
    assert english.status["klik_status"] == "fuldført"


def test_a_temporary_workspace_is_removed_unless_kept() -> None:
    lines: list[str] = []
    result = run_demo(None, False, "da", lines.append)
    assert result.ok and not result.workdir.exists()
    assert "--keep" in lines[-1]


def test_a_workdir_that_is_not_empty_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(InvalidInputError, match="not an empty directory"):
        run_demo(tmp_path, True, "da", lambda line: None)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_the_demo_fails_when_eg_mail_is_not_authenticated_by_our_server(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A receiving server with another name: its "pass" proves nothing to mailtracker.
    monkeypatch.setattr(mails, "AUTH_PASS", "mx.other.example; dkim=pass header.d=eg.dk; "
                                            "dmarc=pass header.from=eg.dk")
    lines: list[str] = []
    with pytest.raises(DemoStateError) as failed:
        run_demo(tmp_path / "ws", True, "da", lines.append)
    assert isinstance(failed.value, DemoFailedError)
    assert failed.value.exit_status is ExitStatus.DEMO_FAILED
    assert "  ✗ service agreement received, from EG's genuine mail" in lines
    assert "  ✗ the spoofed 'EG' mail is in quarantine, and nothing else" in lines
    assert lines[-1].startswith("Demo FAILED")
    assert failed.value.result.status["quarantine"] == 4


def test_an_unknown_or_missing_mailbox_is_refused_before_anything_is_built(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidInputError, match="unknown mailbox 'imap'"):
        run_demo(tmp_path / "ws", True, "da", lambda line: None, "imap")
    monkeypatch.setenv("PATH", str(tmp_path))  # no dovecot there
    with pytest.raises(MissingExtraError, match="no dovecot"):
        run_demo(tmp_path / "ws", True, "da", lambda line: None, "dovecot")
    assert not (tmp_path / "ws").exists()


def test_auto_takes_dovecot_from_path_and_memory_without_it(tmp_path: Path) -> None:
    _needs_dovecot("dovecot")
    with_dovecot = _cli("demo", cwd=tmp_path)
    assert with_dovecot.returncode == 0, with_dovecot.stdout + with_dovecot.stderr
    assert re.search(f"^{MAILBOX_LINE['dovecot']}$", with_dovecot.stdout, re.MULTILINE)
    without = _cli("demo", cwd=tmp_path, env={"PATH": os.path.dirname(sys.executable)})
    assert without.returncode == 0, without.stdout + without.stderr
    assert "  mailbox  in-memory mailbox (no IMAP): no dovecot on PATH\n" in without.stdout


@pytest.fixture
def broken_dovecot() -> Iterator[str]:
    """A PATH whose ``dovecot`` refuses to start, as a broken installation would. Readable by
    everyone: run as root, the demo runs Dovecot as nobody."""
    directory = Path(tempfile.mkdtemp(prefix="mtdemo-fake-"))
    directory.chmod(0o755)
    for name, script in (("dovecot", 'if [ "$1" = --version ]; then echo "2.3.0 (fake)"; '
                                     'exit 0; fi\necho "Fatal: fake dovecot refuses to start" '
                                     ">&2\nexit 89\n"),
                         ("dovecot-lda", "exit 75\n")):
        (directory / name).write_text(f"#!/bin/sh\n{script}")
        (directory / name).chmod(0o755)
    yield f"{directory}:{os.path.dirname(sys.executable)}:/usr/bin:/bin"
    shutil.rmtree(directory)


def test_auto_falls_back_to_memory_when_dovecot_does_not_start(tmp_path: Path,
                                                                broken_dovecot: str) -> None:
    run = _cli("demo", cwd=tmp_path, env={"PATH": broken_dovecot})
    assert run.returncode == 0, run.stdout + run.stderr
    assert ("  mailbox  in-memory mailbox (no IMAP): Dovecot exited with 89: Fatal: fake "
            "dovecot refuses to start\n") in run.stdout
    assert "Demo OK" in run.stdout


def test_mailbox_dovecot_says_why_dovecot_did_not_start(tmp_path: Path,
                                                       broken_dovecot: str) -> None:
    run = _cli("demo", "--mailbox", "dovecot", cwd=tmp_path, env={"PATH": broken_dovecot})
    assert run.returncode == ExitStatus.DEMO_FAILED
    (line,) = run.stderr.splitlines()
    assert "Dovecot exited with 89: Fatal: fake dovecot refuses to start" in line
    assert "--mailbox memory" in line and "Traceback" not in run.stderr


def test_mailbox_dovecot_without_dovecot_says_how_to_get_it(tmp_path: Path) -> None:
    run = _cli("demo", "--mailbox", "dovecot", cwd=tmp_path,
               env={"PATH": os.path.dirname(sys.executable)})
    assert run.returncode == ExitStatus.MISSING_EXTRA == 14
    assert run.stdout == ""
    (line,) = run.stderr.splitlines()
    assert "no dovecot" in line and "apt-get install dovecot-imapd" in line
    assert "--mailbox memory" in line
    assert not list(tmp_path.iterdir())  # nothing was built


@pytest.mark.parametrize("hidden", ["aiosmtpd", "trustme"])
def test_without_the_demo_extra_one_line_says_how_to_get_it(tmp_path: Path,
                                                            hidden: str) -> None:
    # As after a plain 'pip install mailtracker': the module cannot be imported.
    hide = (f"import sys; sys.modules[{hidden!r}] = None; sys.argv[0] = 'mailtracker'; "
            "from mailtracker.cli import main; main()")
    run = _cli("demo", cwd=tmp_path, python=("-c", hide))
    assert run.returncode == ExitStatus.MISSING_EXTRA
    assert run.stdout == ""
    (line,) = run.stderr.splitlines()
    assert hidden in line and "pip install 'mailtracker[demo]'" in line
    assert "Traceback" not in run.stderr


def test_the_dovecot_demo_runs_for_a_user_without_privileges(tmp_path: Path) -> None:
    """Run by root, the demo drops Dovecot to nobody; run by nobody, it runs as nobody."""
    _needs_dovecot("dovecot")
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv to become another user")
    home = Path(tempfile.mkdtemp(prefix="mtdemo-user-"))
    try:
        shutil.chown(home, "nobody", "nogroup")
        env = {"PATH": f"{os.path.dirname(sys.executable)}:/usr/bin:/bin:/usr/sbin",
               "HOME": str(home), "PYTHONPATH": str(REPO)}
        as_nobody = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                     sys.executable]
        can = subprocess.run([*as_nobody, "-c", "import mailtracker.cli, aiosmtpd"], cwd=home,
                             env=env, capture_output=True, text=True, timeout=60, check=False)
        if can.returncode != 0:
            pytest.skip(f"nobody cannot run this Python and checkout: {can.stderr[-200:]}")
        run = subprocess.run(
            [*as_nobody, "-m", "mailtracker", "demo", "--mailbox", "dovecot", "--keep",
             str(home / "ws")],
            cwd=home, env=env, capture_output=True, text=True, timeout=120, check=False)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "unprivileged: runs as nobody)" in run.stdout
        assert (home / "ws" / "config" / "mailtracker.toml").stat().st_uid != 0
    finally:
        shutil.rmtree(home, ignore_errors=True)


# -- the submission server -------------------------------------------------------------------


@pytest.fixture
def servers(tmp_path: Path) -> Any:
    mailboxes = MemoryMailboxes({KP_OWNER: "demo-password"}, KP_OWNER)
    tls = make_demo_ca(tmp_path / "tls")
    with SubmissionServer(mailboxes, {KP_OWNER: "demo-password"}, tls) as running:
        yield running, mailboxes


def _smtp(servers: tuple[SubmissionServer, MemoryMailboxes], **overrides: Any
          ) -> SmtpSettings:
    smtp, _mailboxes = servers
    fields: dict[str, Any] = dict(
        host="127.0.0.1", port=smtp.port, tls="starttls", username=KP_OWNER,
        secret=SecretSource(), ca_file=smtp.tls.ca_file, from_address=KP_OWNER,
        from_name="Karen", timeout=5)
    fields.update(overrides)
    return SmtpSettings(**fields)


def _orientation(to: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = KP_OWNER, to, "Orientering"
    msg["Message-ID"] = "<orientering-1@demo-kommune.dk>"
    msg.set_content("Hej")
    return msg


def test_an_unknown_address_is_accepted_then_bounced_with_a_dsn(
        servers: tuple[SubmissionServer, MemoryMailboxes]) -> None:
    async def send() -> SendOutcome:
        async with SmtpSession(_smtp(servers), "demo-password") as session:
            return await session.send(_orientation("findes.ikke@demo-kommune.dk"),
                                      ["findes.ikke@demo-kommune.dk"])

    outcome = asyncio.run(send())
    assert outcome.accepted == ("findes.ikke@demo-kommune.dk",)
    (dsn,) = servers[1].accounts[KP_OWNER].messages()
    report = parse(dsn).delivery_report
    assert report is not None
    assert report.original_message_id == "<orientering-1@demo-kommune.dk>"
    (status,) = report.statuses
    assert (status.recipient, status.status, status.failed) == (
        "findes.ikke@demo-kommune.dk", "5.1.1", True)


def _login(settings: SmtpSettings, password: str) -> None:
    async def connect() -> None:
        async with SmtpSession(settings, password):
            pass

    asyncio.run(connect())


def test_the_submission_server_takes_no_password_without_tls(
        servers: tuple[SubmissionServer, MemoryMailboxes]) -> None:
    with pytest.raises(SmtpAuthError, match="does not offer AUTH"):
        _login(_smtp(servers, tls="none"), "demo-password")


def test_the_submission_server_refuses_a_wrong_password(
        servers: tuple[SubmissionServer, MemoryMailboxes]) -> None:
    with pytest.raises(SmtpAuthError, match="535"):
        _login(_smtp(servers), "wrong")
