"""``mailtracker poll``/``watch`` over Microsoft Graph (the fake, real HTTPS): the same
screen → parse → classify → transition path as IMAP, the delta link saved with the page's
events, resync after expiry counting nothing twice, replays, post-actions."""

from __future__ import annotations

import json
import logging
import threading
from datetime import UTC, datetime
from typing import Any

import pytest

from mailtracker.app import open_app
from mailtracker.inbound.graph import poll_graph_once, run_graph_watch
from tests.inbound_mail import eml, noise
from tests.plugins.fakegraph import MAILBOX, FakeGraph
from tests.plugins.fakeidp import FakeIdP
from tests.plugins.workspace import Workspace

EG_MAILS = ["agreement-eg-pdf.eml", "guide-eg.eml", "webinar-invite.eml"]
SPOOFS = ["spoof-no-authres.eml", "spoof-dkim-fail.eml", "spoof-forged-authres.eml",
          "spoof-two-from.eml", "spoof-paren-from.eml"]
NEGATIVES = ["nets-efaktura.eml", "kombit-serviceplatformen.eml", "kp-dk.eml"]
MILESTONES = {"service_agreement_received", "guide_received", "webinar_invited", "webinar_held"}


def poll(ws: Workspace, *args: str) -> Any:
    result = ws.cli("poll", *args)
    assert result.exit_code == 0, result.output
    return result


def reached(ws: Workspace) -> set[str]:
    return {k for k, v in ws.status()["milestones"].items() if v is not None}


def handled_count(ws: Workspace) -> int:
    return len(open_app(ws.config_path, ws.environ).store.snapshot().handled_ids())


def test_eg_mail_moves_the_task_and_spoofs_do_not(graph_workspace: Workspace,
                                                  fake_graph: FakeGraph) -> None:
    for name in EG_MAILS + NEGATIVES:
        fake_graph.deliver(MAILBOX, eml(name))
    for i in range(20):
        fake_graph.deliver(MAILBOX, noise(i))
    result = poll(graph_workspace)
    assert "milestone reached: Service agreement received from EG" in result.output
    assert reached(graph_workspace) == MILESTONES
    # only the mail the screen let through was fetched whole: not the colleagues' mail
    assert fake_graph.count("GET", "/$value") == len(EG_MAILS + NEGATIVES)
    assert "26 new message(s)" in result.output


@pytest.mark.parametrize("dmarc", ["fail", "bestguesspass"])
def test_exchange_verdict_other_than_pass_is_quarantined(graph_workspace: Workspace,
                                                         fake_graph: FakeGraph,
                                                         dmarc: str) -> None:
    fake_graph.deliver(MAILBOX, eml("agreement-eg-pdf.eml"), dmarc=dmarc)
    poll(graph_workspace)
    assert reached(graph_workspace) == set()
    assert graph_workspace.status()["quarantine"] == 1


@pytest.mark.parametrize("how", [{"tenant": "9d0b6c1a-2e3f-4a5b-8c7d-1e2f3a4b5c6d"},
                                 {"header_from": "evil.example"}])
def test_foreign_tenant_or_other_header_from_is_quarantined(
        graph_workspace: Workspace, fake_graph: FakeGraph, how: dict[str, str]) -> None:
    fake_graph.deliver(MAILBOX, eml("agreement-eg-pdf.eml"), **how)
    poll(graph_workspace)
    assert reached(graph_workspace) == set()
    assert graph_workspace.status()["quarantine"] == 1


def test_spoofs_in_exchange_shapes_never_change_the_task(graph_workspace: Workspace,
                                                         fake_graph: FakeGraph) -> None:
    """An upstream header saying pass arrives renamed ``-Original`` and counts for nothing;
    Exchange's own verdict on a spoof is fail."""
    for name in SPOOFS:
        fake_graph.deliver(MAILBOX, eml(name), dmarc="fail")
    poll(graph_workspace)
    assert reached(graph_workspace) == set()


