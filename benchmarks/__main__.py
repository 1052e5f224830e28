"""``python -m benchmarks [--quick] [--cases ...]``: mailtracker against its floors.

Starts a throwaway Dovecot and an aiosmtpd server on loopback, fills mailboxes, runs every
case (each ratio measured in one run, alternating the two sides, median of several
repetitions) and prints a Markdown table. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import warnings
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import (
    graph_cases,
    imap_cases,
    mailgen,
    notify_case,
    peers,
    report_case,
    store_cases,
)
from benchmarks.environment import Environment, Mailbox, copy_store
from benchmarks.measure import Row, details, table

CASES = ("scan", "poll", "peers", "notify", "cli", "store", "report", "graph")


@dataclass(frozen=True)
class Plan:
    scan_sizes: tuple[int, ...]
    reps: int
    scan_reps: int
    recipients: int
    handled: int
    cli_reps: int


FULL = Plan(scan_sizes=(10_000, 50_000), reps=7, scan_reps=5, recipients=300, handled=20_000,
            cli_reps=15)
QUICK = Plan(scan_sizes=(2_000, 5_000), reps=5, scan_reps=3, recipients=300, handled=20_000,
             cli_reps=9)


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def _mailbox(env: Environment, size: int) -> tuple[Mailbox, Path]:
    ws, sent = env.sent_workspace()
    base = ws.root / "base-store.json"
    mailgen_relevant = mailgen.fixture_mails() + mailgen.answers(sent)
    copy_store(ws.store_path, base)
    _say(f"filling a mailbox with {size:,} messages")
    mb = env.fill(ws, mailgen.mailbox(size, mailgen_relevant, tag=f"s{size}"), size)
    return mb, base


def _new_mail(count: int) -> list[bytes]:
    rng = random.Random(99)
    now = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
    relevant = next(mailgen.relevant_stream([mailgen.fixture_mails()[0]], "incr"))
    return [mailgen.noise(rng, 900_000 + i, now) for i in range(count - 1)] + [relevant]


def run_imap(env: Environment, plan: Plan, cases: set[str], rows: list[Row],
             rss: list[str]) -> None:
    for size in plan.scan_sizes:
        if not cases & {"scan", "poll"} and size != plan.scan_sizes[0]:
            continue
        mb, base = _mailbox(env, size)
        if size == plan.scan_sizes[0] and "peers" in cases:
            _say(f"peers (imap-tools, getmail6) on {size:,}")
            rows.extend(peers.peer_cases(env, mb, base, reps=plan.reps))
        if "scan" in cases:
            _say(f"initial scan of {size:,}")
            rows.append(imap_cases.scan_case(env, mb, base, reps=plan.scan_reps))
            peak = imap_cases.rss_of_scan(mb, base, imap_cases.ImapTarget.of(env, mb))
            rss.append(f"| scan {size:,} | {peak['ours']['rss_mb']:.0f} MB | "
                       f"{peak['floor']['rss_mb']:.0f} MB | {peak['ours']['store_mb']:.2f} MB |")
        if size == plan.scan_sizes[-1] and "poll" in cases:
            if "scan" not in cases:
                copy_store(base, mb.ws.store_path)
                imap_cases.poll(mb.app())
            scanned = mb.ws.root / "scanned-store.json"
            copy_store(mb.ws.store_path, scanned)
            _say("no-news poll")
            rows.append(imap_cases.no_news_case(env, mb, reps=plan.reps))
            _say("incremental poll")
            rows.append(imap_cases.incremental_case(env, mb, scanned, _new_mail(10),
                                                    reps=plan.reps))


def run_graph(plan: Plan, rows: list[Row]) -> None:
    """The Microsoft Graph cases on the fake Graph (no Dovecot needed)."""
    import tempfile

    from benchmarks.environment import _make

    root = Path(tempfile.mkdtemp(prefix="mtbench-graph", dir="/tmp"))
    ca = _make(root / "tls", "bench")
    server = graph_cases.GraphServer(ca)
    try:
        size = plan.scan_sizes[0]
        _say(f"Graph initial sync of {size:,} and a no-news poll")
        rows.extend(graph_cases.sync_cases(root, ca, server, size, reps=plan.scan_reps))
        _say(f"Graph notify to {plan.recipients} recipients")
        rows.extend(graph_cases.notify_case(root, ca, server, plan.recipients, reps=plan.reps))
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    # aiosmtpd's own deprecation notice, once per message received: not ours to fix.
    warnings.filterwarnings("ignore", "Session.login_data is deprecated")
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smaller mailboxes (2,000 and 5,000) and fewer repetitions")
    parser.add_argument("--reps", type=int, metavar="N",
                        help="repetitions of every case (default: 3 to 15 by case and mode)")
    parser.add_argument("--cases", default=",".join(CASES),
                        help=f"comma-separated subset of {','.join(CASES)} [default: all]")
    args = parser.parse_args(argv)
    cases = set(args.cases.split(","))
    unknown = cases - set(CASES)
    if unknown:
        parser.error(f"unknown case(s): {', '.join(sorted(unknown))}")
    plan = QUICK if args.quick else FULL
    if args.reps:
        plan = replace(plan, reps=args.reps, scan_reps=args.reps, cli_reps=args.reps)
    started = time.monotonic()
    rows: list[Row] = []
    rss: list[str] = []
    if "graph" in cases:
        run_graph(plan, rows)
    if not cases - {"graph"}:
        print(table(rows) + "\n\n" + details(rows))
        return 1 if any(r.verdict == "ABOVE GOAL" for r in rows) else 0
    env = Environment.start()
    try:
        if cases & {"scan", "poll", "peers"}:
            run_imap(env, plan, cases, rows, rss)
        if "notify" in cases:
            _say(f"notify to {plan.recipients} recipients")
            rows.append(notify_case.notify_case(env, plan.recipients, reps=plan.reps))
        if cases & {"cli", "store", "report"}:
            ws, app = store_cases.big_store(env, plan.handled)
            if "cli" in cases:
                _say("CLI start")
                rows.append(store_cases.cli_start_case(ws, plan.handled, reps=plan.cli_reps))
            if "store" in cases:
                _say("store batch write")
                rows.append(store_cases.batch_write_case(ws, app, plan.handled, reps=plan.reps))
            if "report" in cases:
                _say(f"report of {plan.recipients} recipients")
                rows.append(report_case.report_case(ws, app, plan.recipients, plan.handled,
                                                    reps=plan.cli_reps))
    finally:
        env.stop()
    print(f"\nmailtracker benchmarks ({'quick' if args.quick else 'full'} mode, "
          f"{time.monotonic() - started:.0f} s)\n")
    print(table(rows))
    if rss:
        print("\n| peak RSS | mailtracker | floor | state file |\n|---|---:|---:|---:|")
        print("\n".join(rss))
    print("\n" + details(rows))
    return 1 if any(r.verdict == "ABOVE GOAL" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
