"""Command line: parse options, call one core function, print. Nothing else.

The one place that maps ``MailtrackerError`` to exit codes is ``MailtrackerGroup.invoke``;
the one ``asyncio.run`` is ``_run_async``. Heavy modules are imported inside the commands
that need them, so ``mailtracker --help`` and ``status`` start fast.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from mailtracker import __version__
from mailtracker.errors import ExitStatus, MailServerError, MailtrackerError, with_advice

if TYPE_CHECKING:
    from mailtracker.app import App

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
# Commands that log nothing: they start without the logging module (about 8 ms of a
# ``status`` run). ``--debug`` always sets logging up.
QUIET_COMMANDS = frozenset({"status", "init", "config", "recipients", "review", "mark",
                            "forget"})


@dataclass
class CliState:
    """What the top-level options give every command; opens the app on first use."""

    config: str | None
    debug: bool
    environ: dict[str, str]
    _app: App | None = None

    @property
    def config_path(self) -> Path:
        from mailtracker.settings.config import resolve_config_path

        return resolve_config_path(self.config, self.environ)

    def app(self) -> App:
        if self._app is None:
            from mailtracker.app import open_app

            self._app = open_app(self.config_path, self.environ)
        return self._app


def _fail(message: str, status: int) -> NoReturn:
    click.echo(f"Error: {_one_line(message)}", err=True)
    sys.exit(status)


def _one_line(text: str) -> str:
    return " ".join(text.replace("\r", " ").split("\n"))


class MailtrackerGroup(click.Group):
    """Turns every error into one line on stderr and a named exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        debug = bool(ctx.params.get("debug")) or os.environ.get("MAILTRACKER_DEBUG") == "1"
        try:
            return super().invoke(ctx)
        except MailtrackerError as exc:
            if debug:  # the traceback as well, and still the named exit code
                traceback.print_exc(file=sys.stderr)
            message = with_advice(exc) if isinstance(exc, MailServerError) else str(exc)
            _fail(message, int(exc.exit_status))
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            sys.exit(int(ExitStatus.INTERRUPTED))
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:  # a bug: say so in one line, details with --debug
            if debug:
                traceback.print_exc(file=sys.stderr)
            _fail(f"internal error: {type(exc).__name__}: {exc} (run with --debug for the "
                  "traceback and please report it)", int(ExitStatus.ERROR))


pass_state = click.make_pass_decorator(CliState)


def json_option(help: str = "Output JSON.") -> Callable[[F], F]:
    """``--json`` for a command whose output is data: the one declaration of it."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def _run_async(coro: Coroutine[Any, Any, T]) -> T:
    import asyncio

    return asyncio.run(coro)


def _local_time(app: App, at: datetime) -> str:
    """A moment as people read it: the task's local time, to the minute, with its zone."""
    local: datetime = at.astimezone(app.task.followups.calendar.tz)
    return local.strftime("%Y-%m-%d %H:%M %Z")


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, ensure_ascii=False, indent=2))


@click.group(cls=MailtrackerGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--config", "-c", "config", metavar="PATH", envvar="MAILTRACKER_CONFIG",
              help="Config file [default: $MAILTRACKER_CONFIG or ./config/mailtracker.toml].")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logging.")
@click.version_option(__version__, prog_name="mailtracker")
@click.pass_context
def main(ctx: click.Context, config: str | None, debug: bool) -> None:
    """Carry the KLIK task "(eFaktura 8b) Serviceaftaler og vejledning fra Ejerkredsen og EG"
    through: orientation mail out, EG's mail in, status for KLIK.

    Exit codes: 0 ok, 1 error, 2 usage, 3 config, 4 store, 5 store locked, 6 SMTP, 7 IMAP,
    8 template, 9 invalid input, 10 check failed, 11 delivery failed, 12 demo failed,
    13 login refused, 14 optional part not installed, 130 interrupted.
    """
    if debug or ctx.invoked_subcommand not in QUIET_COMMANDS:
        from mailtracker.logsetup import setup_logging

        setup_logging(debug)
    ctx.obj = CliState(config=config, debug=debug, environ=dict(os.environ))


