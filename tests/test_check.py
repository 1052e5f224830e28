"""`mailtracker check` against the real test servers (aiosmtpd, Dovecot) with good and broken
settings: every finding is one line with a fix, and one broken probe does not hide the rest."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import filelock
import pytest
import trustme

from mailtracker.app import open_app
from mailtracker.check import CheckReport, CheckResult, format_check, run_check
from mailtracker.check.authserv import authserv_ids
from mailtracker.cli import main
from mailtracker.store import SCHEMA_VERSION
from tests.plugins.dovecot import Dovecot
from tests.plugins.smtpd import SmtpTestServer
from tests.plugins.workspace import AUTHSERV_ID, IMAP_PW_ENV, SMTP_PW_ENV, Workspace

MakeWs = Callable[..., Workspace]
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
WRONG_PASSWORD = "Forkert-kodeord-4711"


def run(ws: Workspace, now: datetime = NOW) -> CheckReport:
    return asyncio.run(run_check(open_app(ws.config_path, ws.environ), now=now))


def results(report: CheckReport, group: str) -> dict[str, CheckResult]:
    return {c.name: c for c in report.checks if c.group == group}


def statuses(report: CheckReport, group: str) -> dict[str, str]:
    return {c.name: c.status for c in report.checks if c.group == group}


def mail(n: int, *auth_results: str) -> bytes:
    headers = "".join(f"Authentication-Results: {a}\r\n" for a in auth_results)
    return (f"Return-Path: <noreply@eg.dk>\r\n{headers}From: EG <noreply@eg.dk>\r\n"
            f"To: kp@kommune.example\r\nSubject: Serviceaftale {n}\r\n"
            f"Message-ID: <{n}@check.test>\r\nDate: Mon, 05 Jan 2026 10:00:00 +0100\r\n\r\n"
            f"Body {n}\r\n").encode()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nobody listens once this socket is closed


@pytest.fixture
def mailbox(dovecot: Dovecot) -> tuple[Dovecot, str, str]:
    """A fresh user whose INBOX holds two mails stamped by the municipality's server."""
    user, password = dovecot.add_user()
    for n in (1, 2):
        dovecot.append(user, mail(n, f"{AUTHSERV_ID}; dkim=pass header.d=eg.dk; "
                                     "dmarc=pass header.from=eg.dk"))
    return dovecot, user, password


@pytest.fixture
def ws(make_workspace: MakeWs, smtp_server: SmtpTestServer,
       mailbox: tuple[Dovecot, str, str]) -> Workspace:
    return make_workspace(smtp=smtp_server, imap=mailbox)


# --------------------------------------------------------------------------- all good


def test_working_setup_passes_every_check(ws: Workspace, smtp_server: SmtpTestServer,
                                          mailbox: tuple[Dovecot, str, str]) -> None:
    report = run(ws)

    assert report.ok
    assert statuses(report, "smtp") == dict.fromkeys(
        ["password", "dns", "tcp", "starttls", "tls", "auth", "login"], "ok")
    assert statuses(report, "imap") == dict.fromkeys(
        ["password", "dns", "tcp", "tls", "auth", "login", "folder", "authserv_id"], "ok")
    assert statuses(report, "store") == dict.fromkeys(["directory", "state_file", "lock"], "ok")
    smtp, imap = results(report, "smtp"), results(report, "imap")
    assert smtp["tls"].detail.startswith("TLSv1.")
    assert "issued by 'mailtracker test CA'" in smtp["tls"].detail
    assert smtp["auth"].detail == "offered: LOGIN PLAIN XOAUTH2"
    assert "'INBOX': 2 messages, UIDVALIDITY" in imap["folder"].detail
    assert f"'{AUTHSERV_ID}' in 2 of the newest 2 messages" == imap["authserv_id"].detail
    text = format_check(report)
    assert f"SMTP 127.0.0.1:{smtp_server.port}\n  ✓ password" in text
    assert "  ✓ STARTTLS         offered" in text
    assert text.splitlines()[-1] == f"No problems found ({len(report.checks)} checks)."
    # Looking is all check does: no \Seen, no state file.
    server, user, _ = mailbox
    assert all("\\Seen" not in f for f in server.flags(user).values())
    assert not ws.store_path.exists()


