"""``python -m tests.faults --long SECONDS [--report figures.json] [--first-seed N]``:
run fresh seeds for a given wall time (the figures in docs/reliability.md come from this)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import pytest

from tests.faults import LONG_ENV, REPORT_ENV, SEEDS_ENV


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faults")
    parser.add_argument("--long", type=float, required=True, metavar="SECONDS")
    parser.add_argument("--report", type=Path, help="write the figures here as JSON")
    parser.add_argument("--first-seed", type=int, help="default: derived from the time")
    args = parser.parse_args()
    os.environ[LONG_ENV] = str(args.long)
    if args.report:
        os.environ[REPORT_ENV] = str(args.report.resolve())
    if args.first_seed is not None:
        os.environ[SEEDS_ENV] = str(args.first_seed)
    root = Path(__file__).resolve().parents[2]
    os.chdir(root)
    return int(pytest.main([str(root / "tests" / "faults"), "-q", "-x", "-rN"]))


if __name__ == "__main__":
    sys.exit(main())
