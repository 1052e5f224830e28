"""Security end to end, as a user runs the program (``python -m mailtracker …``):

* secrets never reach stdout, stderr, ``--debug`` logs, tracebacks, the state file, lock
  files or ``config show`` — whether they come from an environment variable or a
  ``password_command``;
* a config file holding a secret is refused by every command, and never echoed (a file that
  is readable by others and holds *no* secret is fine);
* a man in the middle who strips STARTTLS gets no password, on SMTP and on IMAP;
* an expired certificate, or one for another host, is refused on SMTP and on IMAP.

The adapters' own TLS tests (tests/test_smtp.py, tests/test_imap.py) cover servers that do
not offer STARTTLS and certificates from an unknown CA; these cover what they do not.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.inbound_mail import eml
from tests.plugins.dovecot import Dovecot
from tests.plugins.smtpd import SmtpTestServer, start_smtp_server
from tests.plugins.tlsca import TestCA as CertFiles
from tests.plugins.workspace import IMAP_PW_ENV, SMTP_PW_ENV, THREE, Workspace

REPO = Path(__file__).resolve().parents[1]
IMAP_SECRET = "S3cret-imap-ÆØÅ-zebra"
MakeWs = Callable[..., Workspace]


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout + self.stderr


def run(ws: Workspace, *args: str, debug: bool = True, env: dict[str, str] | None = None,
        timeout: float = 120) -> Run:
    """``python -m mailtracker [--debug] --config … ARGS`` in a subprocess."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MAILTRACKER_")}
    full_env.update(ws.environ, PYTHONPATH=str(REPO), **(env or {}))
    argv = [sys.executable, "-m", "mailtracker", *(["--debug"] if debug else []),
            "--config", str(ws.config_path), *args]
    proc = subprocess.run(argv, capture_output=True, text=True, env=full_env, cwd=REPO,
                          timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    return Run(proc.returncode, proc.stdout, proc.stderr)


def assert_no_secret(where: str, text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, f"a secret appears in {where}"


def files_under(root: Path) -> Iterator[Path]:
    return (p for p in root.rglob("*") if p.is_file())


@pytest.fixture
def setup(dovecot: Dovecot, smtp_server: SmtpTestServer, make_workspace: MakeWs
          ) -> tuple[Workspace, Dovecot, str]:
    user, _ = dovecot.add_user(password=IMAP_SECRET)
    ws = make_workspace(smtp=smtp_server, imap=(dovecot, user, IMAP_SECRET))
    ws.add_recipients(THREE)
    return ws, dovecot, user


# --- secrets in output, tracebacks and files -----------------------------------------------

def test_debug_run_of_every_command_never_shows_a_secret(setup: tuple[Workspace, Dovecot, str],
                                                         smtp_server: SmtpTestServer) -> None:
    ws, dovecot, user = setup
    secrets = (smtp_server.password, IMAP_SECRET)
    dovecot.append(user, eml("agreement-eg-pdf.eml"))
    outputs = {" ".join(args): run(ws, *args) for args in [
        ("notify",), ("poll",), ("status",), ("status", "--json"), ("check",),
        ("config", "show"), ("config", "show", "--json"), ("review",),
        ("notify", "--resend", "--to", THREE[0][2])]}
    for name, result in outputs.items():
        assert result.code == 0, f"{name}: {result.text}"
        assert_no_secret(f"'{name}' output", result.text, *secrets)
    for path in files_under(ws.config_path.parent):
        assert_no_secret(str(path), path.read_bytes().decode("utf-8", "replace"), *secrets)


def test_password_command_output_never_shows_up(setup: tuple[Workspace, Dovecot, str],
                                                tmp_path: Path) -> None:
    ws, _dovecot, _user = setup
    script = tmp_path / "pass-show"
    script.write_text(f"#!/bin/sh\nprintf '%s\\n' '{IMAP_SECRET}'\n", encoding="utf-8")
    script.chmod(0o700)
    imap = ws.sections["imap"]
    imap.pop("password_env")
    ws.set("imap", password_command=str(script))
    for args in [("poll",), ("check",), ("config", "show")]:
        result = run(ws, *args)
        assert result.code == 0, result.text
        assert_no_secret(" ".join(args), result.text, IMAP_SECRET)
    assert str(script) in run(ws, "config", "show").stdout  # where it comes from: shown


@pytest.mark.parametrize("section", ["smtp", "imap"])
def test_tracebacks_of_a_refused_login_never_show_a_password(
        setup: tuple[Workspace, Dovecot, str], smtp_server: SmtpTestServer,
        section: str) -> None:
    ws, _dovecot, _user = setup
    wrong = "Wr0ng-but-secret-" + section
    variable = SMTP_PW_ENV if section == "smtp" else IMAP_PW_ENV
    command = "notify" if section == "smtp" else "poll"
    loud = run(ws, command, env={variable: wrong})
    quiet = run(ws, command, env={variable: wrong}, debug=False)
    assert quiet.code == 13, quiet.text  # login refused, one line
    assert "Traceback" in loud.stderr and "Traceback" not in quiet.stderr
    for result in (loud, quiet):
        assert_no_secret("the error", result.text, wrong, smtp_server.password, IMAP_SECRET)


def test_watch_debug_log_through_reconnects_never_shows_a_password(
        setup: tuple[Workspace, Dovecot, str], tcp_proxy: Any, tmp_path: Path) -> None:
    ws, dovecot, user = setup
    proxy = tcp_proxy(dovecot.host, dovecot.port_tls)
    ws.set("imap", port=proxy.port, timeout=2, watch_interval=2)
    log = tmp_path / "watch.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MAILTRACKER_")}
    env.update(ws.environ, PYTHONPATH=str(REPO))
    with log.open("wb") as err:
        watch = subprocess.Popen([sys.executable, "-m", "mailtracker", "--debug", "--config",
                                  str(ws.config_path), "watch"], env=env, cwd=REPO,
                                 stdout=err, stderr=err, stdin=subprocess.DEVNULL)
    try:
        _wait_for(lambda: log.read_text(errors="replace").count("watching for new mail") >= 1)
        proxy.cut()
        _wait_for(lambda: log.read_text(errors="replace").count("watching for new mail") >= 2)
        dovecot.append(user, eml("guide-eg.eml"))
        _wait_for(lambda: "milestone reached" in log.read_text(errors="replace"))
    finally:
        watch.terminate()
        watch.wait(30)
    text = log.read_text(errors="replace")
    assert "reconnecting in" in text
    assert_no_secret("the watch log", text, IMAP_SECRET)
    assert IMAP_SECRET.encode() not in proxy.client_bytes  # TLS: not even on the wire


