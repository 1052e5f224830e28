"""One scan in a fresh process, to read its peak RSS (``python -m benchmarks.child``).

``scan CONFIG``: ``mailtracker poll``'s work (run_poll) on the workspace at CONFIG, with the
passwords taken from the environment. ``floor-scan TARGET_JSON``: the bare-client floor.
Prints one JSON line: seconds, peak RSS in MB, messages scanned.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from benchmarks.measure import peak_rss_mb


def main(argv: list[str]) -> None:
    kind, arg = argv
    start = time.perf_counter()
    if kind == "scan":
        from mailtracker.app import open_app
        from mailtracker.inbound.poller import run_poll

        report = run_poll(open_app(Path(arg), dict(os.environ)))
        scanned = report.scanned
    elif kind == "floor-scan":
        from benchmarks.imap_cases import ImapTarget, floor_scan

        scanned = floor_scan(ImapTarget(**json.loads(arg)))
    else:
        raise SystemExit(f"unknown child kind {kind!r}")
    print(json.dumps({"seconds": time.perf_counter() - start, "rss_mb": peak_rss_mb(),
                      "scanned": scanned}))


if __name__ == "__main__":
    main(sys.argv[1:])
