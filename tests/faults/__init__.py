"""Randomized fault campaign: real Dovecot, real SMTP server, real ``mailtracker`` processes.

Each run (one seed) builds a fresh world (mailbox, SMTP server, loopback proxies in front of
both, a tiny tmpfs for the state file), plays a random sequence of steps — mail arriving,
``notify``/``poll``/``watch`` processes — and injects faults at random points: SIGKILL, cut or
stalled links, SMTP 4xx/5xx/slow and late 250, UIDVALIDITY resets, a full disk, a second
instance. Then it recovers without faults and checks the invariants (``invariants.py``).

Modules: ``mails`` (what arrives in the inbox, and the ledger of it), ``world`` (servers,
workspace, processes, the auto-responding recipients), ``scenario`` (the random steps and
faults), ``invariants`` (the checks), ``campaign`` (seeds, wall-time mode, figures).
Run: ``pytest tests/faults`` (CI seeds), ``MAILTRACKER_FAULT_SEEDS=1234 pytest tests/faults``
(replay), ``python -m tests.faults --long 600`` (as many seeds as fit in 600 s).
"""

SEEDS_ENV = "MAILTRACKER_FAULT_SEEDS"  # seeds to run, e.g. "7,42"
LONG_ENV = "MAILTRACKER_FAULT_LONG"  # run fresh seeds for this many seconds instead
REPORT_ENV = "MAILTRACKER_FAULT_REPORT"  # write the figures to this JSON file
