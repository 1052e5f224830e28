"""Seeds, the wall-time mode and the campaign's figures.

``MAILTRACKER_FAULT_SEEDS=7,42`` replays those seeds; ``MAILTRACKER_FAULT_LONG=600`` runs
fresh seeds for 600 s; ``MAILTRACKER_FAULT_REPORT=path.json`` writes the figures there.
Without them CI runs :data:`CI_SEEDS`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tests.faults import LONG_ENV, SEEDS_ENV
from tests.faults.invariants import check_final, facts_of
from tests.faults.scenario import Outcome, Run
from tests.faults.world import World

if TYPE_CHECKING:
    from tests.plugins.dovecot import Dovecot
    from tests.plugins.tlsca import TestCA

CI_SEEDS = tuple(range(1, 11))


def seeds_from_env() -> list[int] | None:
    raw = os.environ.get(SEEDS_ENV, "").strip()
    return [int(s) for s in raw.replace(",", " ").split()] if raw else None


def long_seconds() -> float | None:
    raw = os.environ.get(LONG_ENV, "").strip()
    return float(raw) if raw else None


def replay_command(seed: int) -> str:
    return f"{SEEDS_ENV}={seed} python -m pytest tests/faults -q"


def run_seed(seed: int, dovecot: Dovecot, ca: TestCA) -> Outcome:
    """One run: random steps with faults, recovery, invariants. Never raises for a
    violation: the outcome lists them, and the run's logs, config and state file are kept
    in :func:`kept_dir`.

    The run lives in its own temporary directory, not pytest's ``tmp_path``: pytest removes
    old base directories of *other* sessions, and would delete a running campaign's state
    file from under it when two sessions run at once.
    """
    root = Path(tempfile.mkdtemp(prefix=f"mtfault-{seed}-"))
    try:
        out = _run(seed, root, dovecot, ca)
        if out.violations:
            keep = kept_dir(seed)
            shutil.rmtree(keep, ignore_errors=True)
            shutil.copytree(root, keep, ignore=shutil.ignore_patterns("ballast"))
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def kept_dir(seed: int) -> Path:
    return Path(tempfile.gettempdir()) / "mailtracker-faults" / f"seed-{seed}"


def _run(seed: int, root: Path, dovecot: Dovecot, ca: TestCA) -> Outcome:
    setup = random.Random(seed * 7919 + 1)
    world = World(root, dovecot, ca, post_action=setup.choice(("none", "none", "keyword",
                                                               "move")))
    run = Run(seed, world)
    try:
        run.play(setup.randint(8, 16))
        last_poll = run.recover()
        final = facts_of(world.snapshot())
        status = world.ws.cli("status", "--json")
        if status.exit_code != 0:
            run.problem(f"status failed after recovery: {status.output}")
        run.out.violations += check_final(final, world.ledger, list(world.smtp.messages),
                                          run.checkpoints, last_poll)
        # Not a violation: a process killed between writing its temp file and renaming it
        # leaves the temp file behind (the state itself is intact).
        run.out.orphaned_temp_files = len(list(world.store_path.parent.glob(
            f".{world.store_path.name}.*.tmp")))
    except Exception as exc:  # a harness or store failure is reported with its seed
        run.problem(f"run aborted: {type(exc).__name__}: {exc}")
    finally:
        run.out.inbound = world.ledger.inbound
        run.out.outbound = len(world.smtp.messages)
        if run.out.violations:  # the state file, its journal and lock files, for a look
            shutil.copytree(world.store_path.parent, root / "final-state",
                            ignore=shutil.ignore_patterns("ballast"), dirs_exist_ok=True)
        world.close()
    return run.out


def describe(out: Outcome) -> str:
    """The failure report of a run: seed, replay command, violations, step trace."""
    return "\n".join([
        f"seed {out.seed}: {len(out.violations)} violation(s); replay with: "
        f"{replay_command(out.seed)}; logs and state in {kept_dir(out.seed)}",
        *(f"  ✗ {v}" for v in out.violations),
        "trace:", *out.trace,
    ])


@dataclass
class Figures:
    """Totals over every run of a campaign."""

    runs: int = 0
    steps: int = 0
    commands: int = 0
    inbound: int = 0
    outbound: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    violations: int = 0
    failed_seeds: list[int] = field(default_factory=list)
    orphaned_temp_files: int = 0
    started: float = field(default_factory=time.monotonic)

    def add(self, out: Outcome) -> None:
        self.runs += 1
        self.steps += out.steps
        self.commands += out.commands
        self.inbound += out.inbound
        self.outbound += out.outbound
        self.faults.update(out.faults)
        self.violations += len(out.violations)
        self.orphaned_temp_files += out.orphaned_temp_files
        if out.violations:
            self.failed_seeds.append(out.seed)

    def summary(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()))
        return (f"fault campaign: {self.runs} run(s), {self.steps} steps, {self.commands} "
                f"mailtracker processes, {sum(self.faults.values())} faults injected "
                f"({kinds}), {self.inbound} inbound messages, {self.outbound} outbound "
                f"deliveries, {self.violations} violation(s)"
                + (f" in seeds {self.failed_seeds}" if self.failed_seeds else "")
                + f"; {self.orphaned_temp_files} temp file(s) left by killed writers"
                + f"; {time.monotonic() - self.started:.0f} s")

    def write(self, path: Path) -> None:
        doc = {"runs": self.runs, "steps": self.steps, "processes": self.commands,
               "faults_injected": sum(self.faults.values()), "faults": dict(self.faults),
               "inbound_messages": self.inbound, "outbound_deliveries": self.outbound,
               "violations": self.violations, "failed_seeds": self.failed_seeds,
               "orphaned_temp_files": self.orphaned_temp_files,
               "seconds": round(time.monotonic() - self.started)}
        path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")