def _wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll an observable condition (a log line); not a fixed sleep."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# --- config files holding secrets ----------------------------------------------------------

@pytest.mark.parametrize(("mode", "key", "readable"), [
    (0o644, "smtp.password", True), (0o640, "imap.password", True),
    (0o600, "smtp.password", False), (0o644, "oauth2.client_secret", True),
])
def test_config_file_with_a_secret_is_refused_by_every_command(
        make_workspace: MakeWs, smtp_server: SmtpTestServer, mode: int, key: str,
        readable: bool) -> None:
    ws = make_workspace(smtp=smtp_server)
    section, name = key.split(".")
    secret = "Hunter2-in-the-file"
    ws.sections.setdefault(section, {})[name] = secret
    if section == "oauth2":
        ws.sections["oauth2"].update(tenant_id="kommune.onmicrosoft.com", client_id="abc")
    ws.write()
    ws.config_path.chmod(mode)
    for args in [("config", "show"), ("status",), ("notify",), ("poll",)]:
        for debug in (False, True):
            result = run(ws, *args, debug=debug)
            assert result.code == 3, result.text  # the named exit code, with --debug too
            assert ("Traceback (most recent call last)" in result.text) is debug
            assert key in result.text and "secrets do not belong" in result.text
            assert ("readable by other users" in result.text) is readable
            assert_no_secret(f"'{' '.join(args)}' refusal", result.text, secret)


def test_config_readable_by_others_without_secrets_is_accepted(
        make_workspace: MakeWs, smtp_server: SmtpTestServer) -> None:
    ws = make_workspace(smtp=smtp_server)
    ws.config_path.chmod(0o644)  # only the *name* of the variable is in the file
    result = run(ws, "config", "show", debug=False)
    assert result.code == 0, result.text
    assert SMTP_PW_ENV in result.stdout


# --- TLS: downgrade and bad certificates ---------------------------------------------------