def test_a_no_news_poll_is_one_request(graph_workspace: Workspace, fake_graph: FakeGraph,
                                       fake_idp: FakeIdP) -> None:
    fake_graph.deliver(MAILBOX, eml("guide-eg.eml"))
    poll(graph_workspace)
    tokens = fake_idp.hits()
    before = len(fake_graph.requests)
    result = poll(graph_workspace)
    assert fake_graph.requests[before:] == [fake_graph.requests[-1]]
    assert fake_graph.requests[-1][1].endswith("/messages/delta")
    assert fake_idp.hits() == tokens  # the token came from the cache
    assert "0 new message(s)" in result.output


def test_pages_are_followed_and_the_link_saved_with_each_page(
        graph_workspace: Workspace, fake_graph: FakeGraph,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mailtracker.inbound.graph.PAGE_SIZE", 4)
    for i in range(9):
        fake_graph.deliver(MAILBOX, eml("nets-efaktura.eml").replace(
            b"Message-ID: <", b"Message-ID: <n%d." % i))
    fake_graph.deliver(MAILBOX, eml("guide-eg.eml"))
    result = poll(graph_workspace)
    assert fake_graph.count("GET", "/delta") == 3  # 4 + 4 + 2
    assert "10 new message(s)" in result.output
    assert reached(graph_workspace) == {"guide_received"}
    state = json.loads(graph_workspace.store_path.read_text())
    assert any("deltatoken" in d["link"] for d in state["deltalinks"].values())


def test_crash_mid_paging_resumes_from_the_saved_page(
        graph_workspace: Workspace, fake_graph: FakeGraph,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mailtracker.inbound.graph.PAGE_SIZE", 2)
    agreement = fake_graph.deliver(MAILBOX, eml("agreement-eg-pdf.eml"))
    for name in ["nets-efaktura.eml", "guide-eg.eml", "kp-dk.eml"]:
        fake_graph.deliver(MAILBOX, eml(name))
    import mailtracker.inbound.graph as g

    real = g.GraphReader.page
    calls = {"n": 0}

    def flaky(self: Any, url: str) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the process dies between pages
        return real(self, url)

    monkeypatch.setattr(g.GraphReader, "page", flaky)
    assert graph_workspace.cli("poll").exit_code == 130
    assert reached(graph_workspace) == {"service_agreement_received"}
    monkeypatch.setattr(g.GraphReader, "page", real)
    poll(graph_workspace)
    assert reached(graph_workspace) == {"service_agreement_received", "guide_received"}
    assert fake_graph.count("GET", f"/{agreement.id}/$value") == 1  # not fetched again


def test_expired_delta_resyncs_and_counts_nothing_twice(
        graph_workspace: Workspace, fake_graph: FakeGraph,
        caplog: pytest.LogCaptureFixture) -> None:
    for name in EG_MAILS:
        fake_graph.deliver(MAILBOX, eml(name))
    poll(graph_workspace)
    timeline = len(graph_workspace.status()["timeline"])
    handled = handled_count(graph_workspace)
    fake_graph.expire_delta_tokens()
    fake_graph.deliver(MAILBOX, noise(1))
    with caplog.at_level(logging.WARNING, logger="mailtracker.poll"):
        result = poll(graph_workspace)
    assert "delta state expired, folder resynced" in result.output
    assert "resyncing the folder" in caplog.text
    assert reached(graph_workspace) == MILESTONES
    assert len(graph_workspace.status()["timeline"]) == timeline  # nothing counted twice
    assert handled_count(graph_workspace) == handled  # the new mail is noise: not recorded
    assert "syncStateNotFound" in caplog.text


def test_malformed_saved_link_resyncs(graph_workspace: Workspace,
                                      fake_graph: FakeGraph) -> None:
    fake_graph.deliver(MAILBOX, eml("guide-eg.eml"))
    poll(graph_workspace)
    path = graph_workspace.store_path
    path.write_text(path.read_text().replace("deltatoken=", "deltatoken=garbage"))
    result = poll(graph_workspace)
    assert "resynced" in result.output
    assert reached(graph_workspace) == {"guide_received"}


def test_replayed_delta_counts_nothing_twice(graph_workspace: Workspace,
                                             fake_graph: FakeGraph) -> None:
    fake_graph.deliver(MAILBOX, eml("agreement-eg-pdf.eml"))
    fake_graph.replay_next_delta = True
    poll(graph_workspace)
    timeline = graph_workspace.status()["timeline"]
    result = poll(graph_workspace)  # the same message comes again
    assert "1 new message(s)" in result.output
    assert "0 changed" in result.output
    assert graph_workspace.status()["timeline"] == timeline


def test_updated_and_deleted_entries(graph_workspace: Workspace, fake_graph: FakeGraph) -> None:
    msg = fake_graph.deliver(MAILBOX, eml("agreement-eg-pdf.eml"))
    poll(graph_workspace)
    box = fake_graph.mailboxes[MAILBOX]
    msg.categories.append("Rød")
    msg.seq = fake_graph.bump()  # someone flagged it in Outlook: an update
    gone = fake_graph.deliver(MAILBOX, eml("kp-dk.eml"))
    box.removed.append((fake_graph.bump(), gone.folder, gone.id))
    del box.messages[gone.id]
    result = poll(graph_workspace)
    assert "0 changed" in result.output
    assert reached(graph_workspace) == {"service_agreement_received"}


def test_mail_without_message_id_counts_once(graph_workspace: Workspace,
                                             fake_graph: FakeGraph) -> None:
    raw = eml("guide-eg.eml")
    head, _, body = raw.partition(b"\r\n\r\n")
    head = b"\r\n".join(line for line in head.split(b"\r\n")
                        if not line.lower().startswith(b"message-id:"))
    fake_graph.deliver(MAILBOX, head + b"\r\n\r\n" + body)
    poll(graph_workspace)
    fake_graph.expire_delta_tokens()
    poll(graph_workspace)
    assert reached(graph_workspace) == {"guide_received"}
    entries = [t for t in graph_workspace.status()["timeline"] if "guide" in t["text"].lower()]
    assert len(entries) == 1


def test_since_ignores_older_mail(graph_workspace: Workspace, fake_graph: FakeGraph) -> None:
    graph_workspace.set("graph", since="2026-06-01")
    fake_graph.deliver(MAILBOX, eml("guide-eg.eml"), received=datetime(2026, 5, 1, tzinfo=UTC))
    fake_graph.deliver(MAILBOX, eml("agreement-eg-pdf.eml"))
    poll(graph_workspace)
    assert reached(graph_workspace) == {"service_agreement_received"}


@pytest.mark.parametrize("action", ["category", "move"])
def test_post_action(graph_workspace: Workspace, fake_graph: FakeGraph, action: str) -> None:
    graph_workspace.set("graph", post_action=action, move_to="Behandlet")
    done = fake_graph.add_folder(MAILBOX, "Behandlet")
    msg = fake_graph.deliver(MAILBOX, eml("agreement-eg-pdf.eml"))
    noise = fake_graph.deliver(MAILBOX, eml("kp-dk.eml"))
    poll(graph_workspace)
    if action == "category":
        assert msg.categories == ["mailtracker"]
    else:
        assert msg.folder == done.id
    assert noise.categories == [] and noise.folder != done.id
    poll(graph_workspace)  # the change it made comes back in the delta: nothing happens
    assert reached(graph_workspace) == {"service_agreement_received"}


def test_folder_by_path_and_missing_folder(graph_workspace: Workspace,
                                           fake_graph: FakeGraph) -> None:
    fake_graph.add_folder(MAILBOX, "Inbox/EG")
    graph_workspace.set("graph", folder="Inbox/EG")
    fake_graph.deliver(MAILBOX, eml("guide-eg.eml"), folder="EG")
    fake_graph.deliver(MAILBOX, eml("agreement-eg-pdf.eml"))  # in Inbox: not watched
    poll(graph_workspace)
    assert reached(graph_workspace) == {"guide_received"}
    graph_workspace.set("graph", folder="Indbakke/Nope")
    result = graph_workspace.cli("poll")
    assert result.exit_code == 3
    assert "folder 'Indbakke' of 'Indbakke/Nope' not found" in result.output
    assert "Traceback" not in result.output


def test_quota_exceeded_loses_nothing(graph_workspace: Workspace,
                                      fake_graph: FakeGraph) -> None:
    """A full mailbox refuses writes (the category) but reading goes on; the events are
    recorded, and the failed post-action is only a warning."""
    graph_workspace.set("graph", post_action="category")
    fake_graph.quota_exceeded = True
    fake_graph.deliver(MAILBOX, eml("guide-eg.eml"))
    poll(graph_workspace)
    assert reached(graph_workspace) == {"guide_received"}


def test_dry_run_stores_nothing(graph_workspace: Workspace, fake_graph: FakeGraph) -> None:
    fake_graph.deliver(MAILBOX, eml("guide-eg.eml"))
    result = poll(graph_workspace, "--dry-run")
    assert "would: milestone reached" in result.output
    assert reached(graph_workspace) == set()


def test_watch_polls_the_delta_at_the_interval(graph_workspace: Workspace,
                                               fake_graph: FakeGraph) -> None:
    graph_workspace.set("graph", watch_interval=1)
    app = open_app(graph_workspace.config_path, graph_workspace.environ)
    stop = threading.Event()
    fake_graph.deliver(MAILBOX, eml("guide-eg.eml"))
    watcher = threading.Thread(target=run_graph_watch, args=(app,), kwargs={"stop": stop})
    watcher.start()
    try:
        _wait_for(lambda: reached(graph_workspace) == {"guide_received"})
        fake_graph.deliver(MAILBOX, eml("agreement-eg-pdf.eml"))
        _wait_for(lambda: "service_agreement_received" in reached(graph_workspace))
        fake_graph.drop_after("GET", "/delta")  # a lost link: watch carries on
        fake_graph.deliver(MAILBOX, eml("webinar-invite.eml"))
        _wait_for(lambda: "webinar_invited" in reached(graph_workspace), 30)
    finally:
        stop.set()
        watcher.join(30)
    assert not watcher.is_alive()


def _wait_for(condition: Any, timeout: float = 20.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout * 10)):
        if condition():
            return
        done.wait(0.1)
    raise AssertionError("condition not met in time")


def test_poll_graph_once_is_the_api(graph_workspace: Workspace, fake_graph: FakeGraph) -> None:
    from mailtracker.inbound.graph import open_reader

    app = open_app(graph_workspace.config_path, graph_workspace.environ)
    fake_graph.deliver(MAILBOX, eml("guide-eg.eml"))
    reader = open_reader(app)
    try:
        report = poll_graph_once(app, reader)
    finally:
        reader.close()
    assert report.scanned == 1 and report.changes


def test_without_internet_message_headers_the_real_headers_are_read(
        graph_workspace: Workspace, fake_graph: FakeGraph) -> None:
    """Should Graph leave out internetMessageHeaders, a reply is still recognised: the
    screen reads the headers of its MIME, not the few fields the delta gave."""
    from tests.inbound_mail import reply
    from tests.plugins.workspace import THREE

    graph_workspace.add_recipients(THREE[:1])
    assert graph_workspace.cli("notify").exit_code == 0
    row = graph_workspace.status()["recipients"][0]
    fake_graph.mailboxes[MAILBOX].headers_in_delta = False
    fake_graph.deliver(MAILBOX, reply(sender=row["email"], name="Søren",
                                      to_message_id=row["message_id"], subject="SV: Hej"))
    for i in range(3):
        fake_graph.deliver(MAILBOX, noise(i))
    result = poll(graph_workspace)
    assert f"acknowledged: {row['email']} replied" in result.output
    assert fake_graph.count("GET", "/$value") == 4  # each once: the headers came with it