def test_implicit_tls_smtp_and_starttls_imap_pass(make_workspace: MakeWs,
                                                  make_smtp_server: Callable[..., Any],
                                                  mailbox: tuple[Dovecot, str, str]) -> None:
    server, _user, _ = mailbox
    w = make_workspace(smtp=make_smtp_server(tls="implicit"), imap=mailbox)
    w.set("imap", tls="starttls", port=server.port_starttls)

    report = run(w)

    assert report.ok, format_check(report)
    assert "starttls" not in statuses(report, "smtp")
    assert statuses(report, "imap")["starttls"] == "ok"
    assert results(report, "imap")["tls"].detail.startswith("TLSv1.")


def test_json_has_one_entry_per_check(ws: Workspace) -> None:
    data = run(ws).to_json()

    json.dumps(data)  # serialisable as is
    assert data["ok"] is True
    assert set(data["groups"]) == {"smtp", "imap", "store"}
    assert all(set(c) == {"group", "name", "status", "detail", "fix"} for c in data["checks"])
    assert {c["status"] for c in data["checks"]} == {"ok"}


# --------------------------------------------------------------------------- login


def test_wrong_passwords_fail_login_and_are_never_shown(ws: Workspace) -> None:
    ws.environ.update({SMTP_PW_ENV: WRONG_PASSWORD, IMAP_PW_ENV: WRONG_PASSWORD})

    report = run(ws)

    assert not report.ok
    for group, env in (("smtp", SMTP_PW_ENV), ("imap", IMAP_PW_ENV)):
        login = results(report, group)["login"]
        assert login.status == "fail"
        assert "refused" in login.detail
        assert f"check [{group}] username" in login.fix and f"${env}" in login.fix
        assert statuses(report, group)["tls"] == "ok"  # the other probes still ran
    assert statuses(report, "imap")["folder"] == "skip"
    assert results(report, "imap")["folder"].detail == "skipped: needs login"
    output = format_check(report) + json.dumps(report.to_json())
    assert WRONG_PASSWORD not in output


def test_unset_password_variable_fails_with_its_name_and_skips_login(ws: Workspace) -> None:
    del ws.environ[SMTP_PW_ENV]

    report = run(ws)

    password = results(report, "smtp")["password"]
    assert password.status == "fail"
    assert f"environment variable {SMTP_PW_ENV} is not set" in password.detail
    assert password.fix == f"set {SMTP_PW_ENV} in the environment mailtracker runs in"
    assert statuses(report, "smtp")["tls"] == "ok"
    assert results(report, "smtp")["login"].detail == "skipped: needs the password"
    assert statuses(report, "imap")["login"] == "ok"


# --------------------------------------------------------------------------- TLS


def test_certificate_from_unknown_ca_fails_tls_and_sends_no_password(
        make_workspace: MakeWs, make_smtp_server: Callable[..., Any], other_ca: Any) -> None:
    server = make_smtp_server(cert_ca=other_ca)
    w = make_workspace(smtp=server)

    report = run(w)

    tls = results(report, "smtp")["tls"]
    assert tls.status == "fail"
    assert "certificate not accepted" in tls.detail
    assert "issued by 'mailtracker other CA'" in tls.detail
    assert tls.fix.startswith("set ca_file to the CA that signed it ('mailtracker other CA')")
    assert statuses(report, "smtp")["starttls"] == "ok"
    assert results(report, "smtp")["login"].detail == "skipped: needs TLS"
    assert server.auth_attempts == []
    assert "    " + " " * len("auth mechanisms") + "  fix: set ca_file" in format_check(report)


def test_imap_ca_file_of_another_ca_fails_tls(make_workspace: MakeWs,
                                              mailbox: tuple[Dovecot, str, str],
                                              other_ca: Any) -> None:
    w = make_workspace(imap=mailbox)
    w.set("imap", ca_file=str(other_ca.ca_file))

    report = run(w)

    imap = results(report, "imap")
    assert imap["tls"].status == "fail"
    assert "issued by 'mailtracker test CA'" in imap["tls"].detail
    assert f"ca_file is now {other_ca.ca_file}, a different CA" in imap["tls"].fix
    assert {imap[n].status for n in ("auth", "login", "folder", "authserv_id")} == {"skip"}


class _NamedCert:
    """A CA and a server certificate for ``mail.other.example`` only (not 127.0.0.1)."""

    def __init__(self, directory: Path) -> None:
        ca = trustme.CA(organization_name="mailtracker named CA")
        self.ca_file = directory / "named-ca.pem"
        ca.cert_pem.write_to_path(str(self.ca_file))
        self._leaf = ca.issue_cert("mail.other.example")

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._leaf.configure_cert(ctx)
        return ctx