class StartTlsStripper:
    """A man in the middle that hides STARTTLS from the server's capability lists and
    records what the client sends."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.client_bytes = bytearray()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(self.target)
                self._sockets += [client, upstream]
                threading.Thread(target=self._pump, args=(upstream, client, True),
                                 daemon=True).start()
                threading.Thread(target=self._pump, args=(client, upstream, False),
                                 daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if from_server:
                    data = data.replace(b"STARTTLS", b"XSTRIPPD")  # same length
                else:
                    self.client_bytes += data
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        for s in (self.listener, *self._sockets):
            with contextlib.suppress(OSError):
                s.close()


@pytest.fixture
def stripper() -> Iterator[Callable[[str, int], StartTlsStripper]]:
    made: list[StartTlsStripper] = []

    def make(host: str, port: int) -> StartTlsStripper:
        made.append(StartTlsStripper((host, port)))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_stripped_starttls_on_smtp_sends_no_password(
        setup: tuple[Workspace, Dovecot, str], smtp_server: SmtpTestServer,
        stripper: Callable[[str, int], StartTlsStripper]) -> None:
    ws, _dovecot, _user = setup
    mitm = stripper(smtp_server.host, smtp_server.port)
    ws.set("smtp", port=mitm.port, tls="starttls")
    result = run(ws, "notify", debug=False)
    assert result.code == 6 and "STARTTLS" in result.text, result.text
    assert b"AUTH" not in bytes(mitm.client_bytes) and b"MAIL FROM" not in mitm.client_bytes
    assert smtp_server.messages == [] and smtp_server.auth_attempts == []


def test_stripped_starttls_on_imap_sends_no_password(
        setup: tuple[Workspace, Dovecot, str], dovecot: Dovecot,
        stripper: Callable[[str, int], StartTlsStripper]) -> None:
    ws, _dovecot, _user = setup
    mitm = stripper(dovecot.host, dovecot.port_starttls)
    ws.set("imap", port=mitm.port, tls="starttls")
    result = run(ws, "poll", debug=False)
    assert result.code == 7 and "STARTTLS" in result.text, result.text
    sent = bytes(mitm.client_bytes).upper()
    assert b"LOGIN" not in sent and b"AUTHENTICATE" not in sent
    assert IMAP_SECRET.encode() not in bytes(mitm.client_bytes)


def _bad_certs(tmp_path: Path) -> tuple[CertFiles, dict[str, CertFiles]]:
    """A CA the client trusts, and servers' certificates from it that must be refused."""
    ca = trustme.CA(organization_name="mailtracker security-test CA")
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    leaves = {
        "expired": ca.issue_cert("localhost", "127.0.0.1", not_before=datetime(2020, 1, 1,
                                 tzinfo=UTC), not_after=datetime(2021, 1, 1, tzinfo=UTC)),
        "other-host": ca.issue_cert("mail.example.org"),
    }
    out = {}
    for name, leaf in leaves.items():
        cert, key = tmp_path / f"{name}-cert.pem", tmp_path / f"{name}-key.pem"
        cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(str(key))
        for f in (cert, key, ca_file):
            f.chmod(0o644)  # the mail user of Dovecot reads them
        out[name] = CertFiles(ca_file, cert, key)
    trusted = CertFiles(ca_file, out["expired"].cert_file, out["expired"].key_file)
    return trusted, out


@pytest.mark.parametrize("cert", ["expired", "other-host"])
def test_bad_smtp_certificate_is_refused(make_workspace: MakeWs, tmp_path: Path,
                                         cert: str) -> None:
    trusted, bad = _bad_certs(tmp_path)
    server = start_smtp_server(trusted, cert_ca=bad[cert])
    try:
        ws = make_workspace(smtp=server)  # ca_file: the CA that did sign the certificate
        ws.add_recipients(THREE[:1])
        result = run(ws, "notify", debug=False)
        assert result.code == 6 and "certificate" in result.text, result.text
        assert server.auth_attempts == [] and server.messages == []
    finally:
        server.stop()


@pytest.mark.parametrize("cert", ["expired", "other-host"])
@pytest.mark.parametrize("tls", ["implicit", "starttls"])
def test_bad_imap_certificate_is_refused(make_workspace: MakeWs, tmp_path: Path,
                                         dovecot: Dovecot, cert: str, tls: str) -> None:
    _trusted, bad = _bad_certs(tmp_path)
    server = Dovecot(bad[cert])
    try:
        server.start()
        user, password = server.add_user(password=IMAP_SECRET)
        ws = make_workspace(imap=(server, user, password))
        if tls == "starttls":
            ws.set("imap", tls="starttls", port=server.port_starttls)
        result = run(ws, "poll", debug=False)
        assert result.code == 7 and "certificate" in result.text.lower(), result.text
        assert "Login: user=" not in server.log_text()  # no login reached the server
    finally:
        server.stop()
