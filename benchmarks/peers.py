"""Peers: mailtracker beside two other tools that watch an IMAP mailbox, all as whole processes
(interpreter start, imports, TLS login and the work), on the same Dovecot mailbox.

* **imap-tools**: a minimal watcher, the script below: ``fetch(AND(uid="n:*"), bulk=500,
  mark_seen=False)`` with the last UID kept in a file. It fetches whole messages, as
  imap-tools does by default.
* **getmail6**: ``getmail`` with a ``SimpleIMAPSSLRetriever`` into a Maildir and
  ``read_all = false`` (it remembers what it has seen in its ``oldmail`` file).

mailtracker is ``mailtracker poll`` as a user runs it. The first scan starts each tool from
nothing (a fresh state file, no watermark file, an empty Maildir and getmail directory); the
no-news poll runs after each has seen the whole box. getmail6 is slow enough on a big box
(minutes) that its first scan runs once; its no-news poll is measured like the others.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.environment import Environment, Mailbox, copy_store
from benchmarks.imap_cases import ImapTarget
from benchmarks.measure import Row, compare
from benchmarks.store_cases import compile_package, mailtracker_command

IMAP_TOOLS_WATCHER = """\
import pathlib, ssl, sys
from imap_tools import AND, MailBox
host, port, ca, user, password, state = sys.argv[1:7]
mark = pathlib.Path(state)
last = int(mark.read_text()) if mark.exists() else 0
top = last
with MailBox(host, int(port), ssl_context=ssl.create_default_context(cafile=ca)).login(
        user, password, "INBOX") as box:
    for message in box.fetch(AND(uid=f"{last + 1}:*"), bulk=500, mark_seen=False):
        top = max(top, int(message.uid))  # "n:*" also returns the last message: skip it
mark.write_text(str(top))
"""

GETMAIL_RC = """\
[retriever]
type = SimpleIMAPSSLRetriever
server = {host}
port = {port}
username = {user}
password = {password}
mailboxes = ("INBOX",)
ca_certs = {ca}

[destination]
type = Maildir
path = {maildir}/
{user_line}
[options]
read_all = false
delete = false
verbose = 0
message_log_verbose = false
"""


class _Peers:
    """The three tools' commands and their state, for one mailbox."""

    def __init__(self, env: Environment, mb: Mailbox, base_store: Path) -> None:
        self.mb, self.base_store = mb, base_store
        target = ImapTarget.of(env, mb)
        self.root = mb.ws.root / "peers"
        self.root.mkdir(exist_ok=True)
        self.env = {**os.environ, **mb.ws.environ}
        self.cwd = Path(__file__).resolve().parents[1]
        self.ours = mailtracker_command(mb.ws.config_path, "poll")
        script = self.root / "imap_tools_watcher.py"
        script.write_text(IMAP_TOOLS_WATCHER, encoding="utf-8")
        self.mark = self.root / "imap-tools.uid"
        self.imap_tools = [sys.executable, str(script), target.host, str(target.port),
                           target.ca_file, target.user, target.password, str(self.mark)]
        self.getmail_dir = self.root / "getmail"
        self.maildir = self.root / "Maildir"
        rc = self.root / "getmailrc"
        rc.write_text(GETMAIL_RC.format(host=target.host, port=target.port, user=target.user,
                                        password=target.password, ca=target.ca_file,
                                        maildir=self.maildir,
                                        user_line="user = nobody\n" if os.getuid() == 0
                                        else ""), encoding="utf-8")
        rc.chmod(0o600)
        getmail = Path(sys.executable).with_name("getmail")
        self.getmail = [str(getmail), f"--rcfile={rc}", f"--getmaildir={self.getmail_dir}"]

    def run(self, command: list[str]) -> None:
        done = subprocess.run(command, env=self.env, cwd=self.cwd, check=False,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise SystemExit(f"{Path(command[0]).name} failed ({done.returncode}): "
                             f"{done.stdout.decode('utf-8', 'replace')[-2000:]}")

    def fresh_mailtracker(self) -> None:
        copy_store(self.base_store, self.mb.ws.store_path)

    def fresh_imap_tools(self) -> None:
        self.mark.unlink(missing_ok=True)

    def fresh_getmail(self) -> None:
        shutil.rmtree(self.getmail_dir, ignore_errors=True)
        shutil.rmtree(self.maildir, ignore_errors=True)
        self.getmail_dir.mkdir()
        for sub in ("cur", "new", "tmp"):
            (self.maildir / sub).mkdir(parents=True)
        if os.getuid() == 0:  # getmail delivers as a normal user only (user = nobody)
            for path in (self.maildir, *self.maildir.iterdir()):
                shutil.chown(path, "nobody")


def peer_cases(env: Environment, mb: Mailbox, base_store: Path, *, reps: int,
               getmail_scan: bool = True) -> list[Row]:
    """First scan and no-news poll of mailtracker against imap-tools and getmail6."""
    compile_package()
    p = _Peers(env, mb, base_store)
    rows: list[Row] = []

    def ours_fresh() -> None:
        p.fresh_mailtracker()
        p.run(p.ours)

    def imap_tools_fresh() -> None:
        p.fresh_imap_tools()
        p.run(p.imap_tools)

    rows.append(compare(f"peers: first scan of {mb.size:,}, against imap-tools",
                        ours_fresh, imap_tools_fresh, reps=reps, goal=0.5))
    rows[-1].notes.append("whole processes; imap-tools fetches whole messages (its default), "
                          "mailtracker headers and then the 1 % relevant")
    if getmail_scan:
        p.fresh_getmail()
        rows.append(compare(f"peers: first scan of {mb.size:,}, against getmail6",
                            ours_fresh, lambda: p.run(p.getmail), reps=1, goal=0.5,
                            warmup=0))
        rows[-1].notes.append("getmail6 into a Maildir, read_all = false; one run each")
    else:
        p.fresh_getmail()
        p.run(p.getmail)
    # every tool has now seen the whole box: the no-news polls
    p.run(p.imap_tools)
    rows.append(compare(f"peers: no-news poll, {mb.size:,}, against imap-tools",
                        lambda: p.run(p.ours), lambda: p.run(p.imap_tools), reps=reps,
                        goal=1.0))
    rows.append(compare(f"peers: no-news poll, {mb.size:,}, against getmail6",
                        lambda: p.run(p.ours), lambda: p.run(p.getmail), reps=reps,
                        goal=1.0))
    for row in rows[-2:]:
        row.notes.append("whole processes: interpreter start, imports, TLS login, the poll")
    return rows
