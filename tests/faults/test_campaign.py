"""The fault campaign as tests: one test per seed in CI, or a wall-time run (see campaign.py).

A failure prints the seed, the command that replays it, the violations and the step trace.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from tests.faults.campaign import (
    CI_SEEDS,
    Figures,
    describe,
    long_seconds,
    run_seed,
    seeds_from_env,
)

SEEDS = seeds_from_env() or list(CI_SEEDS)


@pytest.mark.skipif(long_seconds() is not None, reason="the wall-time campaign runs instead")
@pytest.mark.parametrize("seed", SEEDS)
def test_random_faults_break_no_guarantee(seed: int, dovecot: Any, test_ca: Any,
                                          campaign_figures: Figures) -> None:
    out = run_seed(seed, dovecot, test_ca)
    campaign_figures.add(out)
    assert not out.violations, describe(out)


@pytest.mark.slow
@pytest.mark.skipif(long_seconds() is None, reason="set MAILTRACKER_FAULT_LONG=<seconds>")
def test_wall_time_campaign(dovecot: Any, test_ca: Any, campaign_figures: Figures) -> None:
    seconds = long_seconds()
    assert seconds is not None
    deadline = time.monotonic() + seconds
    first = (seeds_from_env() or [int(time.time()) % 1_000_000])[0]
    for seed in itertools.count(first):
        if time.monotonic() >= deadline:
            break
        out = run_seed(seed, dovecot, test_ca)
        campaign_figures.add(out)
        assert not out.violations, describe(out)
