"""A non-editable install (a built wheel) finds its templates and task definitions when run
from another directory, as a municipality would install it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                          check=False)


def test_wheel_works_from_another_directory(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist),
                  str(REPO)], tmp_path, dict(os.environ))
    assert built.returncode == 0, built.stderr
    wheel = next(dist.glob("mailtracker-*.whl"))
    site = tmp_path / "site"
    installed = _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                      str(site), str(wheel)], tmp_path, dict(os.environ))
    assert installed.returncode == 0, installed.stderr

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    env.pop("MAILTRACKER_CONFIG", None)
    where = _run([sys.executable, "-c", "import mailtracker; print(mailtracker.__file__)"],
                 work, env)
    assert where.stdout.strip().startswith(str(site))

    cli = [sys.executable, "-m", "mailtracker"]
    assert _run([*cli, "init", "--municipality", "Ærø Kommune"], work, env).returncode == 0
    added = _run([*cli, "recipients", "add", "--role", "system_owner", "--name",
                  "Søren Ærø-Åse", "--email", "soeren@aeroe.dk"], work, env)
    assert added.returncode == 0, added.stderr
    preview = work / "preview"
    dry = _run([*cli, "notify", "--dry-run", "--preview-dir", str(preview)], work, env)
    assert dry.returncode == 0, dry.stderr
    [eml] = list(preview.glob("*.eml"))
    assert b"Subject:" in eml.read_bytes()
    status = _run([*cli, "status", "--json"], work, env)
    assert status.returncode == 0 and '"klik_status": "ikke startet"' in status.stdout
