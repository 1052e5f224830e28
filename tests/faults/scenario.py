"""One randomized run: steps drawn from a seeded RNG, faults injected at random moments.

Every decision comes from ``random.Random(seed)``, so a seed replays the same steps, mail and
faults; only the operating system's timing differs between replays. The waits here are the
*fault timing* (kill after 0.4 s, stall for 2 s), never a sleep that makes a check pass:
every check waits for an observable event or a process exit.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.faults.invariants import Facts, check_exit, facts_of
from tests.faults.mails import MailSource
from tests.faults.world import TIMEOUT, Proc, World, first_to_exit, tail, wait_for_line
from tests.plugins.smtpd import DELIVER_AND_DROP, DROP, HOLD

PEOPLE = [
    ("system_owner", "Søren Ærø-Åse", "soeren@kommune.example"),
    ("agreement_admin", "Hansen, Bjørn", "bjoern.hansen@kommune.example"),
    ("oeir_coordinator", "Åse Øberg", "aase.oeberg@kommune.example"),
    ("finance", "Mette Frederiksen-Nørgaard", "okonomi@kommune.example"),
    ("kp_owner", "Karen Pedersen", "karen.pedersen@kommune.example"),
    ("system_owner", "Ib Ørsted", "ib.oersted@kommune.example"),
    ("agreement_admin", "Lærke Dahl", "laerke.dahl@kommune.example"),
    ("oeir_coordinator", "Jens Kjær", "jens.kjaer@kommune.example"),
]
BEHAVIOURS = ("none", "reply", "auto", "bounce")
STEPS = {"deliver": 3.0, "notify": 2.0, "tick": 1.0, "poll": 2.0, "watch": 2.0, "link": 1.0,
         "recipients": 0.7, "uidvalidity": 0.5, "disk": 0.6}
PROCESS_TIMEOUT = 90.0


@dataclass
class Outcome:
    """What one run did and found."""

    seed: int
    steps: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    commands: int = 0
    inbound: int = 0
    outbound: int = 0
    violations: list[str] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)
    orphaned_temp_files: int = 0


class Run:
    """Plays one seed on ``world`` (see the module docstring)."""

    def __init__(self, seed: int, world: World):
        self.rng = random.Random(seed)
        self.world = world
        self.out = Outcome(seed)
        self.mail = MailSource(self.rng, seed, world.ledger)
        self.watch: Proc | None = None
        self.disk_full = False
        self.disk_full_steps = 0
        self.checkpoints: list[Facts] = []
        self.people = self.rng.sample(PEOPLE, len(PEOPLE))
        self.added = 0
        self.started = time.monotonic()

    def note(self, text: str) -> None:
        self.out.trace.append(f"{time.monotonic() - self.started:7.2f}  {text}")

    def problem(self, text: str) -> None:
        self.out.violations.append(text)

    def fault(self, name: str) -> None:
        self.out.faults[name] += 1
        self.note(f"  fault: {name}")

    # -- the run ---------------------------------------------------------------------------

    def play(self, steps: int) -> None:
        self._add_recipients(self.rng.randint(2, 4))
        names, weights = zip(*STEPS.items(), strict=True)
        for _ in range(steps):
            name = self.rng.choices(names, weights)[0]
            self.note(f"step {self.out.steps}: {name}")
            getattr(self, f"_step_{name}")()
            self.out.steps += 1
            if name != "disk":
                self._disk_recovers()
            self._check_watch_alive()
            self.checkpoint()

    def checkpoint(self) -> None:
        try:
            self.checkpoints.append(facts_of(self.world.snapshot()))
        except Exception as exc:  # the store must parse at every moment
            self.problem(f"state file unreadable: {type(exc).__name__}: {exc}")

    # -- steps -----------------------------------------------------------------------------

    def _step_deliver(self) -> None:
        count = self.rng.choice((1, 1, 2, 3, 5, 12, 30))
        self.note(f"  deliver {count}")
        self.world.deliver(self.mail.draw(count))

    def _step_recipients(self) -> None:
        self._add_recipients(self.rng.randint(1, 2))

    def _add_recipients(self, count: int) -> None:
        for role, name, email in self.people[self.added:self.added + count]:
            self.added += 1
            kind = self.rng.choice(BEHAVIOURS)
            self.world.responder.behaviour[email] = (kind, name)
            result = self.world.ws.cli("recipients", "add", "--role", role, "--name", name,
                                       "--email", email)
            self.note(f"  add {email} ({kind}): exit {result.exit_code}")
            allowed = {0, 4} if self.disk_full else {0}
            if result.exit_code not in allowed:
                self.problem(f"recipients add exited {result.exit_code}: {result.output}")

    def _step_notify(self) -> None:
        self._command("notify")

    def _step_tick(self) -> None:
        self._command("tick")

    def _step_poll(self) -> None:
        if self.watch is not None and self.rng.random() < 0.7:
            # ``watch`` holds the inbox: let it do the work (a poll now is only refused).
            self._step_deliver()
            caught_up = self.world.wait_until_caught_up(timeout=10)
            self.note(f"  watch caught up: {caught_up}")
            return
        self._command("poll")

    def _step_watch(self) -> None:
        if self.watch is None:
            self._start_watch()
            return
        roll = self.rng.random()
        if roll < 0.4:  # killed while it works through a batch
            self.world.deliver(self.mail.draw(self.rng.choice((5, 12, 30))))
            _pause(self.rng.uniform(0.0, 1.0))
            self._kill_watch()
        elif roll < 0.7:
            self._kill_watch()
        else:
            self._stop_watch()

    def _step_link(self) -> None:
        if self.watch is None:
            return self._step_deliver()
        proxy = self.world.imap_proxy
        if self.rng.random() < 0.6:
            self.fault("link-cut:imap")
            proxy.cut()
        else:
            self.fault("link-stall:imap")
            proxy.blackhole()
            self.world.deliver(self.mail.draw(1))  # mail arriving while the link is dead
            _pause(self.rng.uniform(0.5, 5.0))
            proxy.restore()
        return None

    def _step_uidvalidity(self) -> None:
        if self.watch is not None:
            self._kill_watch()  # a reset needs the folder closed
        self.fault("uidvalidity-reset")
        self.world.reset_uidvalidity()

    def _step_disk(self) -> None:
        disk = self.world.disk
        if not disk.mounted:
            self.note("  (no tmpfs here: disk faults skipped)")
            return
        if self.disk_full:
            disk.free()
            self.disk_full = False
            self.note("  disk freed")
            return
        size = self.world.store_path.stat().st_size if self.world.store_path.exists() else 0
        disk.fill(self.rng.randint(0, int(size * 1.5) + 4096))
        self.disk_full = True
        self.disk_full_steps = self.rng.randint(1, 3)
        self.fault("disk-full")

    def _disk_recovers(self) -> None:
        """Someone frees space again after a few steps."""
        if self.disk_full:
            self.disk_full_steps -= 1
            if self.disk_full_steps <= 0:
                self.world.disk.free()
                self.disk_full = False
                self.note("  disk freed")

    # -- watch -----------------------------------------------------------------------------

    def _start_watch(self) -> None:
        first = self.world.start("watch")
        self.out.commands += 1
        if self.rng.random() < 0.3:
            _pause(self.rng.uniform(0.0, 0.8))
            second = self.world.start("watch")
            self.out.commands += 1
            self.fault("second-instance:watch")
            loser = first_to_exit((first, second), timeout=30)
            if loser is None:
                self.problem("two watch processes ran at the same time on one state file")
                second.kill()
                loser = second
            code = loser.wait(5)
            if code != 5:
                self.problem(f"second watch exited {code}, not 5 (locked):\n{loser.output()}")
            first = second if loser is first else first
        self.watch = first
        wait_for_line(first, "watching for new mail", timeout=10)

    def _kill_watch(self) -> None:
        assert self.watch is not None
        if self.watch.kill():
            self.fault("sigkill:watch")
        self.watch.wait(10)
        self.watch = None

    def _stop_watch(self) -> None:
        assert self.watch is not None
        self.watch.terminate()
        code = self.watch.wait(30)
        self.note(f"  watch stopped: {code}")
        # SIGTERM before the handlers are installed (Python still starting) ends the process
        # like SIGKILL would; once the watch is connected it must stop cleanly.
        started = "watching for new mail" in self.watch.output()
        if code != 0 and (started or code != -15):
            self.problem(f"watch did not stop cleanly on SIGTERM ({code}):\n"
                         f"{tail(self.watch.output())}")
            self.watch.kill()
        self.watch = None

    def _check_watch_alive(self) -> None:
        if self.watch is not None and not self.watch.running():
            if self.watch.popen.returncode == 5 and "already running" in self.watch.output():
                self.note("  watch lost the lock to a poll started meanwhile")
                self.watch = None
                return
            self.problem(f"watch exited by itself ({self.watch.popen.returncode}):\n"
                         f"{tail(self.watch.output())}")
            self.watch = None

    # -- one command with faults -----------------------------------------------------------

    def _command(self, command: str) -> None:
        timers: list[threading.Timer] = []
        proc = self.world.start(command)
        self.out.commands += 1
        procs = [proc]
        for fault in self._pick_faults(command):
            timers += self._inject(fault, command, proc, procs)
        for p in list(procs):
            code = p.wait(PROCESS_TIMEOUT)
            if code is None:
                self.problem(f"{command} hung for {PROCESS_TIMEOUT:g} s:\n{tail(p.output())}")
                p.kill()
                p.wait(10)
        for timer in timers:
            timer.cancel()
            if timer.is_alive():
                timer.join()
        self._after_command()
        for p in procs:
            self.note(f"  {p.command} exit {p.popen.returncode}{' (killed)' * p.killed}")
            problem = check_exit(p.command, p.popen.returncode, p.output(), killed=p.killed)
            if problem:
                self.problem(problem)

    def _after_command(self) -> None:
        self.world.imap_proxy.restore()
        self.world.smtp_proxy.restore()
        self.world.smtp.faults.clear()
        self.world.smtp.release()

    def _pick_faults(self, command: str) -> list[str]:
        menu = ["sigkill", "link-cut", "link-stall", "second-instance"]
        if command in ("notify", "tick"):
            menu += ["smtp"] * (5 if self.watch is not None else 3)
        count = self.rng.choice((0, 1, 1, 2, 2))
        return self.rng.sample(menu, count)

    def _inject(self, fault: str, command: str, proc: Proc, procs: list[Proc]
                ) -> list[threading.Timer]:
        # Within the command's life: a poll is over in about 0.5 s (0.35 s of it starting
        # Python), a notify or tick with a few messages in about 1 s.
        delay = self.rng.uniform(0.2, 0.8) if command == "poll" else self.rng.uniform(0.2, 1.4)
        side = "imap" if command == "poll" else "smtp"
        proxy = self.world.imap_proxy if side == "imap" else self.world.smtp_proxy
        self.note(f"  plan {fault} at {delay:.2f} s")
        if fault == "sigkill":
            return [self._later(delay, lambda: proc.kill() and self.fault(f"sigkill:{command}"))]
        if fault == "link-cut":
            return [self._later(delay, lambda: proc.running() and (
                self.fault(f"link-cut:{side}"), proxy.cut()))]
        if fault == "link-stall":
            stall = self.rng.uniform(0.3, 4.0)
            return [self._later(delay, lambda: proc.running() and (
                        self.fault(f"link-stall:{side}"), proxy.blackhole())),
                    self._later(delay + stall, proxy.restore)]
        if fault == "second-instance":
            _pause(self.rng.uniform(0.0, 0.6))
            procs.append(self.world.start(command))
            self.out.commands += 1
            self.fault(f"second-instance:{command}")
            return []
        return self._smtp_fault()

    def _smtp_fault(self) -> list[threading.Timer]:
        faults = self.world.smtp.faults
        rcpt = self.rng.choice(self.people[:max(1, self.added)])[2]
        # A slow 250 is the common case in real life (content scanning); it also opens the
        # window in which a watch records answers to the message being sent.
        kind = self.rng.choice(("mail451", "rcpt450", "rcpt550", "data451", "data554",
                                "hold250", "hold250", "hold250", "deliver-drop", "data-drop"))
        times = self.rng.randint(1, 4)
        if kind == "mail451":
            faults.on_command("MAIL", "451 4.3.0 Try again later", times=times)
        elif kind == "rcpt450":
            faults.on_rcpt(rcpt, "450 4.2.1 Mailbox busy", times=times)
        elif kind == "rcpt550":
            faults.on_rcpt(rcpt, "550 5.1.1 No such user", times=1)
        elif kind == "data451":
            faults.after_data("451 4.3.0 Queue full", times=times)
        elif kind == "data554":
            faults.after_data("554 5.6.0 Message rejected", times=1)
        elif kind == "deliver-drop":
            faults.after_data(DELIVER_AND_DROP, times=1)
        elif kind == "data-drop":
            faults.on_command("DATA", DROP, times=1)
        else:
            faults.after_data(HOLD, times=1)
            hold = self.rng.uniform(0.2, 2 * TIMEOUT)
            kind = "late250" if hold > TIMEOUT else "slow250"
            self.fault(f"smtp:{kind}")
            return [self._later(hold, self.world.smtp.release)]
        self.fault(f"smtp:{kind}")
        return []

    @staticmethod
    def _later(delay: float, action: Callable[[], object]) -> threading.Timer:
        timer = threading.Timer(delay, action)
        timer.daemon = True
        timer.start()
        return timer

    # -- recovery --------------------------------------------------------------------------

    def recover(self) -> dict[str, object] | None:
        """Remove every fault and run to completion; the final ``poll --json`` document.

        Sending and reading alternate until a round changes nothing: answers to our mail
        arrive after each send, and milestones found by a poll make event mail due.
        """
        self.note("recovery")
        self._after_command()
        self.world.disk.free()
        self.disk_full = False
        if self.watch is not None:
            self._stop_watch()
        self._recovery_command("notify")
        last: dict[str, object] | None = None
        for _ in range(4):
            tick = self._recovery_command("tick", "--json")
            self.world.responder.drain()
            last = self._recovery_command("poll", "--json")
            if not (tick and tick.get("results")) and not (last and last.get("changes")):
                break
        else:
            self.problem("recovery did not settle in 4 rounds of tick and poll")
        return self._recovery_command("poll", "--json") if last is not None else None

    def _recovery_command(self, command: str, *args: str) -> dict[str, object] | None:
        import json

        proc = self.world.start(command, *args)
        self.out.commands += 1
        code = proc.wait(PROCESS_TIMEOUT)
        self.note(f"  recovery {command} exit {code}")
        if code != 0:
            self.problem(f"recovery {command} exited {code} with no faults left:\n"
                         f"{tail(proc.output())}")
            proc.kill()
            return None
        if "--json" in args:
            doc: dict[str, object] = json.loads(proc.stdout.read_text(encoding="utf-8"))
            return doc
        return None


def _pause(seconds: float) -> None:
    """Fault timing (how long a link stays dead, when the second instance starts)."""
    time.sleep(seconds)