# --------------------------------------------------------------------------- init / config


@main.command()
@click.option("--municipality", "-m", default="Eksempel Kommune", show_default=True,
              help="Name of the municipality (organisation.name).")
@click.option("--path", "path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("config/mailtracker.toml"), show_default=True,
              help="Where to write the config file.")
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
@click.option("--graph", is_flag=True,
              help="Microsoft 365: read and send through Microsoft Graph (no IMAP or SMTP).")
def init(municipality: str, path: Path, force: bool, graph: bool) -> None:
    """Write a commented starter config file."""
    from mailtracker.settings.starter import write_starter

    written = write_starter(path, municipality, since=date.today().replace(day=1).isoformat(),
                            force=force, graph=graph)
    sections = "[graph] and [oauth2]" if graph else "[smtp], [imap] and [trust]"
    click.echo(f"Wrote {written} (readable only by you). Edit the {sections} sections, then "
               "run: mailtracker check" + (" (docs/graph.md sets up the app)" if graph else ""))


@main.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("show")
@json_option()
@pass_state
def config_show(state: CliState, as_json: bool) -> None:
    """Show the effective settings (secrets are never shown, only where they come from)."""
    from mailtracker.settings.config import load_settings
    from mailtracker.store.codec import to_doc

    settings = load_settings(state.config_path, state.environ)
    doc = to_doc(settings)
    doc["path"] = str(settings.path)
    if as_json:
        _echo_json(json.loads(json.dumps(doc, default=str)))
        return
    for key, value in doc.items():
        if isinstance(value, dict):
            click.echo(f"[{key}]")
            for k, v in value.items():
                click.echo(f"  {k} = {json.dumps(v, default=str, ensure_ascii=False)}")
        else:
            click.echo(f"{key} = {json.dumps(value, default=str, ensure_ascii=False)}")


# --------------------------------------------------------------------------- recipients


@main.group()
def recipients() -> None:
    """Add, list and remove the people who must be oriented."""


@recipients.command("add")
@click.option("--role", required=True, help="Role key, e.g. system_owner, agreement_admin, "
              "oeir_coordinator, finance, kp_owner.")
@click.option("--name", required=True, help='Full name, e.g. "Hansen, Bjørn".')
@click.option("--email", required=True, help="E-mail address.")
@click.option("--lang", type=click.Choice(["da", "en"]), default=None,
              help="Language of their mail [default: task.language].")
@click.option("--greeting", default=None,
              help='Whom "Kære …" names, e.g. "alle i Økonomi" for a shared mailbox '
                   "[default: the first name; a department's whole name].")
@click.option("--replace", is_flag=True, help="Update an existing recipient.")
@pass_state
def recipients_add(state: CliState, role: str, name: str, email: str, lang: str | None,
                   greeting: str | None, replace: bool) -> None:
    """Add a recipient."""
    from mailtracker.recipients import add_recipient, validate_recipient

    app = state.app()
    recipient = validate_recipient(app.task, role=role, name=name, email=email,
                                   lang=lang or app.settings.language, now=app.now(),
                                   greeting=greeting)
    new = add_recipient(app.store, recipient, replace=replace)
    click.echo(f"{'Added' if new else 'Updated'} {recipient.name} <{recipient.email}> as "
               f"{recipient.role} ({recipient.lang}).")


@recipients.command("list")
@json_option()
@pass_state
def recipients_list(state: CliState, as_json: bool) -> None:
    """List recipients."""
    from mailtracker.recipients import list_recipients

    items = list_recipients(state.app().store)
    if as_json:
        _echo_json([{"email": r.email, "name": r.name, "role": r.role, "lang": r.lang,
                     "greeting": r.greeting} for r in items])
        return
    if not items:
        click.echo("No recipients yet. Add one with: mailtracker recipients add --role … "
                   "--name … --email …")
    for r in items:
        click.echo(f"{r.role:<17} {r.name} <{r.email}> ({r.lang})")