def test_certificate_for_another_name_says_which(make_workspace: MakeWs,
                                                 make_smtp_server: Callable[..., Any],
                                                 tmp_path: Path) -> None:
    named = _NamedCert(tmp_path)
    w = make_workspace(smtp=make_smtp_server(cert_ca=named))
    w.set("smtp", ca_file=str(named.ca_file))

    tls = results(run(w), "smtp")["tls"]

    assert tls.status == "fail"
    assert tls.fix == ("the certificate is for mail.other.example, not 127.0.0.1: set host to "
                       "one of those names")


def test_certificate_expiring_soon_is_a_warning(ws: Workspace) -> None:
    report = run(ws, now=datetime(2999, 12, 25, tzinfo=UTC))  # trustme certs end 3000-01-01

    assert report.ok
    for group in ("smtp", "imap"):
        tls = results(report, group)["tls"]
        assert tls.status == "warn"
        assert "(7 days left)" in tls.detail
        assert tls.fix == ("the server's administrator must renew the certificate before "
                           "3000-01-01")


def test_server_without_starttls_fails_starttls_and_gets_no_password(
        make_workspace: MakeWs, make_smtp_server: Callable[..., Any]) -> None:
    plain = make_smtp_server(tls="none")
    w = make_workspace(smtp=plain)
    w.set("smtp", tls="starttls")

    report = run(w)

    smtp = results(report, "smtp")
    assert smtp["starttls"].status == "fail"
    assert smtp["starttls"].detail == "the server does not offer STARTTLS"
    assert smtp["tls"].detail == "skipped: needs STARTTLS"
    assert smtp["login"].status == "skip"
    assert plain.auth_attempts == []


def test_imap_server_without_starttls_fails_starttls(make_workspace: MakeWs,
                                                     dovecot_factory: Callable[..., Dovecot]
                                                     ) -> None:
    plain = dovecot_factory(starttls=False)
    user, password = plain.add_user()
    w = make_workspace(imap=(plain, user, password))
    w.set("imap", tls="starttls", port=plain.port_starttls)

    imap = results(run(w), "imap")

    assert imap["starttls"].status == "fail"
    assert imap["starttls"].fix.startswith("use the server's implicit-TLS port instead (993")
    assert [imap[n].detail for n in ("tls", "login", "folder")] == ["skipped: needs STARTTLS"] * 3


def test_implicit_tls_against_a_starttls_port_points_at_the_port(
        ws: Workspace) -> None:
    ws.set("smtp", tls="implicit")

    tls = results(run(ws), "smtp")["tls"]

    assert tls.status == "fail"
    assert tls.detail.startswith("TLS handshake failed")
    assert tls.fix == ("is the port right for tls = 'implicit' (587 with tls = \"starttls\", "
                       "465 with tls = \"implicit\")?")


# --------------------------------------------------------------------------- DNS, TCP


def test_closed_port_fails_tcp_and_skips_the_rest(ws: Workspace) -> None:
    ws.set("smtp", port=closed_port())
    ws.set("imap", port=closed_port())

    report = run(ws)

    for group, ports in (("smtp", "587 with tls"), ("imap", "993 with tls")):
        r = results(report, group)
        assert r["tcp"].status == "fail"
        assert "connection refused" in r["tcp"].detail
        assert f"is the port right ({ports}" in r["tcp"].fix
        later = [c for c in report.checks if c.group == group][3:]
        assert later and all(c.detail == "skipped: needs TCP" for c in later)
    assert statuses(report, "store")["lock"] == "ok"


def test_unresolvable_host_fails_dns(ws: Workspace) -> None:
    ws.set("smtp", host="no-such-host.invalid")
    ws.set("imap", host="no-such-host.invalid")

    report = run(ws)

    for group in ("smtp", "imap"):
        r = results(report, group)
        assert r["dns"].status == "fail"
        assert r["dns"].detail.startswith("cannot resolve no-such-host.invalid")
        assert r["dns"].fix == f"check the host name ([{group}] host)"
        assert r["tcp"].detail == "skipped: needs DNS"
        assert r["login"].detail == "skipped: needs DNS"


# --------------------------------------------------------------------------- IMAP folders


def test_missing_folder_fails_and_skips_authserv(ws: Workspace) -> None:
    ws.set("imap", folder="Findes-ikke")

    report = run(ws)

    folder = results(report, "imap")["folder"]
    assert folder.status == "fail"
    assert "Findes-ikke" in folder.detail
    assert "check [imap] folder ('Findes-ikke')" in folder.fix
    assert results(report, "imap")["authserv_id"].detail == "skipped: needs the folder"


