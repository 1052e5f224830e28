"""``mailtracker demo``: the whole loop in one process, on embedded loopback servers.

:func:`run_demo` is the entry point (see :mod:`mailtracker.demo.scenario`).
"""

from mailtracker.demo.scenario import DemoResult, DemoStateError, run_demo

__all__ = ["DemoResult", "DemoStateError", "run_demo"]