@recipients.command("remove")
@click.argument("email")
@pass_state
def recipients_remove(state: CliState, email: str) -> None:
    """Remove a recipient (their sent-mail history is kept as evidence; see 'forget')."""
    from mailtracker.recipients import remove_recipient

    removed = remove_recipient(state.app().store, email)
    click.echo(f"Removed {removed.name} <{removed.email}>.")


@main.command()
@click.argument("email")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def forget(state: CliState, email: str, yes: bool) -> None:
    """Remove a person and every record that names them (GDPR)."""
    from mailtracker.recipients import forget_person

    if not yes:
        click.confirm(f"Remove everything stored about {email}?", abort=True)
    app = state.app()
    before = _klik(app)
    facts_before = set(app.store.snapshot().oriented_facts(app.task.key))
    count = forget_person(app.store, email)
    click.echo(f"Removed {count} record(s) about {email}.")
    after = _klik(app)
    kept = [f for f in app.store.snapshot().oriented_facts(app.task.key)
            if f not in facts_before]
    for fact in kept:
        role = app.task.role(fact.role)
        click.echo(f"Kept, without name or address: the {role.label_en if role else fact.role} "
                   f"was oriented at {_local_time(app, fact.sent_at)}, so the KLIK status "
                   f"stays »{after}«.")
    if after != before:
        click.echo(f"Note: the KLIK status is now »{after}«, no longer »{before}«: the person "
                   "forgotten was the one oriented for a required role. The orientation did "
                   "happen; if the KLIK task is already marked fuldført, leave it so, and add "
                   "whoever now holds the role with 'mailtracker recipients add'.", err=True)


def _klik(app: App) -> str:
    """The task's KLIK status label as ``status`` shows it."""
    from mailtracker.task.state import klik_label, klik_status

    view = app.store.snapshot()
    notifications = {n.key: n for n in view.notifications(app.task.key)}
    return klik_label(app.task, klik_status(app.task, view.recipients(), notifications,
                                            view.oriented_facts(app.task.key)))


# --------------------------------------------------------------------------- notify


@main.command()
@click.option("--dry-run", is_flag=True, help="Render only; connect to nothing, store nothing.")
@click.option("--preview-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write each message as an .eml file here.")
@click.option("--role", help="Only recipients with this role.")
@click.option("--resend", is_flag=True, help="Send again, even to those already sent to.")
@click.option("--to", "only", multiple=True, metavar="EMAIL",
              help="Only this recipient (repeatable).")