def test_move_to_folder_missing_is_a_warning_then_ok(ws: Workspace,
                                                     mailbox: tuple[Dovecot, str, str]) -> None:
    ws.set("imap", post_action="move", move_to="Behandlet/EG")

    first = run(ws)
    server, user, _ = mailbox
    server.append(user, mail(3), folder="Behandlet/EG")
    second = run(ws)

    assert first.ok
    assert results(first, "imap")["move_to"].status == "warn"
    assert "created the first time" in results(first, "imap")["move_to"].fix
    assert results(second, "imap")["move_to"].detail == "'Behandlet/EG' exists"


# --------------------------------------------------------------------------- authserv_id


def test_wrong_authserv_id_fails_and_suggests_the_servers(make_workspace: MakeWs,
                                                          dovecot: Dovecot) -> None:
    user, password = dovecot.add_user()
    for n in range(3):  # the topmost header is the receiving server's; the lower is upstream
        dovecot.append(user, mail(n, f"{AUTHSERV_ID}; dkim=pass header.d=eg.dk",
                                  "mx.eg.dk; spf=pass smtp.mailfrom=eg.dk"))
    w = make_workspace(imap=(dovecot, user, password))
    w.set("trust", authserv_id="mx.forkert.example")

    report = run(w)

    check = results(report, "imap")["authserv_id"]
    assert not report.ok
    assert check.status == "fail"
    assert f"'{AUTHSERV_ID}' (3)" in check.detail
    assert check.fix == (f"your server writes authserv-id '{AUTHSERV_ID}' — set [trust] "
                         f'authserv_id = "{AUTHSERV_ID}"')


def test_only_newest_messages_decide_the_suggestion(make_workspace: MakeWs,
                                                    dovecot: Dovecot) -> None:
    user, password = dovecot.add_user()
    dovecot.bulk_load(user, [mail(n, "old-mx.kommune.example; spf=pass") for n in range(30)]
                      + [mail(n, "new-mx.kommune.example; spf=pass") for n in range(30, 50)])
    w = make_workspace(imap=(dovecot, user, password))
    w.set("trust", authserv_id="old-mx.kommune.example")

    check = results(run(w), "imap")["authserv_id"]

    assert check.status == "fail"
    assert "none of the newest 20 messages" in check.detail
    assert "'new-mx.kommune.example' (20)" in check.detail


def test_mail_without_authentication_results_warns_about_allowlist(
        make_workspace: MakeWs, dovecot: Dovecot) -> None:
    user, password = dovecot.add_user()
    dovecot.append(user, mail(1))
    w = make_workspace(imap=(dovecot, user, password))

    report = run(w)

    check = results(report, "imap")["authserv_id"]
    assert report.ok
    assert check.status == "warn"
    assert "none of the newest 1 messages has an Authentication-Results header" in check.detail
    assert 'sender_auth = "allowlist"' in check.fix and "anyone can forge" in check.fix


def test_empty_folder_warns_that_nothing_can_be_learned(make_workspace: MakeWs,
                                                        dovecot: Dovecot) -> None:
    w = make_workspace(imap=(dovecot, *dovecot.add_user()))

    check = results(run(w), "imap")["authserv_id"]

    assert check.status == "warn"
    assert "the folder is empty" in check.detail


def test_allowlist_mode_with_authentication_results_suggests_dmarc(ws: Workspace) -> None:
    ws.set("trust", sender_auth="allowlist")

    check = results(run(ws), "imap")["authserv_id"]

    assert check.status == "warn"
    assert check.fix == f'set [trust] sender_auth = "dmarc" and authserv_id = "{AUTHSERV_ID}"'


def test_authserv_ids_reads_the_id_of_each_header_topmost_first() -> None:
    raw = (b"Authentication-Results: MX.Kommune.example (Postfix 3.7)\r\n"
           b"  1; dkim=pass header.d=eg.dk\r\n"
           b"Authentication-Results: mx.eg.dk; none\r\n"
           b"Authentication-Results: spf=pass (sender IP is 192.0.2.1)\r\n"
           b" smtp.mailfrom=eg.dk; dkim=none\r\n"
           b"Subject: x\r\n\r\n")

    assert authserv_ids(raw) == ["mx.kommune.example", "mx.eg.dk", ""]
    assert authserv_ids(b"Subject: none\r\n\r\n") == []
    assert authserv_ids(b"\x00\xff garbage") == []


