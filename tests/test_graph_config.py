"""``[graph]``: names and defaults as issue 14 gives them; contradictions name the key."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from mailtracker.errors import ConfigError
from mailtracker.settings.config import load_settings

BASE = """
[organisation]
name = "Eksempel Kommune"
[oauth2]
tenant_id = "11111111-2222-3333-4444-555555555555"
client_id = "app"
client_secret_env = "MT_SECRET"
"""


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "mailtracker.toml"
    path.write_text(BASE + text, encoding="utf-8")
    path.chmod(0o600)
    return load_settings(path)


def _error(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        _load(tmp_path, text)
    return info.value


def test_defaults_are_the_issues(tmp_path: Path) -> None:
    settings = _load(tmp_path, '[graph]\nmailbox = "efaktura8b@kommune.dk"\n')
    graph = settings.graph  # type: ignore[attr-defined]
    assert graph.mailbox == "efaktura8b@kommune.dk"
    assert (graph.folder, graph.endpoint, graph.ca_file) == (
        "Inbox", "https://graph.microsoft.com/v1.0", None)
    assert (graph.read, graph.send, graph.since) == (True, True, date(2026, 1, 1))
    assert (graph.post_action, graph.category, graph.move_to) == (
        "none", "mailtracker", "Behandlet")
    assert graph.timeout == 60.0
    assert graph.scopes == ("https://graph.microsoft.com/.default",)
    # the sent mail is from the mailbox, signed with the organisation's name
    assert settings.sender.from_address == "efaktura8b@kommune.dk"  # type: ignore[attr-defined]
    assert settings.sender.from_name == "Eksempel Kommune"  # type: ignore[attr-defined]


def test_all_keys(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    graph = _load(tmp_path, f"""[graph]
mailbox = "efaktura8b@kommune.dk"
folder = "Indbakke/EG"
endpoint = "https://graph.microsoft.us/v1.0/"
ca_file = "{ca}"
since = 2026-03-01
post_action = "move"
move_to = "Arkiv"
timeout = 30
""").graph  # type: ignore[attr-defined]
    assert graph.folder == "Indbakke/EG"
    assert graph.endpoint == "https://graph.microsoft.us/v1.0"
    assert graph.ca_file == ca
    assert graph.since == date(2026, 3, 1)
    assert (graph.post_action, graph.move_to, graph.timeout) == ("move", "Arkiv", 30.0)


@pytest.mark.parametrize(("text", "key", "words"), [
    ('[graph]\nfolder = "Inbox"\n', "graph.mailbox", "required"),
    ('[graph]\nmailbox = "a@b.dk"\nendpoint = "http://graph.example.com/v1.0"\n',
     "graph.endpoint", "https"),
    ('[graph]\nmailbox = "a@b.dk"\nendpoint = "ftp://127.0.0.1/v1.0"\n',
     "graph.endpoint", "https"),
    ('[graph]\nmailbox = "a@b.dk"\npost_action = "move"\n', "graph.move_to", "required"),
    ('[graph]\nmailbox = "a@b.dk"\npost_action = "keyword"\n', "graph.post_action", "one of"),
    ('[graph]\nmailbox = "a@b.dk"\nsince = "yesterday"\n', "graph.since", "date"),
    ('[graph]\nmailbox = "a@b.dk"\nwebhook = true\n', "graph.webhook", "unknown key"),
    ('[graph]\nmailbox = "a@b.dk"\nscopes = ["Mail.Read", "Mail.Send"]\n', "graph.scopes",
     "/.default"),
    ('[graph]\nmailbox = "a@b.dk"\n[imap]\nhost = "h"\nusername = "u"\n', "graph.read",
     "remove [imap]"),
    ('[graph]\nmailbox = "a@b.dk"\n[smtp]\nhost = "h"\nfrom_address = "a@b.dk"\n',
     "graph.send", "remove [smtp]"),
])
def test_contradictions_name_the_key(tmp_path: Path, text: str, key: str, words: str) -> None:
    error = _error(tmp_path, text)
    assert error.key == key
    assert words in str(error)


def test_loopback_may_be_plain_http(tmp_path: Path) -> None:
    graph = _load(tmp_path, '[graph]\nmailbox = "a@b.dk"\n'
                            'endpoint = "http://127.0.0.1:8080/v1.0"\n').graph  # type: ignore
    assert graph.endpoint == "http://127.0.0.1:8080/v1.0"


def test_half_and_half(tmp_path: Path) -> None:
    """read = false keeps reading on IMAP while Graph sends (SMTP AUTH off in the tenant)."""
    settings = _load(tmp_path, '[graph]\nmailbox = "a@b.dk"\nread = false\n'
                               '[imap]\nhost = "h"\nusername = "u"\npassword_env = "X"\n'
                               '[trust]\nauthserv_id = "mx.b.dk"\n')
    assert settings.graph.read is False  # type: ignore[attr-defined]
    assert settings.imap is not None  # type: ignore[attr-defined]


def test_graph_needs_oauth2(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[organisation]\nname = "K"\n[graph]\nmailbox = "a@b.dk"\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "[oauth2]" in str(info.value)
