"""Config errors name the file and the key; secrets never come from the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailtracker.errors import ConfigError, SecretError
from mailtracker.settings.config import load_settings, resolve_config_path
from mailtracker.settings.secrets import resolve_password

BASE = """
[organisation]
name = "Aarhus Kommune"
[smtp]
host = "smtp.aarhus.dk"
port = 587
tls = "starttls"
username = "kp@aarhus.dk"
password_env = "MT_PW"
from_address = "kp@aarhus.dk"
from_name = "KP-systemansvarlig"
"""


def _write(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "mailtracker.toml"
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def test_minimal_config_loads_with_defaults(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, BASE))
    assert settings.organisation == "Aarhus Kommune"
    assert settings.task_definition == "efaktura-8b"
    assert settings.language == "da"
    assert settings.store_path == tmp_path.resolve() / "mailtracker.json"
    assert settings.smtp is not None and settings.smtp.tls == "starttls"
    assert settings.smtp.timeout == 30.0


def test_missing_file_names_path_and_suggests_init(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: config file not found.*mailtracker init"):
        load_settings(tmp_path / "nope.toml")


def test_invalid_toml_names_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"mailtracker\.toml: invalid TOML"):
        load_settings(_write(tmp_path, "[smtp\nhost="))


@pytest.mark.parametrize(("patch", "key", "message"), [
    ('tls = "starttls"', "smtp.tls", "only allowed for a loopback host"),
    ('port = 587', "smtp.port", "between 1 and 65535"),
    ('from_address = "kp@aarhus.dk"', "smtp.from_address", "not a valid e-mail"),
    ('username = "kp@aarhus.dk"', "smtp.hostname", "unknown key"),
])
def test_bad_values_name_the_key(tmp_path: Path, patch: str, key: str, message: str) -> None:
    replacement = {
        "smtp.tls": 'tls = "none"',
        "smtp.port": "port = 99999",
        "smtp.from_address": 'from_address = "kp at aarhus"',
        "smtp.hostname": 'username = "kp@aarhus.dk"\nhostname = "x"',
    }[key]
    path = _write(tmp_path, BASE.replace(patch, replacement))
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert key in str(info.value)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_tls_none_allowed_for_loopback(tmp_path: Path) -> None:
    text = BASE.replace('host = "smtp.aarhus.dk"', 'host = "127.0.0.1"').replace(
        'tls = "starttls"', 'tls = "none"')
    settings = load_settings(_write(tmp_path, text))
    assert settings.smtp is not None and settings.smtp.tls == "none"


def test_password_in_file_is_refused_and_not_echoed(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE + 'password = "hunter2-secret"\n', mode=0o644)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "smtp.password" in str(info.value)
    assert "readable by other users" in str(info.value)
    assert "hunter2" not in str(info.value)


def test_imap_requires_authserv_id_in_dmarc_mode(tmp_path: Path) -> None:
    text = BASE + """
[imap]
host = "imap.aarhus.dk"
username = "kp@aarhus.dk"
password_env = "MT_PW"
"""
    with pytest.raises(ConfigError, match=r"trust\.authserv_id: is required"):
        load_settings(_write(tmp_path, text))


def test_resolution_order(tmp_path: Path) -> None:
    assert resolve_config_path("x.toml", {"MAILTRACKER_CONFIG": "y.toml"}) == Path("x.toml")
    assert resolve_config_path(None, {"MAILTRACKER_CONFIG": "y.toml"}) == Path("y.toml")
    assert resolve_config_path(None, {}, cwd=tmp_path) == tmp_path / "config/mailtracker.toml"


def test_password_from_env_and_command(tmp_path: Path) -> None:
    settings = load_settings(_write(tmp_path, BASE))
    assert settings.smtp is not None
    source = settings.smtp.secret
    assert resolve_password(source, {"MT_PW": "s3cret"}, section="smtp", username="u") == "s3cret"
    with pytest.raises(SecretError, match="MT_PW is not set"):
        resolve_password(source, {}, section="smtp", username="u")
    cmd = load_settings(_write(tmp_path, BASE.replace(
        'password_env = "MT_PW"', "password_command = \"printf 'pw-from-cmd\\\\nignored'\"")))
    assert cmd.smtp is not None
    assert resolve_password(cmd.smtp.secret, {}, section="smtp", username="u") == "pw-from-cmd"


def test_failing_password_command_does_not_leak_stdout(tmp_path: Path) -> None:
    text = BASE.replace('password_env = "MT_PW"',
                        "password_command = \"sh -c 'echo topsecret; echo gpg: failed >&2; "
                        "exit 3'\"")
    settings = load_settings(_write(tmp_path, text))
    assert settings.smtp is not None
    with pytest.raises(SecretError) as info:
        resolve_password(settings.smtp.secret, {}, section="smtp", username="u")
    assert "status 3" in str(info.value) and "gpg: failed" in str(info.value)
    assert "topsecret" not in str(info.value)


def test_every_table_reader_error_names_the_file_and_the_key(tmp_path: Path) -> None:
    """One reader for the config file and the task definitions: a typo anywhere is refused
    with the file and the key, never ignored."""
    from mailtracker.errors import TaskDefinitionError
    from mailtracker.resources import data_dir
    from mailtracker.settings.taskdef import load_task

    source = (data_dir("config") / "tasks" / "efaktura-8b.toml").read_text(encoding="utf-8")
    cases = {
        "roles[1].lable_da": source.replace('label_da = "Aftaleadministrator"',
                                            'lable_da = "Aftaleadministrator"'),
        "milestones[0].source": source.replace('\nsource = "mail"\n', '\nsource = "e-mail"\n', 1),
        "reminders.max_count": source.replace("max_count = 1", "max_count = -1"),
        "inbound.rules[0].senders": source + '\n[[inbound.rules]]\nname = "x"\n'
                                             'milestone = "guide_received"\nsenders = ["nobody"]\n'
                                             'words = ["x"]\n',
    }
    for key, text in cases.items():
        path = tmp_path / "task.toml"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(TaskDefinitionError) as caught:
            load_task(path)
        assert str(caught.value).startswith(f"{path}: ") and key.split("[")[0] in str(
            caught.value), (key, str(caught.value))
