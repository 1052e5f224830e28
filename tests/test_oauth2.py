"""OAuth2 (XOAUTH2) for IMAP and SMTP: config, msal token provider, and end to end.

Everything runs on loopback: a fake Entra ID (tests/plugins/fakeidp.py) issues the tokens,
Dovecot with an ``oauth2`` passdb and aiosmtpd check them against its introspection endpoint.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import ssl
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import imapclient
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from mailtracker.errors import ConfigError, OAuth2Error, OAuth2UnavailableError, SecretError
from mailtracker.settings.config import DEFAULT_SCOPES, OAuth2Settings, load_settings
from mailtracker.settings.oauth2 import TokenProvider, describe_token
from tests.plugins.dovecot import Dovecot, free_port
from tests.plugins.fakeidp import EXCHANGE, TENANT, FakeIdP
from tests.plugins.smtpd import SmtpTestServer
from tests.plugins.workspace import THREE, Workspace

if TYPE_CHECKING:  # a Test* class imported for real would be collected as a test
    from tests.plugins.tlsca import TestCA

APP_ID = "6d0d1c9e-0000-4000-8000-00000000a001"
PUBLIC_ID = "6d0d1c9e-0000-4000-8000-00000000b002"
SECRET_ENV = "MT_TEST_OAUTH2_SECRET"
CLIENT_SECRET = "Qz8~client-secret-value-1234567890"
AUTH_EXIT = 13


# --------------------------------------------------------------------------- helpers


def write_config(tmp_path: Path, oauth2: str, *, extra: str = "") -> Path:
    path = tmp_path / "config" / "mailtracker.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'[organisation]\nname = "Eksempel Kommune"\n{extra}\n[oauth2]\n{oauth2}\n',
                    encoding="utf-8")
    path.chmod(0o600)
    return path


def oauth_settings(idp: FakeIdP, tmp_path: Path, **overrides: Any) -> OAuth2Settings:
    fields: dict[str, Any] = dict(
        tenant_id=TENANT, client_id=APP_ID, flow="client_credentials",
        authority=idp.authority, scopes=DEFAULT_SCOPES["client_credentials"],
        token_cache=tmp_path / "cache" / "oauth2-token-cache.json",
        client_secret_env=SECRET_ENV)
    fields.update(overrides)
    return OAuth2Settings(**fields)


def rsa_certificate(directory: Path) -> tuple[x509.Certificate, Path, str]:
    """A self-signed RSA certificate as Entra takes them: (cert, PEM key file, SHA-1 hex)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mailtracker test app")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30)).sign(key, hashes.SHA256()))
    pem = directory / "app-cert.pem"
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())
                    + cert.public_bytes(serialization.Encoding.PEM))
    pem.chmod(0o600)
    return cert, pem, cert.fingerprint(hashes.SHA1()).hex().upper()


def use_oauth2(ws: Workspace, idp: FakeIdP, **oauth2: Any) -> Workspace:
    """Switch the workspace's servers to auth = "oauth2" with an [oauth2] section."""
    for name in ("smtp", "imap"):
        if name in ws.sections:
            ws.sections[name].pop("password_env", None)
            ws.sections[name]["auth"] = "oauth2"
    ws.environ.pop("MT_TEST_SMTP_PASSWORD", None)
    ws.environ.pop("MT_TEST_IMAP_PASSWORD", None)
    ws.environ[SECRET_ENV] = CLIENT_SECRET
    ws.sections["oauth2"] = {"tenant_id": TENANT, "client_id": APP_ID,
                             "client_secret_env": SECRET_ENV, "authority": idp.authority,
                             **oauth2}
    ws.write()
    return ws


@pytest.fixture(scope="module")
def oauth_dovecot(dovecot: Dovecot, test_ca: TestCA, fake_idp_server: FakeIdP
                  ) -> Iterator[Dovecot]:
    """Dovecot that takes XOAUTH2/OAUTHBEARER tokens the fake IdP says are active. One for
    the module (each test has its own mailbox); ``dovecot`` checks that Dovecot can run."""
    server = Dovecot(test_ca, oauth2_introspection_url=fake_idp_server.introspection_url)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def mailbox(oauth_dovecot: Dovecot, fake_idp: FakeIdP) -> str:
    """A mailbox on ``oauth_dovecot`` that the app (APP_ID) was granted, as in Exchange."""
    user, _password = oauth_dovecot.add_user()
    fake_idp.register_app(APP_ID, mailbox=user, secret=CLIENT_SECRET)
    return user


