"""``mailtracker demo``: the whole loop in one process, on loopback servers.

:func:`mailtracker.demo.scenario.run_demo` is the entry point. The demo needs the ``demo``
extra (aiosmtpd, trustme); :func:`require_demo_extra` says how to get it when it is missing.
"""

from __future__ import annotations

import importlib.util

from mailtracker.errors import MissingExtraError

#: What ``pip install 'mailtracker[demo]'`` adds, by import name.
DEMO_EXTRA = ("aiosmtpd", "trustme")


def require_demo_extra() -> None:
    """Raise MissingExtraError (one line: what is missing, how to get it) unless the demo
    extra is installed."""
    missing = [name for name in DEMO_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise MissingExtraError(f"the demo needs {' and '.join(missing)}, which a plain install "
                                "leaves out: pip install 'mailtracker[demo]'")
