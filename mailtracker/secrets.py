"""Passwords for SMTP and IMAP: from an env var, a command, or the system keyring.

Never from the config file, never logged. ``password_command`` works like mbsync's PassCmd:
its first line of output is the password (e.g. ``pass show mail/kommune``).
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Mapping

from mailtracker.config import SecretSource
from mailtracker.errors import SecretError

KEYRING_SERVICE = "mailtracker"


def resolve_password(source: SecretSource, environ: Mapping[str, str], *, section: str,
                     username: str | None) -> str | None:
    """The password for ``section`` ("smtp"/"imap"), or None if no source is configured."""
    if source.password_env:
        value = environ.get(source.password_env)
        if not value:
            raise SecretError(f"environment variable {source.password_env} is not set "
                              f"(named by password_env)", key=f"{section}.password_env")
        return value
    if source.password_command:
        return _from_command(source.password_command, section)
    if source.keyring:
        return _from_keyring(section, username)
    return None


def _from_command(command: str, section: str) -> str:
    key = f"{section}.password_command"
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise SecretError(f"cannot parse the command: {exc}", key=key) from None
    if not argv:
        raise SecretError("is empty", key=key)
    try:
        result = subprocess.run(argv, capture_output=True, timeout=60, check=False,
                                stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise SecretError(f"command not found: {argv[0]}", key=key) from None
    except subprocess.TimeoutExpired:
        raise SecretError("the command did not finish within 60 s", key=key) from None
    if result.returncode != 0:
        # The command's stderr may be useful (e.g. "gpg: decryption failed"), its stdout not:
        # stdout is where a password would be.
        err = result.stderr.decode("utf-8", "replace").strip().splitlines()
        hint = f": {err[-1][:200]}" if err else ""
        raise SecretError(f"the command exited with status {result.returncode}{hint}", key=key)
    lines = result.stdout.decode("utf-8", "replace").splitlines()
    if not lines or not lines[0]:
        raise SecretError("the command printed no password", key=key)
    return lines[0]


def _from_keyring(section: str, username: str | None) -> str:
    key = f"{section}.keyring"
    try:
        import keyring  # optional dependency: pip install 'mailtracker[keyring]'
    except ImportError:
        raise SecretError("keyring = true needs the 'keyring' package "
                          "(pip install 'mailtracker[keyring]')", key=key) from None
    account = f"{section}:{username or ''}"
    try:
        value = keyring.get_password(KEYRING_SERVICE, account)
    except Exception as exc:  # keyring backends raise their own types
        raise SecretError(f"keyring error: {type(exc).__name__}", key=key) from None
    if not value:
        raise SecretError(f"no password in the keyring for service {KEYRING_SERVICE!r}, account "
                          f"{account!r} (store one with: keyring set {KEYRING_SERVICE} {account})",
                          key=key)
    return str(value)
