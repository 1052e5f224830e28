"""``keyring = true``: the password comes from the system keyring, through the real ``keyring``
package. The backend is an in-memory one registered with ``keyring.set_keyring`` (the
package's public way to choose a backend), since a test machine has no desktop keyring.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.plugins.smtpd import SmtpTestServer
from tests.plugins.workspace import SMTP_PW_ENV, THREE, Workspace

keyring = pytest.importorskip("keyring", reason="the keyring extra is not installed")
from keyring.backend import KeyringBackend  # noqa: E402


class MemoryKeyring(KeyringBackend):
    """A keyring backend that keeps passwords in a dict."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.passwords: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.passwords.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.passwords[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.passwords.pop((service, username), None)


@pytest.fixture
def memory_keyring() -> Iterator[MemoryKeyring]:
    previous = keyring.get_keyring()
    backend = MemoryKeyring()
    keyring.set_keyring(backend)
    try:
        yield backend
    finally:
        keyring.set_keyring(previous)


def test_keyring_true_sends_with_the_keyring_password_and_says_which_entry_is_missing(
        smtp_server: SmtpTestServer, make_workspace: Callable[..., Workspace],
        memory_keyring: MemoryKeyring) -> None:
    ws = make_workspace(smtp=smtp_server)
    ws.add_recipients(THREE)
    password = ws.environ.pop(SMTP_PW_ENV)
    smtp = ws.sections["smtp"]
    smtp.pop("password_env")
    smtp["keyring"] = True
    ws.write()
    account = f"smtp:{smtp['username']}"

    missing = ws.cli("notify")
    assert missing.exit_code == 3, missing.output
    assert f"no password in the keyring for service 'mailtracker', account '{account}'" \
        in missing.output
    assert f"keyring set mailtracker {account}" in missing.output
    assert smtp_server.messages == []

    memory_keyring.set_password("mailtracker", account, password)
    sent = ws.cli("notify")
    assert sent.exit_code == 0, sent.output
    assert sorted(r for m in smtp_server.messages for r in m.rcpt_tos) == sorted(
        e for _, _, e in THREE)
    assert password not in sent.output and password not in missing.output
    assert password not in ws.store_path.read_text(encoding="utf-8")