# --------------------------------------------------------------------------- store


def test_store_in_an_impossible_directory_fails(make_workspace: MakeWs) -> None:
    w = make_workspace()
    blocker = w.root / "not-a-directory"
    blocker.write_text("a regular file\n")
    w.set("store", path=str(blocker / "mailtracker.json"))

    report = run(w)

    directory = results(report, "store")["directory"]
    assert directory.status == "fail"
    assert f"cannot create a file in {blocker}: Not a directory" == directory.detail
    assert "set [store] path" in directory.fix


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a mode-0500 directory anyway; "
                    "test_store_in_an_impossible_directory_fails covers the failure as root")
def test_store_in_a_read_only_directory_fails(make_workspace: MakeWs) -> None:
    w = make_workspace()
    read_only = w.root / "ro"
    read_only.mkdir(mode=0o500)
    w.set("store", path=str(read_only / "mailtracker.json"))
    try:
        directory = results(run(w), "store")["directory"]
    finally:
        read_only.chmod(0o700)

    assert directory.status == "fail"
    assert "Permission denied" in directory.detail


def test_corrupt_state_file_fails_and_is_left_alone(make_workspace: MakeWs) -> None:
    w = make_workspace()
    w.store_path.write_text('{"recipients": {"1": ')

    report = run(w)

    state = results(report, "store")["state_file"]
    assert state.status == "fail"
    assert "not valid JSON" in state.detail
    assert results(report, "store")["lock"].detail == "skipped: needs a readable state file"
    assert w.store_path.read_text() == '{"recipients": {"1": '


def test_existing_state_file_is_read_and_a_held_lock_fails(make_workspace: MakeWs) -> None:
    w = make_workspace()
    w.cli("recipients", "add", "--role", "finance", "--name", "Økonomi",
          "--email", "oekonomi@kommune.example")
    before = w.store_path.read_bytes()

    free = run(w)
    with filelock.FileLock(str(w.store_path) + ".lock"):
        held = run(w)

    assert results(free, "store")["state_file"].detail == \
        f"schema version {SCHEMA_VERSION}, 1 recipient(s)"
    assert results(free, "store")["lock"].status == "ok"
    lock = results(held, "store")["lock"]
    assert lock.status == "fail"
    assert lock.fix.endswith(f"fuser {w.store_path}.lock")
    assert w.store_path.read_bytes() == before


# --------------------------------------------------------------------------- config


def test_missing_sections_are_warnings_not_failures(make_workspace: MakeWs) -> None:
    report = run(make_workspace())

    assert report.ok
    assert [(c.group, c.name, c.status) for c in report.checks[:2]] == [
        ("smtp", "config", "warn"), ("imap", "config", "warn")]
    text = format_check(report)
    assert "  ! config      not configured (no [smtp] section): 'notify' cannot send mail" in text
    assert text.splitlines()[-1] == f"No problems found ({len(report.checks)} checks, " \
                                    "2 warning(s))."


def test_failure_summary_counts_problems(ws: Workspace) -> None:
    ws.set("imap", folder="Findes-ikke")

    text = format_check(run(ws))

    assert "  ✗ folder" in text
    assert "  - authserv_id" in text
    assert text.splitlines()[-1].startswith("1 problem(s) (✗), 0 warning(s) (!), 1 skipped")


# --------------------------------------------------------------------------- CLI

wired = pytest.mark.skipif("check" not in getattr(main, "commands", {}),
                           reason="the check command is not in cli.py yet")


@wired
def test_cli_check_exits_zero_when_all_is_well(ws: Workspace) -> None:
    result = ws.cli("check")

    assert result.exit_code == 0, result.output
    assert "No problems found" in result.output


@wired
def test_cli_check_fails_with_exit_10_and_json(ws: Workspace) -> None:
    ws.environ[IMAP_PW_ENV] = WRONG_PASSWORD

    text = ws.cli("check")
    as_json = ws.cli("check", "--json")

    assert text.exit_code == 10
    assert "✗ login" in text.output
    assert as_json.exit_code == 10
    data = json.loads(as_json.stdout)
    assert data["ok"] is False
    assert {"group": "imap", "name": "login", "status": "fail"}.items() <= next(
        c for c in data["checks"] if c["name"] == "login" and c["group"] == "imap").items()
    assert WRONG_PASSWORD not in text.output + as_json.output
