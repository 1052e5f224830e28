"""``mailtracker init``: write a commented starter configuration."""

from __future__ import annotations

import os
from pathlib import Path

from mailtracker.errors import ConfigError, InvalidInputError

STARTER = """\
# mailtracker configuration for {name}.
# Documentation: README.md. Secrets never go in this file: use password_env (the name of an
# environment variable), password_command (prints the password) or keyring = true.

[organisation]
name = "{name}"

[task]
definition = "efaktura-8b"   # config/tasks/efaktura-8b.toml (a name or a path)
language = "da"              # da | en: language of mail to recipients without their own

[store]
path = "mailtracker.json"    # relative to this file; holds names, addresses and evidence

[smtp]
host = "smtp.{domain}"
port = 587
tls = "starttls"             # "starttls" (587) | "implicit" (465) | "none" (loopback only)
username = "kp-systemejer@{domain}"
password_env = "MAILTRACKER_SMTP_PASSWORD"
# password_command = "pass show mail/kommune"
# ca_file = "/etc/ssl/certs/kommune-ca.pem"   # only if your server uses a private CA
from_address = "kp-systemejer@{domain}"
from_name = "KP-systemansvarlig, {name}"
timeout = 30

[imap]
host = "imap.{domain}"
port = 993
tls = "implicit"             # "implicit" (993) | "starttls" (143) | "none" (loopback only)
username = "kp-systemejer@{domain}"
password_env = "MAILTRACKER_IMAP_PASSWORD"
folder = "INBOX"
since = "{since}"            # the first scan starts here
post_action = "none"         # "none" | "keyword" | "move"
move_to = "Behandlet"
timeout = 60
idle = true

[trust]
# The name your own receiving mail server writes in Authentication-Results headers.
# 'mailtracker check' suggests the right value from your newest mail.
authserv_id = "mx.{domain}"
sender_auth = "dmarc"        # "dmarc" | "exchange_online" (Microsoft 365) | "allowlist"
sender_domains = ["eg.dk"]
signing_domains = ["penneo.com", "addo.dk", "addosign.com"]
"""

# Microsoft 365 through Microsoft Graph (docs/graph.md): no IMAP, no SMTP AUTH.
STARTER_GRAPH = STARTER[:STARTER.index("[smtp]")] + """\
[graph]
mailbox = "kp-systemejer@{domain}"   # the mailbox read and sent from (address or object id)
folder = "Inbox"             # well-known name, display name, or a path like "Indbakke/EG"
since = "{since}"            # the first sync starts here
post_action = "none"         # "none" | "category" | "move" (then set move_to)
# move_to = "Behandlet"
# category = "mailtracker"

[oauth2]
# The app registration in Entra ID (application permissions Mail.ReadWrite and Mail.Send,
# limited to the mailbox with RBAC for Applications: docs/graph.md).
tenant_id = "00000000-0000-0000-0000-000000000000"   # Entra admin center → Overview
client_id = "00000000-0000-0000-0000-000000000000"   # the app's Application (client) ID
client_secret_env = "MAILTRACKER_CLIENT_SECRET"      # or certificate_path + _thumbprint

[trust]
# Exchange Online's own verdict on the sender, for the tenant above.
sender_auth = "exchange_online"
sender_domains = ["eg.dk"]
signing_domains = ["penneo.com", "addo.dk", "addosign.com"]
"""


def _domain_guess(name: str) -> str:
    base = name.lower().replace(" kommune", "").strip()
    table = str.maketrans({"æ": "ae", "ø": "oe", "å": "aa", " ": "-"})
    slug = "".join(c for c in base.translate(table) if c.isalnum() or c == "-") or "kommune"
    return f"{slug}.dk"


def write_starter(path: Path, municipality: str, *, since: str, force: bool = False,
                  graph: bool = False) -> Path:
    """Write the starter config at ``path`` (mode 0600). Refuses to overwrite unless ``force``."""
    if any(ord(c) < 32 or c == '"' or c == "\\" for c in municipality):
        raise InvalidInputError("municipality name must not contain quotes, backslashes or "
                                "control characters")
    if path.exists() and not force:
        raise ConfigError("already exists; use --force to overwrite", path=path)
    text = (STARTER_GRAPH if graph else STARTER).format(
        name=municipality, domain=_domain_guess(municipality), since=since)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise ConfigError(f"cannot write: {exc.strerror}", path=path) from None
    return path
