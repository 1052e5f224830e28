"""SmtpSession against a real aiosmtpd server on loopback (tests/plugins/smtpd.py).

Each test asserts what a user would see: the exception and its one-line message, and what
the server actually received (messages, AUTH attempts, commands).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import socket
from collections.abc import Callable, Coroutine, Iterator, Sequence
from email.message import EmailMessage
from email.utils import make_msgid
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from mailtracker.errors import (
    InvalidInputError,
    SmtpAuthError,
    SmtpError,
    SmtpTimeoutError,
    SmtpTlsError,
)
from mailtracker.outbound.smtp import (
    RecipientRefusal,
    SendOutcome,
    SmtpPermanentFailure,
    SmtpSession,
    SmtpTemporaryFailure,
    SmtpUnknownOutcome,
)
from mailtracker.settings.config import SmtpSettings
from tests.plugins.smtpd import DELIVER_AND_DROP, DROP, HOLD, SmtpTestServer

if TYPE_CHECKING:
    from tests.plugins.tlsca import TestCA

T = TypeVar("T")
MakeServer = Callable[..., SmtpTestServer]

ALICE = "alice@kommune.example"
BOB = "bob@kommune.example"
# Short enough to keep the suite fast; the server holds its reply until released (or 30 s),
# so the client's timeout always fires first, however slow the machine.
SHORT_TIMEOUT = 1.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def message(subject: str = "Orientering: serviceaftale fra EG", to: str = ALICE,
            body: str = "Kære modtager\n\nEG sender en serviceaftale til underskrift.\n",
            ) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "KP-systemansvarlig <kp-ejer@kommune.example>"
    msg["To"] = to
    msg["Subject"] = subject
    msg["Message-ID"] = make_msgid(domain="kommune.example")
    msg.set_content(body)
    return msg


def send_one(settings: SmtpSettings, password: str | None, msg: EmailMessage,
             recipients: Sequence[str] = (ALICE,)) -> SendOutcome:
    async def go() -> SendOutcome:
        async with SmtpSession(settings, password) as session:
            return await session.send(msg, recipients)
    return run(go())


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


# -- TLS and login -----------------------------------------------------------------------------


def test_sends_over_starttls_after_login(smtp_server: SmtpTestServer) -> None:
    msg = message()
    outcome = send_one(smtp_server.settings(), smtp_server.password, msg)

    assert outcome.accepted == (ALICE,)
    assert outcome.refused == ()
    [got] = smtp_server.messages
    assert got.mail_from == "kp-ejer@kommune.example"
    assert got.rcpt_tos == (ALICE,)
    assert got.over_tls and got.login == smtp_server.username
    assert got.message["Subject"] == "Orientering: serviceaftale fra EG"
    assert got.message["Message-ID"] == msg["Message-ID"]
    assert got.message.get_content() == (
        "Kære modtager\n\nEG sender en serviceaftale til underskrift.\n")
    verbs = smtp_server.verbs
    assert verbs.index("STARTTLS") < verbs.index("AUTH") < verbs.index("MAIL")
    assert [a.success for a in smtp_server.auth_attempts] == [True]
    assert all(c.over_tls for c in smtp_server.commands if c.verb == "AUTH")
    assert verbs[-1] == "QUIT"


def test_sends_over_implicit_tls(make_smtp_server: MakeServer) -> None:
    server = make_smtp_server(tls="implicit")
    send_one(server.settings(), server.password, message())

    assert len(server.messages) == 1
    assert all(c.over_tls for c in server.commands)
    assert "STARTTLS" not in server.verbs


def test_starttls_not_offered_fails_and_password_never_sent(make_smtp_server: MakeServer
                                                            ) -> None:
    server = make_smtp_server(tls="none")  # offers AUTH in clear, but no STARTTLS

    with pytest.raises(SmtpTlsError) as info:
        send_one(server.settings(tls="starttls"), server.password, message())

    assert str(info.value) == (f"server 127.0.0.1:{server.port} does not offer STARTTLS; "
                               "refusing to send the password in clear")
    assert "AUTH" not in server.verbs
    assert server.auth_attempts == []
    assert server.messages == []


def test_recorder_does_see_auth_sent_in_clear(make_smtp_server: MakeServer) -> None:
    # The control for the test above: when a client does send AUTH in clear (here because
    # the config explicitly says tls = "none" for this loopback server), the server records it.
    server = make_smtp_server(tls="none")
    send_one(server.settings(tls="none"), server.password, message())

    assert [(a.success, a.over_tls) for a in server.auth_attempts] == [(True, False)]


def test_starttls_refused_by_server_fails_and_password_never_sent(
        smtp_server: SmtpTestServer) -> None:
    smtp_server.faults.on_command("STARTTLS", "454 4.7.0 TLS not available due to local problem")

    with pytest.raises(SmtpTlsError, match=r"refused STARTTLS \(454 4\.7\.0"):
        send_one(smtp_server.settings(), smtp_server.password, message())

    assert "AUTH" not in smtp_server.verbs


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_certificate_from_unknown_ca_is_refused(make_smtp_server: MakeServer, other_ca: TestCA,
                                                tls: str) -> None:
    server = make_smtp_server(tls=tls, cert_ca=other_ca)

    with pytest.raises(SmtpTlsError) as info:
        send_one(server.settings(), server.password, message())

    text = str(info.value)
    assert f"127.0.0.1:{server.port}" in text and "certificate" in text
    assert "\n" not in text
    assert server.auth_attempts == [] and "AUTH" not in server.verbs
    assert server.messages == []


def test_unreadable_ca_file_is_a_tls_error(smtp_server: SmtpTestServer, tmp_path: Any) -> None:
    with pytest.raises(SmtpTlsError, match="cannot load CA file"):
        send_one(smtp_server.settings(ca_file=tmp_path / "missing.pem"), smtp_server.password,
                 message())
    assert smtp_server.commands == []


def test_wrong_password_is_an_auth_error_that_hides_the_password(smtp_server: SmtpTestServer
                                                                 ) -> None:
    wrong = "forkert-kodeord-123"
    with pytest.raises(SmtpAuthError) as info:
        send_one(smtp_server.settings(), wrong, message())

    assert str(info.value).startswith(f"127.0.0.1:{smtp_server.port} refused the login for "
                                      f"'{smtp_server.username}': 535")
    for exc in exception_chain(info.value):
        assert wrong not in str(exc) and wrong not in repr(exc)
    assert smtp_server.auth_attempts and not any(a.success for a in smtp_server.auth_attempts)
    assert "MAIL" not in smtp_server.verbs


def test_password_is_not_logged(smtp_server: SmtpTestServer,
                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    send_one(smtp_server.settings(), smtp_server.password, message())
    with pytest.raises(SmtpAuthError):
        send_one(smtp_server.settings(), smtp_server.password + "x", message())

    plain = f"\0{smtp_server.username}\0{smtp_server.password}".encode()
    assert smtp_server.password not in caplog.text
    assert base64.b64encode(plain).decode() not in caplog.text


def test_session_repr_hides_the_password(smtp_server: SmtpTestServer) -> None:
    session = SmtpSession(smtp_server.settings(), smtp_server.password)
    assert smtp_server.password not in repr(session)


def test_user_without_password_fails_before_auth(smtp_server: SmtpTestServer) -> None:
    with pytest.raises(SmtpAuthError, match="no password given"):
        send_one(smtp_server.settings(), None, message())
    assert "AUTH" not in smtp_server.verbs


def test_oauth2_token_logs_in_with_xoauth2(smtp_server: SmtpTestServer) -> None:
    send_one(smtp_server.settings(auth="oauth2"), smtp_server.token, message())

    assert [(a.mechanism, a.success) for a in smtp_server.auth_attempts] == [("XOAUTH2", True)]
    assert len(smtp_server.messages) == 1


def test_connection_refused_names_host_and_port() -> None:
    with socket.socket() as reserved:  # bound but not listening: connections are refused
        reserved.bind(("127.0.0.1", 0))
        port = reserved.getsockname()[1]
        settings = _offline_settings("127.0.0.1", port)
        with pytest.raises(SmtpError) as info:
            send_one(settings, "x", message())

    assert str(info.value).startswith(f"cannot connect to 127.0.0.1:{port}: ")
    assert "\n" not in str(info.value)


def test_unknown_host_names_the_host() -> None:
    settings = _offline_settings("smtp.mailtracker-test.invalid", 587)
    with pytest.raises(SmtpError) as info:
        send_one(settings, "x", message())

    assert "smtp.mailtracker-test.invalid:587" in str(info.value)


def test_silent_server_times_out() -> None:
    with socket.socket() as silent:  # accepts TCP, never sends a greeting
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        with pytest.raises(SmtpTimeoutError) as info:
            send_one(_offline_settings("127.0.0.1", port, timeout=SHORT_TIMEOUT), "x",
                     message())

    assert str(info.value) == f"127.0.0.1:{port} did not answer within 1 s"


def _offline_settings(host: str, port: int, timeout: float = 5.0) -> SmtpSettings:
    from mailtracker.settings.config import SecretSource

    return SmtpSettings(host=host, port=port, tls="starttls", username="u", secret=SecretSource(),
                        ca_file=None, from_address="kp-ejer@kommune.example", from_name="KP",
                        timeout=timeout)


# -- one transaction, phase by phase -----------------------------------------------------------


def test_partial_refusal_delivers_to_the_others(smtp_server: SmtpTestServer) -> None:
    smtp_server.faults.on_rcpt(BOB, "550 5.1.1 <bob@kommune.example>: Recipient unknown")

    outcome = send_one(smtp_server.settings(), smtp_server.password, message(), [ALICE, BOB])

    assert outcome.accepted == (ALICE,)
    assert outcome.refused == (
        RecipientRefusal(BOB, 550, "5.1.1 <bob@kommune.example>: Recipient unknown"),)
    assert not outcome.refused[0].temporary
    [got] = smtp_server.messages
    assert got.rcpt_tos == (ALICE,)


def test_all_recipients_refused_permanently_then_same_connection_sends_next(
        smtp_server: SmtpTestServer) -> None:
    smtp_server.faults.on_rcpt(ALICE, "550 5.1.1 Recipient unknown")
    smtp_server.faults.on_rcpt(BOB, "553 5.1.3 Bad address syntax")
    third = "carl@kommune.example"

    async def go() -> tuple[SmtpPermanentFailure, SendOutcome]:
        async with SmtpSession(smtp_server.settings(), smtp_server.password) as session:
            with pytest.raises(SmtpPermanentFailure) as info:
                await session.send(message(), [ALICE, BOB])
            return info.value, await session.send(message(to=third), [third])

    failure, outcome = run(go())

    assert (failure.phase, failure.code) == ("RCPT", 550)
    assert [(r.address, r.code) for r in failure.refused] == [(ALICE, 550), (BOB, 553)]
    assert outcome.accepted == (third,)
    assert [m.rcpt_tos for m in smtp_server.messages] == [(third,)]
    assert "RSET" in smtp_server.verbs
    assert {c.connection for c in smtp_server.commands} == {1}


def test_421_at_rcpt_fails_the_whole_message_and_next_send_reconnects(
        smtp_server: SmtpTestServer) -> None:
    smtp_server.faults.on_rcpt(BOB, "421 4.3.2 Service shutting down", times=1)

    async def go() -> tuple[SmtpTemporaryFailure, SendOutcome]:
        async with SmtpSession(smtp_server.settings(), smtp_server.password) as session:
            with pytest.raises(SmtpTemporaryFailure) as info:
                await session.send(message(), [ALICE, BOB])
            return info.value, await session.send(message(), [ALICE, BOB])

    failure, outcome = run(go())

    assert (failure.phase, failure.code) == ("RCPT", 421)
    assert outcome.accepted == (ALICE, BOB)
    assert len(smtp_server.messages) == 1
    assert {c.connection for c in smtp_server.commands} == {1, 2}


def test_all_recipients_refused_temporarily_is_temporary_and_retry_delivers(
        smtp_server: SmtpTestServer) -> None:
    smtp_server.faults.on_rcpt(ALICE, "450 4.2.1 Mailbox busy, try later", times=1)
    msg = message()

    async def go() -> tuple[SmtpTemporaryFailure, SendOutcome]:
        async with SmtpSession(smtp_server.settings(), smtp_server.password) as session:
            with pytest.raises(SmtpTemporaryFailure) as info:
                await session.send(msg, [ALICE])
            return info.value, await session.send(msg, [ALICE])

    failure, outcome = run(go())

    assert (failure.phase, failure.code) == ("RCPT", 450)
    assert failure.refused[0].temporary
    assert outcome.accepted == (ALICE,)
    assert [m.message["Message-ID"] for m in smtp_server.messages] == [msg["Message-ID"]]


@pytest.mark.parametrize(("reply", "error"), [
    ("451 4.3.0 Temporary local problem", SmtpTemporaryFailure),
    ("553 5.7.1 Sender address rejected: not owned by user", SmtpPermanentFailure),
])
def test_sender_refused_at_mail(smtp_server: SmtpTestServer, reply: str,
                                error: type[Exception]) -> None:
    smtp_server.faults.on_command("MAIL", reply)

    with pytest.raises(error) as info:
        send_one(smtp_server.settings(), smtp_server.password, message())

    assert info.value.phase == "MAIL"  # type: ignore[attr-defined]
    assert info.value.code == int(reply[:3])  # type: ignore[attr-defined]
    assert reply[4:] in str(info.value)
    assert smtp_server.messages == []


def test_data_4xx_is_temporary_and_retry_delivers_exactly_once(
        smtp_server: SmtpTestServer) -> None:
    smtp_server.faults.after_data("451 4.3.0 Queue file write error", times=1)
    msg = message()

    async def go() -> SmtpTemporaryFailure:
        async with SmtpSession(smtp_server.settings(), smtp_server.password) as session:
            with pytest.raises(SmtpTemporaryFailure) as info:
                await session.send(msg, [ALICE])
            await session.send(msg, [ALICE])
            return info.value

    failure = run(go())

    assert (failure.phase, failure.code) == ("end of DATA", 451)
    assert len(smtp_server.messages) == 1


def test_data_5xx_is_permanent_with_the_servers_reply(smtp_server: SmtpTestServer) -> None:
    smtp_server.faults.after_data("554 5.6.0 Message content rejected")

    with pytest.raises(SmtpPermanentFailure) as info:
        send_one(smtp_server.settings(), smtp_server.password, message())

    assert info.value.code == 554
    assert info.value.reply == "5.6.0 Message content rejected"
    assert str(info.value) == (f"127.0.0.1:{smtp_server.port} refused the message at end of DATA: "
                               "554 5.6.0 Message content rejected")
    assert smtp_server.messages == []


def test_data_command_refused_before_payload_is_temporary(smtp_server: SmtpTestServer) -> None:
    smtp_server.faults.on_command("DATA", "452 4.3.1 Insufficient system storage")

    with pytest.raises(SmtpTemporaryFailure) as info:
        send_one(smtp_server.settings(), smtp_server.password, message())

    assert (info.value.phase, info.value.code) == ("DATA", 452)
    assert smtp_server.messages == []


def test_link_lost_before_payload_is_temporary_and_next_send_reconnects(
        smtp_server: SmtpTestServer) -> None:
    smtp_server.faults.on_command("DATA", DROP, times=1)
    msg = message()

    async def go() -> SmtpTemporaryFailure:
        async with SmtpSession(smtp_server.settings(), smtp_server.password) as session:
            with pytest.raises(SmtpTemporaryFailure) as info:
                await session.send(msg, [ALICE])
            assert not session.is_connected
            await session.send(msg, [ALICE])
            return info.value

    failure = run(go())

    assert (failure.phase, failure.code) == ("DATA", None)
    assert len(smtp_server.messages) == 1
    assert {c.connection for c in smtp_server.commands} == {1, 2}


def test_timeout_waiting_for_354_is_temporary(smtp_server: SmtpTestServer) -> None:
    smtp_server.faults.on_command("DATA", HOLD, times=1)

    with pytest.raises(SmtpTemporaryFailure) as info:
        send_one(smtp_server.settings(timeout=SHORT_TIMEOUT), smtp_server.password, message())

    assert str(info.value) == (f"127.0.0.1:{smtp_server.port} did not take the message at "
                               "DATA: timed out after 1 s")
    assert smtp_server.messages == []


def test_late_250_is_unknown_outcome_and_the_message_was_delivered(
        smtp_server: SmtpTestServer) -> None:
    # The measured hazard: the server stores the message but answers after the client's
    # timeout. A retry would deliver a second copy, so the outcome must be "unknown".
    smtp_server.faults.after_data(HOLD, times=1)
    first, second = message(), message(subject="Næste orientering")

    async def go() -> SmtpUnknownOutcome:
        settings = smtp_server.settings(timeout=SHORT_TIMEOUT)
        async with SmtpSession(settings, smtp_server.password) as session:
            with pytest.raises(SmtpUnknownOutcome) as info:
                await session.send(first, [ALICE])
            await session.send(second, [ALICE])
            return info.value

    unknown = run(go())

    assert unknown.phase == "end of DATA" and unknown.code is None
    assert "may have been delivered" in str(unknown)
    assert [m.message["Message-ID"] for m in smtp_server.messages] == [
        first["Message-ID"], second["Message-ID"]]


@pytest.mark.parametrize(("action", "delivered"), [(DELIVER_AND_DROP, 1), (DROP, 0)])
def test_link_lost_after_payload_is_unknown_outcome(smtp_server: SmtpTestServer, action: Any,
                                                    delivered: int) -> None:
    smtp_server.faults.after_data(action)

    with pytest.raises(SmtpUnknownOutcome):
        send_one(smtp_server.settings(), smtp_server.password, message())

    assert len(smtp_server.messages) == delivered


# -- the message on the wire -------------------------------------------------------------------


def test_message_goes_out_with_crlf_dot_stuffing_and_without_smtputf8(
        smtp_server: SmtpTestServer) -> None:
    body = "Hej Søren\n.\n..to punktummer\n.punktum først\nÆrø-Åse\n"
    msg = message(subject="Vejledning til opsætning af eFaktura – ØS Indsigt", body=body)

    send_one(smtp_server.settings(), smtp_server.password, msg)

    [got] = smtp_server.messages
    assert got.message.get_content() == body
    assert got.message["Subject"] == "Vejledning til opsætning af eFaktura – ØS Indsigt"
    assert got.raw.count(b"\n") == got.raw.count(b"\r\n")
    assert b"Subject: Vejledning" in got.raw  # RFC 2047-encoded, not raw UTF-8
    assert "SMTPUTF8" not in got.mail_options  # the server offers it; we do not need it
    assert "BODY=8BITMIME" in got.mail_options
    assert any(o.startswith("SIZE=") for o in got.mail_options)


def test_bcc_header_is_not_transmitted(smtp_server: SmtpTestServer) -> None:
    msg = message()
    msg["Bcc"] = BOB

    send_one(smtp_server.settings(), smtp_server.password, msg, [ALICE, BOB])

    [got] = smtp_server.messages
    assert got.rcpt_tos == (ALICE, BOB)
    assert b"bob@" not in got.raw
    assert msg["Bcc"] == BOB  # the caller's message is left alone


def test_message_without_message_id_is_refused_before_sending(smtp_server: SmtpTestServer
                                                              ) -> None:
    msg = message()
    del msg["Message-ID"]

    with pytest.raises(InvalidInputError, match="Message-ID"):
        send_one(smtp_server.settings(), smtp_server.password, msg)

    assert "MAIL" not in smtp_server.verbs


def test_bad_recipient_is_refused_before_sending(smtp_server: SmtpTestServer) -> None:
    with pytest.raises(InvalidInputError, match="recipient"):
        send_one(smtp_server.settings(), smtp_server.password, message(),
                 [ALICE, "bob@kommune.example\r\nRCPT TO:<evil@example.org>"])

    assert "MAIL" not in smtp_server.verbs