@pytest.fixture
def oauth_smtp(make_smtp_server: Callable[..., SmtpTestServer], fake_idp: FakeIdP,
               mailbox: str) -> SmtpTestServer:
    return make_smtp_server(username=mailbox,
                            token_check=lambda user, token: fake_idp.validate(token) == user)


@pytest.fixture
def imap_ws(make_workspace: Callable[..., Workspace], oauth_dovecot: Dovecot, mailbox: str,
            fake_idp: FakeIdP) -> Workspace:
    return use_oauth2(make_workspace(imap=(oauth_dovecot, mailbox, "unused")), fake_idp)


@pytest.fixture
def smtp_ws(make_workspace: Callable[..., Workspace], oauth_smtp: SmtpTestServer,
            fake_idp: FakeIdP) -> Workspace:
    ws = use_oauth2(make_workspace(smtp=oauth_smtp), fake_idp)
    ws.add_recipients(THREE)
    return ws


@pytest.fixture
def app_logs() -> Iterator[list[logging.LogRecord]]:
    """Every record mailtracker logs (DEBUG up), and WARNING up from any library."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    ours, root = logging.getLogger("mailtracker"), logging.getLogger()
    mine, loud = Keep(logging.DEBUG), Keep(logging.WARNING)
    level = ours.level
    ours.addHandler(mine)
    root.addHandler(loud)
    ours.setLevel(logging.DEBUG)
    yield records
    ours.removeHandler(mine)
    root.removeHandler(loud)
    ours.setLevel(level)


# --------------------------------------------------------------------------- config


def test_oauth2_section_becomes_settings_with_entra_defaults(tmp_path: Path) -> None:
    path = write_config(tmp_path, f'tenant_id = "kommune.onmicrosoft.com"\n'
                                  f'client_id = "{APP_ID}"\nclient_secret_env = "MT_SECRET"\n')
    oauth2 = load_settings(path).oauth2
    assert oauth2 == OAuth2Settings(
        tenant_id="kommune.onmicrosoft.com", client_id=APP_ID, flow="client_credentials",
        authority="https://login.microsoftonline.com/kommune.onmicrosoft.com",
        scopes=("https://outlook.office365.com/.default",),
        token_cache=path.parent.resolve() / "oauth2-token-cache.json",
        client_secret_env="MT_SECRET")


def test_device_code_flow_defaults_to_delegated_mail_scopes(tmp_path: Path) -> None:
    path = write_config(tmp_path, f'tenant_id = "{TENANT}"\nclient_id = "{PUBLIC_ID}"\n'
                                  'flow = "device_code"\ntoken_cache = "secret/tokens.json"\n'
                                  'authority = "https://login.microsoftonline.us/x/"\n')
    oauth2 = load_settings(path).oauth2
    assert oauth2 is not None
    assert oauth2.scopes == ("https://outlook.office.com/IMAP.AccessAsUser.All",
                             "https://outlook.office.com/SMTP.Send", "offline_access")
    assert oauth2.token_cache == path.parent.resolve() / "secret" / "tokens.json"
    assert oauth2.authority == "https://login.microsoftonline.us/x"


def test_client_secret_in_the_file_is_refused_pointing_to_client_secret_env(
        tmp_path: Path) -> None:
    path = write_config(tmp_path, f'tenant_id = "{TENANT}"\nclient_id = "{APP_ID}"\n'
                                  f'client_secret = "{CLIENT_SECRET}"\n')
    path.chmod(0o644)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    message = str(info.value)
    assert message.startswith(f"{path}: oauth2.client_secret: ")
    assert "readable by other users" in message and "client_secret_env" in message
    assert CLIENT_SECRET not in message


@pytest.mark.parametrize(("body", "key", "words"), [
    ('client_id = "a"', "oauth2.tenant_id", "is required"),
    ('tenant_id = "https://login.microsoftonline.com/t"\nclient_id = "a"\n'
     'client_secret_env = "S"', "oauth2.tenant_id", "not a URL"),
    ('tenant_id = "t"\nclient_id = "a"', "oauth2.client_secret_env", "set either"),
    ('tenant_id = "common"\nclient_id = "a"\nclient_secret_env = "S"', "oauth2.tenant_id",
     "directory (tenant) ID"),
    ('tenant_id = "t"\nclient_id = "a"\nclient_secret_env = "S"\ncertificate_path = "c.pem"\n'
     'certificate_thumbprint = "' + "A" * 40 + '"', "oauth2.client_secret_env", "set either"),
    ('tenant_id = "t"\nclient_id = "a"\ncertificate_path = "c.pem"',
     "oauth2.certificate_thumbprint", "go together"),
    ('tenant_id = "t"\nclient_id = "a"\ncertificate_path = "c.pem"\n'
     'certificate_thumbprint = "xyz"', "oauth2.certificate_thumbprint", "40 hexadecimal"),
    ('tenant_id = "t"\nclient_id = "a"\nclient_secret_env = "S"\n'
     'scopes = ["https://outlook.office.com/IMAP.AccessAsUser.All"]', "oauth2.scopes",
     "/.default"),
    ('tenant_id = "t"\nclient_id = "a"\nclient_secret_env = "S"\nauthority = "http://x/t"',
     "oauth2.authority", "https://"),
    ('tenant_id = "t"\nclient_id = "a"\nflow = "device_code"\nclient_secret_env = "S"',
     "oauth2.client_secret_env", "device_code"),
    ('tenant_id = "t"\nclient_id = "a"\nflow = "password"', "oauth2.flow", "must be one of"),
    ('tenant_id = "t"\nclient_id = "a"\nclient_secret_env = "S"\nresource = "x"',
     "oauth2.resource", "unknown key"),
])
def test_bad_oauth2_settings_name_file_and_key(tmp_path: Path, body: str, key: str,
                                               words: str) -> None:
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "c.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    (tmp_path / "config" / "c.pem").chmod(0o600)
    path = write_config(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(info.value).startswith(f"{path}: {key}: ")
    assert words in str(info.value)


def test_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config").mkdir()
    _cert, pem, thumbprint = rsa_certificate(tmp_path / "config")
    pem.chmod(0o644)
    path = write_config(tmp_path, f'tenant_id = "t"\nclient_id = "a"\ncertificate_path = '
                                  f'"{pem.name}"\ncertificate_thumbprint = "{thumbprint}"')
    with pytest.raises(ConfigError, match=r"oauth2.certificate_path: .*chmod 600"):
        load_settings(path)


def test_auth_oauth2_needs_a_token_source_and_only_one(tmp_path: Path) -> None:
    head = '[organisation]\nname = "K"\n[trust]\nsender_auth = "allowlist"\n'
    imap = '[imap]\nhost = "imap.example.dk"\nusername = "kp@example.dk"\nauth = "oauth2"\n'
    path = tmp_path / "c.toml"
    path.write_text(head + imap)
    with pytest.raises(ConfigError, match=r"imap.auth: .*needs an \[oauth2\] section"):
        load_settings(path)
    path.write_text(head + imap + 'password_env = "X"\n'
                    '[oauth2]\ntenant_id = "t"\nclient_id = "a"\nclient_secret_env = "S"\n')
    with pytest.raises(ConfigError, match=r"imap.auth: .*remove password_env"):
        load_settings(path)


def test_config_show_names_the_secret_variable_not_the_secret(imap_ws: Workspace) -> None:
    result = imap_ws.cli("config", "show", "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)["oauth2"]
    assert shown["client_secret_env"] == SECRET_ENV and shown["tenant_id"] == TENANT
    assert CLIENT_SECRET not in result.output


# --------------------------------------------------------------------------- token provider


def test_client_credentials_token_is_cached_in_a_file_only_the_owner_reads(
        fake_idp: FakeIdP, tmp_path: Path) -> None:
    fake_idp.register_app(APP_ID, mailbox="kp@kommune.example", secret=CLIENT_SECRET)
    settings = oauth_settings(fake_idp, tmp_path)
    first = TokenProvider(settings, {SECRET_ENV: CLIENT_SECRET}).token()
    second = TokenProvider(settings, {SECRET_ENV: CLIENT_SECRET}).token()
    assert not first.from_cache and second.from_cache
    assert second.value == first.value and fake_idp.hits("client_credentials") == 1
    assert fake_idp.validate(first.value) == "kp@kommune.example"
    assert first.audience == EXCHANGE
    assert first.permissions == ("IMAP.AccessAsApp", "SMTP.SendAsApp")
    cache = settings.token_cache
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert CLIENT_SECRET not in cache.read_text()


def test_a_token_close_to_expiry_is_replaced(fake_idp: FakeIdP, tmp_path: Path) -> None:
    fake_idp.register_app(APP_ID, mailbox="kp@kommune.example", secret=CLIENT_SECRET)
    fake_idp.token_lifetime = 120  # inside msal's 5-minute margin: treated as expired
    settings = oauth_settings(fake_idp, tmp_path)
    first = TokenProvider(settings, {SECRET_ENV: CLIENT_SECRET}).token()
    second = TokenProvider(settings, {SECRET_ENV: CLIENT_SECRET}).token()
    assert second.value != first.value and not second.from_cache
    assert fake_idp.hits("client_credentials") == 2


def test_force_refresh_skips_a_good_cached_token(fake_idp: FakeIdP, tmp_path: Path) -> None:
    fake_idp.register_app(APP_ID, mailbox="kp@kommune.example", secret=CLIENT_SECRET)
    provider = TokenProvider(oauth_settings(fake_idp, tmp_path), {SECRET_ENV: CLIENT_SECRET})
    first = provider.token()
    again = provider.token(force_refresh=True)
    assert again.value != first.value and fake_idp.hits() == 2


def test_certificate_credential_gets_a_token(fake_idp: FakeIdP, tmp_path: Path) -> None:
    cert, pem, thumbprint = rsa_certificate(tmp_path)
    fake_idp.register_app(APP_ID, mailbox="kp@kommune.example", certificate=cert)
    settings = oauth_settings(fake_idp, tmp_path, client_secret_env=None, certificate_path=pem,
                              certificate_thumbprint=thumbprint)
    token = TokenProvider(settings, {}).token()
    assert fake_idp.validate(token.value) == "kp@kommune.example"
    wrong = oauth_settings(fake_idp, tmp_path / "other", client_secret_env=None,
                           certificate_path=pem, certificate_thumbprint="AB" * 20)
    with pytest.raises(OAuth2Error, match="invalid_client: AADSTS700027"):
        TokenProvider(wrong, {}).token()


def test_wrong_client_secret_gives_a_clear_error_without_the_secret(
        fake_idp: FakeIdP, tmp_path: Path) -> None:
    fake_idp.register_app(APP_ID, mailbox="kp@kommune.example", secret="the-right-one")
    with pytest.raises(OAuth2Error) as info:
        TokenProvider(oauth_settings(fake_idp, tmp_path), {SECRET_ENV: CLIENT_SECRET}).token()
    message = str(info.value)
    assert message == (f"{fake_idp.authority} refused to issue a token: invalid_client: "
                       "AADSTS7000215: Invalid client secret provided. (is the client secret "
                       "or certificate current? Secrets expire)")
    assert info.value.exit_status == AUTH_EXIT


def test_unset_secret_variable_is_a_secret_error(fake_idp: FakeIdP, tmp_path: Path) -> None:
    with pytest.raises(SecretError, match=f"{SECRET_ENV} is not set"):
        TokenProvider(oauth_settings(fake_idp, tmp_path), {}).token()


def test_unreachable_identity_provider_is_a_connection_error(tmp_path: Path,
                                                             fake_idp: FakeIdP) -> None:
    gone = f"https://127.0.0.1:{free_port()}/{TENANT}"
    settings = oauth_settings(fake_idp, tmp_path, authority=gone)
    with pytest.raises(OAuth2UnavailableError, match="cannot reach the identity provider") as i:
        TokenProvider(settings, {SECRET_ENV: CLIENT_SECRET}, timeout=5).token()
    assert isinstance(i.value, ConnectionError)


def test_untrusted_identity_provider_certificate_is_named(
        fake_idp: FakeIdP, other_ca: TestCA, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other_ca.ca_file))
    with pytest.raises(OAuth2UnavailableError, match="TLS failed"):
        TokenProvider(oauth_settings(fake_idp, tmp_path), {SECRET_ENV: CLIENT_SECRET}).token()
    assert fake_idp.hits() == 0


def test_device_code_sign_in_then_tokens_come_from_cache_and_refresh_token(
        fake_idp: FakeIdP, tmp_path: Path) -> None:
    fake_idp.register_public_client(PUBLIC_ID)
    settings = oauth_settings(fake_idp, tmp_path, client_id=PUBLIC_ID, flow="device_code",
                              scopes=DEFAULT_SCOPES["device_code"], client_secret_env=None)
    provider = TokenProvider(settings, {})
    with pytest.raises(OAuth2Error, match=r"nobody has signed in yet.*mailtracker login"):
        provider.token()
    shown: list[str] = []

    def person_reads_and_signs_in(text: str) -> None:
        shown.append(text)
        fake_idp.approve(text.split("enter the code ")[1].split()[0], "karen@kommune.example")

    signed = provider.sign_in(person_reads_and_signs_in)
    assert "/devicelogin" in shown[0]
    assert signed.account == "karen@kommune.example"
    assert signed.audience == "https://outlook.office.com"
    assert signed.permissions == ("IMAP.AccessAsUser.All", "SMTP.Send")
    assert TokenProvider(settings, {}).token().from_cache
    renewed = TokenProvider(settings, {}).token(force_refresh=True)
    assert renewed.value != signed.value
    assert [r.grant_type for r in fake_idp.token_requests] == ["device_code", "refresh_token"]


def test_token_cache_readable_by_others_is_refused(fake_idp: FakeIdP, tmp_path: Path) -> None:
    fake_idp.register_app(APP_ID, mailbox="kp@kommune.example", secret=CLIENT_SECRET)
    settings = oauth_settings(fake_idp, tmp_path)
    TokenProvider(settings, {SECRET_ENV: CLIENT_SECRET}).token()
    settings.token_cache.chmod(0o644)
    with pytest.raises(SecretError, match="chmod 600"):
        TokenProvider(settings, {SECRET_ENV: CLIENT_SECRET}).token()


def test_access_token_never_shows_its_value() -> None:
    token = describe_token("eyJhbGciOiJub25lIn0.eyJhdWQiOiJ4In0.c2ln", source="test")
    assert "eyJ" not in repr(token) and "eyJ" not in str(token)
    assert token.audience == "x" and "audience x" in token.describe()
    opaque = describe_token("ya29.a0AfH6SMB", source="password_command")
    assert opaque.audience is None and "opaque" in opaque.describe()


# --------------------------------------------------------------------------- end to end: IMAP


def test_poll_logs_in_to_dovecot_with_xoauth2_and_reuses_the_cached_token(
        imap_ws: Workspace, oauth_dovecot: Dovecot, mailbox: str, fake_idp: FakeIdP) -> None:
    oauth_dovecot.append(mailbox, b"From: a@example.dk\r\nSubject: hej\r\n"
                                  b"Message-ID: <m1@example.dk>\r\n\r\nbody\r\n")
    first = imap_ws.cli("poll")
    assert first.exit_code == 0, first.output
    assert "INBOX: 1 new message(s)" in first.output
    second = imap_ws.cli("poll")
    assert second.exit_code == 0, second.output
    assert fake_idp.hits() == 1  # the second run used the cached token
    assert fake_idp.introspections == 2  # and Dovecot checked it both times


def test_poll_uses_oauthbearer_when_the_server_offers_only_that(
        make_workspace: Callable[..., Workspace], fake_idp: FakeIdP,
        dovecot_factory: Callable[..., Dovecot]) -> None:
    server = dovecot_factory(oauth2_introspection_url=fake_idp.introspection_url,
                             oauth2_mechanisms=["oauthbearer"])
    user, _ = server.add_user()
    fake_idp.register_app(APP_ID, mailbox=user, secret=CLIENT_SECRET)
    ws = use_oauth2(make_workspace(imap=(server, user, "unused")), fake_idp)
    assert server.port_tls is not None
    with imapclient.IMAPClient(server.host, server.port_tls,
                               ssl_context=ssl.create_default_context(
                                   cafile=str(server.ca_file))) as probe:
        offered = probe.capabilities()
    assert b"AUTH=OAUTHBEARER" in offered and b"AUTH=XOAUTH2" not in offered
    result = ws.cli("poll")
    assert result.exit_code == 0, result.output
    assert fake_idp.introspections == 1


def test_expired_cached_token_is_replaced_before_login(imap_ws: Workspace,
                                                      fake_idp: FakeIdP) -> None:
    fake_idp.token_lifetime = 120
    assert imap_ws.cli("poll").exit_code == 0
    assert imap_ws.cli("poll").exit_code == 0
    assert fake_idp.hits() == 2 and fake_idp.introspections == 2  # no refused attempt


def test_revoked_token_is_refreshed_once_and_the_login_retried(
        imap_ws: Workspace, fake_idp: FakeIdP) -> None:
    assert imap_ws.cli("poll").exit_code == 0
    fake_idp.revoke_all()  # e.g. an administrator revoked the app's sessions
    result = imap_ws.cli("poll")
    assert result.exit_code == 0, result.output
    assert fake_idp.hits() == 2 and fake_idp.introspections == 3


def test_token_refused_again_after_refresh_gives_a_clear_error(
        imap_ws: Workspace, fake_idp: FakeIdP) -> None:
    fake_idp.block_client(APP_ID)  # Add-MailboxPermission was removed
    result = imap_ws.cli("poll")
    assert result.exit_code == AUTH_EXIT
    assert fake_idp.hits() == 2  # the cached-or-new token, then exactly one forced refresh
    # Log lines (the first refusal, the refresh) may come first; the error is one line.
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("Error: ")]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0])
    line = errors[0]
    assert "refused" in line and "also with a newly fetched OAuth2 token" in line
    assert f"audience {EXCHANGE}" in line and "IMAP.AccessAsApp" in line


def test_token_for_another_audience_is_refused(imap_ws: Workspace, fake_idp: FakeIdP) -> None:
    imap_ws.set("oauth2", scopes=["https://graph.microsoft.com/.default"])
    result = imap_ws.cli("poll")
    assert result.exit_code == AUTH_EXIT
    assert "audience https://graph.microsoft.com" in result.stderr
    assert fake_idp.introspections == 2  # both tokens were shown to the server, both refused


def test_token_from_password_command_without_oauth2_section(
        make_workspace: Callable[..., Workspace], oauth_dovecot: Dovecot, mailbox: str,
        fake_idp: FakeIdP, tmp_path: Path) -> None:
    """The Gmail route: a command prints the access token; no [oauth2] section."""
    token = TokenProvider(oauth_settings(fake_idp, tmp_path), {SECRET_ENV: CLIENT_SECRET}
                          ).token().value
    script = tmp_path / "print-token"
    script.write_text(f"#!/bin/sh\necho {token}\n")
    script.chmod(0o700)
    ws = make_workspace(imap=(oauth_dovecot, mailbox, "unused"))
    ws.sections["imap"].pop("password_env")
    ws.sections["imap"].update(auth="oauth2", password_command=str(script))
    ws.write()
    assert ws.cli("poll").exit_code == 0
    check = ws.cli("check")
    assert f"audience {EXCHANGE}" in check.stdout and "new from password_command" in check.stdout
    assert token not in check.output


# --------------------------------------------------------------------------- end to end: SMTP


def test_notify_sends_with_xoauth2(smtp_ws: Workspace, oauth_smtp: SmtpTestServer,
                                   mailbox: str, fake_idp: FakeIdP) -> None:
    result = smtp_ws.cli("notify")
    assert result.exit_code == 0, result.output
    assert len(oauth_smtp.messages) == 3
    assert {m.login for m in oauth_smtp.messages} == {mailbox}
    assert [(a.mechanism, a.success) for a in oauth_smtp.auth_attempts] == [("XOAUTH2", True)]
    assert fake_idp.hits() == 1


def test_notify_retries_once_with_a_new_token_after_a_refusal(
        smtp_ws: Workspace, oauth_smtp: SmtpTestServer, fake_idp: FakeIdP) -> None:
    assert smtp_ws.cli("check").exit_code == 0  # logs in once, caching the token
    fake_idp.revoke_all()
    result = smtp_ws.cli("notify")
    assert result.exit_code == 0, result.output
    assert len(oauth_smtp.messages) == 3
    assert [a.success for a in oauth_smtp.auth_attempts][-2:] == [False, True]
    assert fake_idp.hits() == 2


def test_notify_stops_with_a_clear_error_when_the_new_token_is_refused_too(
        smtp_ws: Workspace, oauth_smtp: SmtpTestServer, fake_idp: FakeIdP) -> None:
    fake_idp.block_client(APP_ID)
    result = smtp_ws.cli("notify")
    assert result.exit_code == AUTH_EXIT
    assert "also with a newly fetched OAuth2 token" in result.stderr
    assert oauth_smtp.messages == [] and fake_idp.hits() == 2
    assert [a.success for a in oauth_smtp.auth_attempts] == [False, False]


# --------------------------------------------------------------------------- check, login


def test_check_shows_audience_and_expiry_never_the_token(
        make_workspace: Callable[..., Workspace], oauth_dovecot: Dovecot, mailbox: str,
        oauth_smtp: SmtpTestServer, fake_idp: FakeIdP) -> None:
    ws = use_oauth2(make_workspace(smtp=oauth_smtp, imap=(oauth_dovecot, mailbox, "x")),
                    fake_idp)
    result = ws.cli("check", "--json")
    report = json.loads(result.stdout)
    tokens = [c for c in report["checks"] if c["name"] == "token"]
    logins = [c for c in report["checks"] if c["name"] == "login"]
    assert [c["status"] for c in tokens + logins] == ["ok", "ok", "ok", "ok"], result.output
    assert f"audience {EXCHANGE}" in tokens[0]["detail"]
    assert "permissions IMAP.AccessAsApp SMTP.SendAsApp" in tokens[0]["detail"]
    assert re.search(r"expires \d{4}-\d\d-\d\d \d\d:\d\d UTC \(in (59|60) min\)",
                     tokens[0]["detail"])
    assert "XOAUTH2" in next(c["detail"] for c in report["checks"] if c["name"] == "auth")
    assert not any(t in result.output for t in fake_idp.issued_tokens)


def test_check_fails_on_the_token_line_when_the_idp_refuses(imap_ws: Workspace,
                                                            fake_idp: FakeIdP) -> None:
    imap_ws.environ[SECRET_ENV] = "wrong"
    result = imap_ws.cli("check")
    assert result.exit_code == 10
    assert "✗ OAuth2 token" in result.stdout and "invalid_client" in result.stdout
    assert "login  " in result.stdout and "skipped: needs the token" in result.stdout


def test_login_with_device_code_then_poll_uses_the_cached_sign_in(
        make_workspace: Callable[..., Workspace], oauth_dovecot: Dovecot,
        fake_idp: FakeIdP) -> None:
    person, _ = oauth_dovecot.add_user()
    fake_idp.register_public_client(PUBLIC_ID)
    fake_idp.auto_approve = person  # enters the code in the browser at once
    ws = use_oauth2(make_workspace(imap=(oauth_dovecot, person, "x")), fake_idp,
                    client_id=PUBLIC_ID, flow="device_code", client_secret_env=None)
    before = ws.cli("poll")
    assert before.exit_code == AUTH_EXIT and "mailtracker login" in before.stderr
    login = ws.cli("login")
    assert login.exit_code == 0, login.output
    assert "/devicelogin and enter the code" in login.stdout
    assert f"signed in as {person}" in login.stdout
    assert ws.cli("poll").exit_code == 0
    assert [r.grant_type for r in fake_idp.token_requests] == ["device_code"]


def test_tokens_and_secret_never_reach_output_logs_or_store(
        make_workspace: Callable[..., Workspace], oauth_dovecot: Dovecot, mailbox: str,
        oauth_smtp: SmtpTestServer, fake_idp: FakeIdP,
        app_logs: list[logging.LogRecord]) -> None:
    ws = use_oauth2(make_workspace(smtp=oauth_smtp, imap=(oauth_dovecot, mailbox, "x")),
                    fake_idp)
    ws.add_recipients(THREE)
    outputs = [ws.cli("--debug", *args).output for args in (
        ["login"], ["check"], ["poll"], ["notify"], ["config", "show"], ["status"])]
    fake_idp.revoke_all()  # a refusal and a retry on both protocols, then a hard failure
    outputs += [ws.cli("--debug", "check").output]
    fake_idp.block_client(APP_ID)
    outputs += [ws.cli("poll").output, ws.cli("check").output]
    logged = "\n".join(r.getMessage() for r in app_logs)
    store = ws.store_path.read_text()
    assert len(fake_idp.issued_tokens) >= 4
    assert any("OAuth2 token" in text for text in outputs)  # something was shown...
    for secret in [*fake_idp.issued_tokens, CLIENT_SECRET]:  # ...but never a secret
        assert not any(secret in text for text in outputs)
        assert secret not in logged
        assert secret not in store