@json_option()
@pass_state
def notify(state: CliState, dry_run: bool, preview_dir: Path | None, role: str | None,
           resend: bool, only: tuple[str, ...], as_json: bool) -> None:
    """Send the orientation mail to each recipient — once."""
    from mailtracker.errors import DeliveryFailedError, InvalidInputError
    from mailtracker.outbound.notify import NotifyOptions, run_notify, summarise

    app = state.app()
    if role and app.task.role(role) is None:
        raise InvalidInputError(f"unknown role {role!r}")
    results = _run_async(run_notify(app, NotifyOptions(
        dry_run=dry_run, preview_dir=preview_dir, role=role, resend=resend, only=only)))
    if as_json:
        _echo_json([r.__dict__ for r in results])
    else:
        for r in results:
            detail = f": {r.detail}" if r.detail else ""
            click.echo(f"{r.outcome:<14} {r.role:<17} {r.recipient}{detail}")
        counts = summarise(results)
        click.echo(", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "Nothing to send.")
        if preview_dir:
            click.echo(f"Preview written to {preview_dir}")
    bad = [r for r in results if r.outcome in ("failed", "unknown", "deferred")]
    if bad:
        raise DeliveryFailedError(f"{len(bad)} message(s) not delivered "
                                  "(see above; 'mailtracker status' shows the details)")


# --------------------------------------------------------------------------- status


@main.command()
@json_option()
@click.option("--format", "fmt", type=click.Choice(["text", "markdown"]),
              default=None, help="Output format: text (default) or markdown (paste in KLIK).")
@pass_state
def status(state: CliState, as_json: bool, fmt: str | None) -> None:
    """Show where the task stands: KLIK status, recipients, milestones, next step."""
    if as_json and fmt is not None:
        raise click.UsageError("--json and --format exclude each other: choose one")
    from mailtracker.settings.trustcheck import trust_mode
    from mailtracker.task.report import build_report, to_json, to_markdown, to_text

    app = state.app()
    view = app.store.snapshot()
    report = build_report(app.task, view, organisation=app.settings.organisation, now=app.now(),
                          warnings=_state_warnings(app), trust=trust_mode(app.settings))
    if as_json:
        _echo_json(to_json(report))
    elif fmt == "markdown":
        click.echo(to_markdown(report))
    else:
        click.echo(to_text(report))


# --------------------------------------------------------------------------- report


@main.command()
@click.option("--html", "html_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the dossier as one self-contained HTML file here ('-': standard "
                   "output).")
@click.option("--pdf", "pdf_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Write it as a PDF/A here (needs: pip install 'mailtracker[pdf]').")
@click.option("--lang", type=click.Choice(["da", "en"]), default=None,
              help="Language of the dossier [default: the config's [task] language].")
@json_option("Output JSON (the files written).")
@pass_state
def report(state: CliState, html_path: Path | None, pdf_path: Path | None, lang: str | None,
           as_json: bool) -> None:
    """Write the KLIK dossier: timeline, recipients, milestones with evidence, quarantine,
    follow-ups. From the stored state alone: no network, nothing changed."""
    if html_path is None and pdf_path is None:
        raise click.UsageError("give --html PATH, --pdf PATH or both")
    from mailtracker.dossier.model import build_dossier
    from mailtracker.dossier.page import render_html, write_html, write_pdf
    from mailtracker.settings.trustcheck import trust_mode

    app = state.app()
    language = lang or app.settings.language
    view = app.store.snapshot()
    dossier = build_dossier(app.task, view, organisation=app.settings.organisation,
                            now=app.now(), lang=language, state_file=app.store.path,
                            trust=trust_mode(app.settings), warnings=tuple(_state_warnings(app)))
    html = render_html(dossier, app.task.followups.calendar.tz)
    written: dict[str, str] = {}
    if html_path is not None and str(html_path) == "-":
        if as_json or pdf_path is not None:
            raise click.UsageError("--html - writes the page to standard output: it goes "
                                   "alone, without --pdf or --json")
        click.echo(html, nl=False)
        return
    if html_path is not None:
        write_html(html_path, html)
        written["html"] = str(html_path)
    if pdf_path is not None:
        write_pdf(pdf_path, html)
        written["pdf"] = str(pdf_path)
    if as_json:
        _echo_json({**written, "lang": language, "klik_status": dossier.klik})
        return
    for kind, path in written.items():
        click.echo(f"Wrote the dossier ({kind.upper()}, {language}) to {path}")


def _state_warnings(app: App) -> list[str]:
    """What ``status`` and the dossier warn about: a journal line the last read skipped,
    weakened sender authentication, and mail sent that the state file does not record."""
    from mailtracker.settings.trustcheck import trust_warnings

    restored = app.store.unrecorded_sends()
    return [*app.store.warnings, *trust_warnings(app.settings),
            *([f"{len(restored)} mail(s) went out that this state file does not record "
               "(restored from an older backup?); notify and tick refuse until that is "
               "settled"] if restored else [])]


# --------------------------------------------------------------------------- manual steps


@main.command()
@click.argument("milestone")
@click.option("--note", help="What was done, for the record (shown in status and KLIK).")
@click.option("--by", help="Who did it [default: your login name].")
@click.option("--remove", is_flag=True, help="Remove the milestone instead (a mistake).")
@pass_state
def mark(state: CliState, milestone: str, note: str | None, by: str | None,
         remove: bool) -> None:
    """Record a milestone by hand, e.g. erp_forwarding_configured or efaktura_verified_in_kp."""
    from mailtracker.manual import mark_milestone, unmark_milestone

    app = state.app()
    if remove:
        unmark_milestone(app.store, app.task, milestone, now=app.now())
        click.echo(f"Removed {milestone}.")
        return
    record = mark_milestone(app.store, app.task, milestone, now=app.now(), note=note, by=by)
    click.echo(f"Recorded {milestone} at {_local_time(app, record.at)} "
               f"by {record.evidence.recorded_by}.")


@main.group(invoke_without_command=True)
@json_option()
@click.option("--all", "include_decided", is_flag=True, help="Include decided entries.")
@click.pass_context
def review(ctx: click.Context, as_json: bool, include_decided: bool) -> None:
    """List mail that looked like EG's but failed authentication (quarantine)."""
    if ctx.invoked_subcommand is not None:
        return
    from mailtracker.manual import list_quarantine

    app = ctx.find_object(CliState).app()  # type: ignore[union-attr]
    entries = list_quarantine(app.store, app.task, include_decided=include_decided)
    if as_json:
        _echo_json([{"id": q.id, "message_id": q.message_id, "from": q.sender,
                     "subject": q.subject, "reason": q.reason, "milestone": q.milestone,
                     "received_at": q.at.isoformat(timespec="seconds"), "state": q.state}
                    for q in entries])
        return
    if not entries:
        click.echo("Nothing in quarantine.")
    for q in entries:
        click.echo(f"{q.id}  {_local_time(app, q.at)}  {q.sender}\n"
                   f"    Subject: {q.subject}\n    Would set: {q.milestone}\n"
                   f"    Why quarantined: {q.reason}" + (f"\n    State: {q.state}"
                                                        if q.state != "pending" else ""))
    if entries:
        click.echo("Accept with 'mailtracker review accept ID' only after checking with EG "
                   "that the mail is genuine; otherwise 'mailtracker review reject ID'.")


@review.command("accept")
@click.argument("entry_id", metavar="ID")
@pass_state
def review_accept(state: CliState, entry_id: str) -> None:
    """Accept a quarantined mail: its milestone is recorded with you as reviewer."""
    from mailtracker.manual import decide

    app = state.app()
    entry = decide(app.store, app.task, entry_id, accept=True, now=app.now())
    click.echo(f"Accepted {entry.id}: {entry.milestone} recorded.")


@review.command("reject")
@click.argument("entry_id", metavar="ID")
@pass_state
def review_reject(state: CliState, entry_id: str) -> None:
    """Reject a quarantined mail: it will never change the task."""
    from mailtracker.manual import decide

    app = state.app()
    entry = decide(app.store, app.task, entry_id, accept=False, now=app.now())
    click.echo(f"Rejected {entry.id}.")


# --------------------------------------------------------------------------- inbound


@main.command()
@click.option("--dry-run", is_flag=True, help="Show what would change; store nothing.")
@json_option()
@pass_state
def poll(state: CliState, dry_run: bool, as_json: bool) -> None:
    """Read new mail once and move the task forward (one line per change)."""
    import logging

    from mailtracker.inbound.poller import run_poll

    poll_log = logging.getLogger("mailtracker.poll")
    level = poll_log.level
    if not state.debug:  # each change is printed below: once, not also as a log line
        poll_log.setLevel(logging.WARNING)
    try:
        report = run_poll(state.app(), dry_run=dry_run)
    finally:
        poll_log.setLevel(level)
    if as_json:
        _echo_json({"folder": report.folder, "uidvalidity": report.uidvalidity,
                    "rescan": report.rescan, "new_messages": report.scanned,
                    "examined": report.fetched, "counts": report.counts,
                    "changes": report.changes, "dry_run": report.dry_run})
        return
    for line in report.changes:
        click.echo(("would: " if dry_run else "") + line)
    click.echo(report.summary_line())


@main.command()
@click.option("--health-interval", type=click.FloatRange(min=1), default=3600.0,
              show_default=True, help="Seconds between health lines in the log.")
@pass_state
def watch(state: CliState, health_interval: float) -> None:
    """Follow the inbox (IDLE, or polling) until stopped by SIGINT/SIGTERM.

    Logs to stderr (journald-friendly under systemd); reconnects with backoff when the
    link drops. Run it as a systemd service: see README.
    """
    from mailtracker.inbound.poller import run_watch_forever

    run_watch_forever(state.app(), health_interval=health_interval)


@main.command()
@click.option("--dry-run", is_flag=True,
              help="Show what is due; render, but send and store nothing.")
@click.option("--preview-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Also write each mail due as an .eml file here (with --dry-run: only that).")
@json_option()
@pass_state
def tick(state: CliState, dry_run: bool, preview_dir: Path | None, as_json: bool) -> None:
    """Send the follow-ups due now: event mail, reminders, escalations.

    For cron or a systemd timer; watch does the same after every poll. Safe to run often:
    nothing is sent twice.
    """
    from mailtracker.followup.runner import run_tick

    app = state.app()
    report = _run_async(run_tick(app, dry_run=dry_run, preview_dir=preview_dir))
    if as_json:
        _echo_json(report.to_json())
    else:
        for line in report.lines(app.task.followups.calendar.tz):
            click.echo(line)
    report.raise_for_problems()


# --------------------------------------------------------------------------- check / demo


@main.command()
@json_option()
@pass_state
def check(state: CliState, as_json: bool) -> None:
    """Check SMTP, IMAP and the state file; each problem with the fix to try."""
    from mailtracker.check import format_check, run_check
    from mailtracker.errors import CheckFailedError

    app = state.app()
    report = _run_async(run_check(app, now=app.now()))
    if as_json:
        _echo_json(report.to_json())
    else:
        click.echo(format_check(report))
    if not report.ok:
        raise CheckFailedError("check found problems (see the ✗ lines)")


@main.command()
@pass_state
def login(state: CliState) -> None:
    """OAuth2 ([oauth2] section): sign in once (device code flow), or test the app's
    credentials (client credentials flow). The token is cached, never shown."""
    from mailtracker.settings.config import load_settings
    from mailtracker.settings.oauth2 import sign_in

    settings = load_settings(state.config_path, state.environ)
    token = sign_in(settings, state.environ, show=click.echo)
    click.echo(f"Signed in; token cached: {token.describe()}")


@main.command()
@click.option("--keep", "keep_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Build the demo workspace here and keep it (config, state, sent mail).")
@click.option("--lang", type=click.Choice(["da", "en"]), default="da", show_default=True,
              help="Language of the demo recipients' mail.")
@click.option("--mailbox", type=click.Choice(["auto", "memory", "dovecot"]), default="auto",
              show_default=True,
              help="Where the mail lands: a Dovecot of the demo's own (dovecot), mailboxes in "
                   "memory without IMAP (memory), or Dovecot when it is on PATH and starts, "
                   "else memory (auto).")
@json_option("Print the final status as JSON.")
def demo(keep_dir: Path | None, lang: str, mailbox: str, as_json: bool) -> None:
    """Run the whole loop on loopback servers: send, receive, poll, status.

    Needs no root and no network; only the demo extra (pip install 'mailtracker[demo]').
    With Dovecot installed (Debian: dovecot-imapd) the mail is read over IMAP from a real,
    unprivileged Dovecot; without it from mailboxes in memory. Exits 0 only if the final
    state is the expected one, so it doubles as a smoke test.
    """
    from mailtracker.demo import require_demo_extra

    require_demo_extra()
    from mailtracker.demo.scenario import run_demo

    result = run_demo(keep_dir, keep_dir is not None, lang,
                      (lambda line: click.echo(line, err=True)) if as_json else click.echo,
                      mailbox)
    if as_json:
        _echo_json(result.status)
