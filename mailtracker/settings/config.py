"""Configuration: TOML file + environment → frozen ``Settings``.

All validation happens here, and every error names the file and the key. Nothing is read at
import time. Secrets are never part of ``Settings``: only *where* to get them
(``password_env``, ``password_command``, keyring), resolved later by ``secrets.py``.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from mailtracker.addresses import check_email
from mailtracker.errors import ConfigError
from mailtracker.inbound.judge.trust import SenderAuth, TrustSettings
from mailtracker.tables import Table

if TYPE_CHECKING:
    from mailtracker.settings.graphconfig import GraphSettings

TlsMode = Literal["implicit", "starttls", "none"]
AuthMethod = Literal["password", "oauth2"]
PostAction = Literal["none", "keyword", "move"]
OAuth2Flow = Literal["client_credentials", "device_code"]

DEFAULT_CONFIG_RELPATH = Path("config") / "mailtracker.toml"
CONFIG_ENV = "MAILTRACKER_CONFIG"

# Keys whose presence in a config file means the file holds a secret.
_SECRET_KEYS = frozenset({"password", "secret", "client_secret", "token", "access_token"})


@dataclass(frozen=True, slots=True)
class SecretSource:
    """Where a password comes from. Exactly one is used, in this order."""

    password_env: str | None = None
    password_command: str | None = None
    keyring: bool = False


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    """``[smtp]``: where and how mail is sent (no secret, only where to get it)."""

    host: str
    port: int
    tls: TlsMode
    username: str | None
    secret: SecretSource
    ca_file: Path | None
    from_address: str
    from_name: str
    timeout: float = 30.0
    auth: AuthMethod = "password"
    retries: int = 3  # further attempts after a temporary (4xx) failure, within one run
    retry_delay: float = 5.0  # first backoff in seconds; tripled each time

    @property
    def domain(self) -> str:
        return self.from_address.rpartition("@")[2]


@dataclass(frozen=True, slots=True)
class ImapSettings:
    """``[imap]``: the mailbox to watch (no secret, only where to get it)."""

    host: str
    port: int
    tls: TlsMode
    username: str
    secret: SecretSource
    ca_file: Path | None
    folder: str = "INBOX"
    since: date | None = None
    post_action: PostAction = "none"
    move_to: str = "Behandlet"
    keyword: str = "mailtracker"
    timeout: float = 60.0
    idle: bool = True
    max_message_bytes: int = 25 * 1024 * 1024
    auth: AuthMethod = "password"
    # ``watch``: longest wait between polls. IDLE is ended (and DONE must be answered) at
    # least this often, so a silently dead link is found within this plus ``timeout``.
    watch_interval: float = 300.0


@dataclass(frozen=True, slots=True)
class OAuth2Settings:
    """How to get OAuth2 access tokens for ``auth = "oauth2"`` (Microsoft Entra ID by default).

    Only *where* the client secret is (``client_secret_env``) or the certificate file: never
    a secret itself. ``scopes`` may name ``offline_access``; msal adds it by itself.
    """

    tenant_id: str
    client_id: str
    flow: OAuth2Flow
    authority: str  # https://login.microsoftonline.com/<tenant_id> unless overridden
    scopes: tuple[str, ...]
    token_cache: Path  # JSON of msal's cache, mode 0600
    client_secret_env: str | None = None
    certificate_path: Path | None = None  # PEM with the private key
    certificate_thumbprint: str | None = None  # SHA-1, hex, as the Entra portal shows it


#: Client credentials: the app's own Exchange Online permissions (IMAP.AccessAsApp,
#: SMTP.SendAsApp). Device code: a person's delegated permissions, with a refresh token.
DEFAULT_SCOPES: Mapping[str, tuple[str, ...]] = {
    "client_credentials": ("https://outlook.office365.com/.default",),
    "device_code": ("https://outlook.office.com/IMAP.AccessAsUser.All",
                    "https://outlook.office.com/SMTP.Send", "offline_access"),
}


@dataclass(frozen=True, slots=True)
class Settings:
    """The whole config file, checked."""

    path: Path  # the config file
    organisation: str
    task_definition: str  # a name under config/tasks/ or a path
    language: str
    store_path: Path
    smtp: SmtpSettings | None
    imap: ImapSettings | None
    trust: TrustSettings
    templates_dir: Path | None = None  # override of the packaged templates
    extra: Mapping[str, Any] = field(default_factory=dict)
    oauth2: OAuth2Settings | None = None
    graph: GraphSettings | None = None  # [graph]: Microsoft Graph (settings/graphconfig.py)

    @property
    def config_dir(self) -> Path:
        return self.path.parent

    @property
    def sender(self) -> Sender | None:
        """Who sent mail is from: ``[smtp]``, else ``[graph]`` when it sends."""
        if self.smtp is not None:
            return Sender(self.smtp.from_name, self.smtp.from_address)
        if self.graph is not None and self.graph.send:
            return Sender(self.graph.from_name or self.organisation, self.graph.from_address)
        return None


@dataclass(frozen=True, slots=True)
class Sender:
    from_name: str
    from_address: str


def resolve_config_path(explicit: str | os.PathLike[str] | None, environ: Mapping[str, str],
                        cwd: Path | None = None) -> Path:
    """``--config``, else ``$MAILTRACKER_CONFIG``, else ``./config/mailtracker.toml``."""
    if explicit:
        return Path(explicit)
    if environ.get(CONFIG_ENV):
        return Path(environ[CONFIG_ENV])
    return (cwd or Path.cwd()) / DEFAULT_CONFIG_RELPATH


def load_settings(path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the config file at ``path``."""
    del environ  # secrets are resolved lazily by secrets.py; kept for a stable signature
    try:
        raw_bytes = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            "config file not found (create one with 'mailtracker init')", path=path
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", path=path) from None
    try:
        data = tomllib.loads(raw_bytes.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("config file is not UTF-8", path=path) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", path=path) from None
    _refuse_inline_secrets(data, path)
    return _build(data, path.resolve())


def _refuse_inline_secrets(data: Mapping[str, Any], path: Path, prefix: str = "") -> None:
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            _refuse_inline_secrets(value, path, dotted + ".")
        elif key in _SECRET_KEYS:
            readable = _readable_by_others(path)
            extra = " and the file is readable by other users" if readable else ""
            instead = ("client_secret_env (the name of an environment variable)"
                       if prefix == "oauth2." else "password_env, password_command or the "
                       "keyring")
            raise ConfigError(
                "secrets do not belong in the config file" + extra + f"; use {instead} instead",
                path=path, key=dotted,
            )


def _readable_by_others(path: Path) -> bool:
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return bool(mode & (stat.S_IRGRP | stat.S_IROTH))


def _section(data: Mapping[str, Any], name: str, path: Path) -> Table:
    return Table(data.get(name, {}), name, path)


def is_loopback_host(host: str) -> bool:
    if host.lower() in {"localhost", "localhost.localdomain"}:
        return True
    try:
        import ipaddress  # only for tls = "none": every command reads the config

        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _secret_source(sec: Table) -> SecretSource:
    return SecretSource(
        password_env=sec.text("password_env"),
        password_command=sec.text("password_command"),
        keyring=sec.flag("keyring", False),
    )


def _tls(sec: Table, host: str) -> TlsMode:
    tls = cast(TlsMode, sec.choice("tls", "starttls" if sec.where == "smtp" else "implicit",
                                   ("implicit", "starttls", "none")))
    if tls == "none" and not is_loopback_host(host):
        raise sec.fail("tls", f'"none" is only allowed for a loopback host, not {host!r}; '
                              'use "starttls" or "implicit"')
    return tls


_SMTP_KEYS = {"host", "port", "tls", "username", "password_env", "password_command", "keyring",
              "ca_file", "from_address", "from_name", "timeout", "auth", "retries",
              "retry_delay"}
_IMAP_KEYS = {"host", "port", "tls", "username", "password_env", "password_command", "keyring",
              "ca_file", "folder", "since", "post_action", "move_to", "keyword", "timeout",
              "idle", "max_message_bytes", "auth", "watch_interval"}


def _smtp(data: Mapping[str, Any], path: Path) -> SmtpSettings | None:
    if "smtp" not in data:
        return None
    sec = _section(data, "smtp", path)
    sec.unknown_keys(_SMTP_KEYS)
    host = sec.req_str("host")
    tls = _tls(sec, host)
    from_address = sec.req_str("from_address")
    try:
        check_email(from_address)
    except ValueError as exc:
        raise sec.fail("from_address", str(exc)) from None
    return SmtpSettings(
        host=host,
        port=sec.integer("port", 465 if tls == "implicit" else 587, 1, 65535),
        tls=tls,
        username=sec.text("username"),
        secret=_secret_source(sec),
        ca_file=sec.existing_file("ca_file", path.parent),
        from_address=from_address,
        from_name=sec.req_str("from_name", from_address),
        timeout=sec.number("timeout", 30.0, 1.0, 600.0),
        auth=cast(AuthMethod, sec.choice("auth", "password", ("password", "oauth2"))),
        retries=sec.integer("retries", 3, 0, 10),
        retry_delay=sec.number("retry_delay", 5.0, 0.0, 600.0),
    )


def _imap(data: Mapping[str, Any], path: Path) -> ImapSettings | None:
    if "imap" not in data:
        return None
    sec = _section(data, "imap", path)
    sec.unknown_keys(_IMAP_KEYS)
    host = sec.req_str("host")
    tls = _tls(sec, host)
    since_raw = sec.data.get("since")
    since: date | None
    if since_raw is None:
        since = None
    elif isinstance(since_raw, date):
        since = since_raw
    elif isinstance(since_raw, str):
        try:
            since = date.fromisoformat(since_raw)
        except ValueError:
            raise sec.fail("since", f"must be a date like 2026-01-01, not {since_raw!r}") from None
    else:
        raise sec.fail("since", f"must be a date like 2026-01-01, not {since_raw!r}")
    post_action = cast(PostAction, sec.choice("post_action", "none", ("none", "keyword", "move")))
    return ImapSettings(
        host=host,
        port=sec.integer("port", 993 if tls == "implicit" else 143, 1, 65535),
        tls=tls,
        username=sec.req_str("username"),
        secret=_secret_source(sec),
        ca_file=sec.existing_file("ca_file", path.parent),
        folder=sec.req_str("folder", "INBOX"),
        since=since,
        post_action=post_action,
        move_to=sec.req_str("move_to", "Behandlet"),
        keyword=sec.req_str("keyword", "mailtracker"),
        timeout=sec.number("timeout", 60.0, 1.0, 3600.0),
        idle=sec.flag("idle", True),
        max_message_bytes=sec.integer("max_message_bytes", 25 * 1024 * 1024, 1024, 2**31),
        watch_interval=sec.number("watch_interval", 300.0, 1.0, 1500.0),
        auth=cast(AuthMethod, sec.choice("auth", "password", ("password", "oauth2"))),
    )


def _trust(data: Mapping[str, Any], path: Path) -> TrustSettings:
    sec = _section(data, "trust", path)
    sec.unknown_keys({"authserv_id", "sender_auth", "sender_domains", "signing_domains",
                      "tenant_id"})
    mode = cast(SenderAuth, sec.choice("sender_auth", "dmarc",
                                       ("dmarc", "exchange_online", "allowlist")))
    authserv_id = sec.text("authserv_id")
    if mode == "dmarc" and "imap" in data and not authserv_id:
        raise sec.fail("authserv_id", 'is required when sender_auth = "dmarc" (the name your '
                                      "receiving server writes in Authentication-Results; "
                                      "'mailtracker check' suggests it)")
    defaults = TrustSettings(authserv_id=None)
    return TrustSettings(
        authserv_id=authserv_id.strip().lower() if authserv_id else None,
        sender_auth=mode,
        sender_domains=sec.str_list("sender_domains", defaults.sender_domains),
        signing_domains=sec.str_list("signing_domains", defaults.signing_domains),
        tenant_id=_exchange_tenant(sec, data) if mode == "exchange_online" else None,
    )


_GUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _exchange_tenant(sec: Table, data: Mapping[str, Any]) -> str:
    """The tenant whose Exchange Online verdict counts: ``[trust] tenant_id``, else the
    ``[oauth2] tenant_id`` when that is a directory id (a GUID, as Exchange writes it)."""
    own = sec.text("tenant_id")
    if own is not None:
        tenant = own.strip().lower()
        if not _GUID_RE.fullmatch(tenant):
            raise sec.fail("tenant_id", "must be the directory (tenant) ID, a GUID such as "
                                        "'72f988bf-86f1-41af-91ab-2d7cd011db47' (Entra admin "
                                        "center → Overview → Tenant ID)")
        return tenant
    oauth2 = data.get("oauth2")
    if isinstance(oauth2, Mapping) and isinstance(oauth2.get("tenant_id"), str):
        tenant = str(oauth2["tenant_id"]).strip().lower()
        if _GUID_RE.fullmatch(tenant):
            return tenant
    raise sec.fail("tenant_id", 'is required when sender_auth = "exchange_online" and '
                                "[oauth2] tenant_id is not a directory ID: set it to your "
                                "tenant's directory (tenant) ID, a GUID; 'mailtracker check' "
                                "shows the one your mail carries")


_OAUTH2_KEYS = {"tenant_id", "client_id", "client_secret_env", "certificate_path",
                "certificate_thumbprint", "flow", "authority", "scopes", "token_cache"}


def _oauth2(data: Mapping[str, Any], path: Path) -> OAuth2Settings | None:
    if "oauth2" not in data:
        return None
    sec = _section(data, "oauth2", path)
    sec.unknown_keys(_OAUTH2_KEYS)
    tenant = sec.req_str("tenant_id").strip()
    if any(c in tenant for c in "/?# "):
        raise sec.fail("tenant_id", "must be the directory (tenant) ID or domain, e.g. "
                                    "'kommune.onmicrosoft.com', not a URL")
    flow = cast(OAuth2Flow, sec.choice("flow", "client_credentials",
                                       ("client_credentials", "device_code")))
    if flow == "client_credentials" and tenant.lower() in {"common", "organizations",
                                                           "consumers"}:
        raise sec.fail("tenant_id", "an app signs in to one tenant: use its directory "
                                    "(tenant) ID, not " + repr(tenant))
    authority = sec.req_str("authority", f"https://login.microsoftonline.com/{tenant}")
    authority = authority.strip().rstrip("/")
    if not authority.startswith("https://") or any(c in authority for c in "?# "):
        raise sec.fail("authority", f"must be an https:// URL without query, not {authority!r}")
    scopes = _scopes(sec, flow)
    secret_env = sec.text("client_secret_env")
    cert = sec.existing_file("certificate_path", path.parent)
    thumbprint = sec.text("certificate_thumbprint")
    _oauth2_credential(sec, flow, secret_env, cert, thumbprint)
    return OAuth2Settings(
        tenant_id=tenant, client_id=sec.req_str("client_id").strip(), flow=flow,
        authority=authority, scopes=scopes,
        token_cache=sec.path_("token_cache", path.parent)
        or path.parent / "oauth2-token-cache.json",
        client_secret_env=secret_env, certificate_path=cert,
        certificate_thumbprint=thumbprint.replace(":", "").upper() if thumbprint else None,
    )


def _scopes(sec: Table, flow: OAuth2Flow) -> tuple[str, ...]:
    value = sec.data.get("scopes", list(DEFAULT_SCOPES[flow]))
    if (not isinstance(value, list) or not value
            or not all(isinstance(v, str) and v.strip() and v.isprintable() for v in value)):
        raise sec.fail("scopes", "must be a non-empty list of strings")
    scopes = tuple(v.strip() for v in value)
    if flow == "client_credentials" and (len(scopes) != 1 or not scopes[0].endswith("/.default")):
        raise sec.fail("scopes", "the client credentials flow takes exactly one scope ending in "
                                 "'/.default' (for Exchange Online: "
                                 "'https://outlook.office365.com/.default')")
    return scopes


def _oauth2_credential(sec: Table, flow: OAuth2Flow, secret_env: str | None,
                       cert: Path | None, thumbprint: str | None) -> None:
    """The app proves itself with exactly one of: a secret (by env var) or a certificate."""
    if flow == "device_code":
        for key, value in (("client_secret_env", secret_env), ("certificate_path", cert)):
            if value is not None:
                raise sec.fail(key, 'is not used with flow = "device_code" (a person signs in)')
        return
    if (cert is None) != (thumbprint is None):
        raise sec.fail("certificate_thumbprint" if thumbprint is None else "certificate_path",
                       "certificate_path and certificate_thumbprint go together")
    if (secret_env is None) == (cert is None):
        raise sec.fail("client_secret_env", "set either client_secret_env or certificate_path "
                       "+ certificate_thumbprint for the client credentials flow")
    if thumbprint is not None:
        hex_digits = thumbprint.replace(":", "")
        if len(hex_digits) != 40 or any(c not in "0123456789abcdefABCDEF" for c in hex_digits):
            raise sec.fail("certificate_thumbprint", "must be the certificate's SHA-1 "
                                                     "thumbprint: 40 hexadecimal digits")
    if cert is not None and _readable_by_others(cert):
        raise sec.fail("certificate_path", f"{cert} holds a private key and is readable by "
                                           f"other users; run: chmod 600 {cert}")


def _check_auth(settings: Settings) -> None:
    """auth = "oauth2" needs a token source: [oauth2], or a password source that prints one."""
    for name, server in (("smtp", settings.smtp), ("imap", settings.imap)):
        if server is None or server.auth != "oauth2":
            continue
        source = server.secret
        has_source = bool(source.password_env or source.password_command or source.keyring)
        if settings.oauth2 is not None and has_source:
            raise ConfigError('with auth = "oauth2" the token comes from [oauth2]; remove '
                              "password_env, password_command and keyring from this section",
                              path=settings.path, key=f"{name}.auth")
        if settings.oauth2 is None and not has_source:
            raise ConfigError('auth = "oauth2" needs an [oauth2] section (or a password_command '
                              "that prints an access token)", path=settings.path,
                              key=f"{name}.auth")
        if server.username is None:
            raise ConfigError('is required with auth = "oauth2" (the mailbox address)',
                              path=settings.path, key=f"{name}.username")


_TOP_KEYS = {"organisation", "task", "store", "smtp", "imap", "trust", "templates", "oauth2",
             "followups", "graph"}


def _build(data: Mapping[str, Any], path: Path) -> Settings:
    for key in data:
        if key not in _TOP_KEYS:
            raise ConfigError(f"unknown section (allowed: {', '.join(sorted(_TOP_KEYS))})",
                              path=path, key=key)
    org = _section(data, "organisation", path)
    org.unknown_keys({"name"})
    task = _section(data, "task", path)
    task.unknown_keys({"definition", "language"})
    store = _section(data, "store", path)
    store.unknown_keys({"path"})
    templates = _section(data, "templates", path)
    templates.unknown_keys({"dir"})
    store_path = store.path_("path", path.parent) or path.parent / "mailtracker.json"
    graph = _graph(data, path)  # first: its contradictions with [imap]/[smtp] say the most
    settings = Settings(
        path=path,
        organisation=org.req_str("name"),
        task_definition=task.req_str("definition", "efaktura-8b"),
        language=task.choice("language", "da", ("da", "en")),
        store_path=store_path,
        smtp=_smtp(data, path),
        imap=_imap(data, path),
        trust=_trust(data, path),
        templates_dir=templates.path_("dir", path.parent),
        extra={k: v for k, v in data.items() if k in {"followups"}},
        oauth2=_oauth2(data, path),
        graph=graph,
    )
    _check_auth(settings)
    return settings


def _graph(data: Mapping[str, Any], path: Path) -> GraphSettings | None:
    from mailtracker.settings.graphconfig import check_graph_oauth2, parse_graph

    graph = parse_graph(data, path)
    check_graph_oauth2(graph, data, path)
    return graph
