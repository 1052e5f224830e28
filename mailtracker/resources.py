"""Where the packaged ``templates/`` and ``config/`` directories are.

A wheel carries them inside the package as ``mailtracker/_data/`` (see pyproject.toml); a
source checkout or editable install has them beside the package at the repository root.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """The packaged directory ``name`` ("templates" or "config")."""
    installed = _PACKAGE / "_data" / name
    if installed.is_dir():
        return installed
    return _PACKAGE.parent / name
