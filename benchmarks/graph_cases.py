"""Microsoft Graph cases: mailtracker against a bare httpx loop on the same fake Graph.

The fake Graph and identity provider run in a child process (``benchmarks.graph_server``).

* initial sync: ``run_graph_poll`` on a fresh state file (delta pages of 500, screening,
  ``$value`` of the relevant 1 %, classification, one store write per page) against the bare
  delta loop fetching the same pages with the same ``$select`` and page size;
* no-news poll: how many HTTP requests a poll with nothing new makes (goal: one), timed
  against one bare GET of the same delta link;
* notify: ``run_notify`` to 300 recipients (draft + send per mail, the outbox protocol's
  store writes) against a bare loop making the same two calls with the same messages, built
  by mailtracker beforehand and flattened in the loop (as the SMTP notify floor does); and
  the same loop with one fsynced journal line per mail, the outbox protocol's minimum.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import subprocess
import sys
from email import policy
from pathlib import Path
from typing import Any

import httpx

from benchmarks.environment import copy_store
from benchmarks.measure import Row, compare
from benchmarks.notify_case import _fill, _pre_rendered, recipients
from mailtracker.app import App, open_app
from mailtracker.graph import open_client
from mailtracker.inbound.graph import PAGE_SIZE, SELECT, run_graph_poll
from mailtracker.outbound.notify import NotifyOptions, run_notify
from tests.plugins.tlsca import TestCA
from tests.plugins.workspace import Workspace, make_workspace_at

SECRET_ENV = "MT_BENCH_GRAPH_SECRET"


class GraphServer:
    def __init__(self, ca: TestCA):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.graph_server", str(ca.ca_file),
             str(ca.cert_file), str(ca.key_file)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            cwd=Path(__file__).resolve().parents[1])
        self.info: dict[str, str] = self._answer()

    def _answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fake Graph did not answer (exit {self.proc.poll()})")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def command(self, line: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self._answer()

    def requests(self) -> int:
        return int(self.command("requests")["requests"])

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(30)


def workspace(root: Path, server: GraphServer, ca: TestCA) -> Workspace:
    os.environ["REQUESTS_CA_BUNDLE"] = str(ca.ca_file)  # msal (requests) trusts the fake IdP
    os.environ["NO_PROXY"] = "127.0.0.1"
    ws = make_workspace_at(root)
    info = server.info
    ws.environ.update({SECRET_ENV: info["secret"], "REQUESTS_CA_BUNDLE": str(ca.ca_file)})
    ws.sections["oauth2"] = {"tenant_id": info["tenant"], "client_id": info["app_id"],
                             "client_secret_env": SECRET_ENV, "authority": info["authority"]}
    ws.sections["graph"] = {"mailbox": info["mailbox"], "endpoint": info["endpoint"],
                            "ca_file": str(ca.ca_file), "since": "2020-01-01"}
    ws.sections["trust"] = {"sender_auth": "exchange_online"}
    ws.write()
    return ws


def _bare(app: App, ca: TestCA) -> tuple[httpx.Client, str]:
    """An httpx client as a bare script would make it, and a token fetched beforehand."""
    with open_client(app.settings, app.environ) as ours:
        token = ours.token().value
    ctx = ssl.create_default_context(cafile=str(ca.ca_file))
    return httpx.Client(verify=ctx, timeout=60, headers={"Authorization": f"Bearer {token}"}), \
        ours.user_url()


def _bare_delta(http: httpx.Client, url: str) -> str:
    params: dict[str, str] | None = {"$select": ",".join(SELECT)}
    headers = {"Prefer": f"odata.maxpagesize={PAGE_SIZE}"}
    while True:
        data = http.get(url, params=params, headers=headers).raise_for_status().json()
        params = None
        if "@odata.deltaLink" in data:
            return str(data["@odata.deltaLink"])
        url = data["@odata.nextLink"]


def sync_cases(root: Path, ca: TestCA, server: GraphServer, size: int, *, reps: int
               ) -> list[Row]:
    server.command(f"fill {size}")
    ws = workspace(root / f"graph-sync-{size}", server, ca)
    app = open_app(ws.config_path, ws.environ)
    http, user = _bare(app, ca)
    delta_url = f"{user}/mailFolders/inbox/messages/delta"
    empty = ws.root / "empty-store.json"
    ws.store_path.write_text("{}")
    copy_store(ws.store_path, empty)

    def ours() -> None:
        report = run_graph_poll(app)
        assert report.scanned == size and report.changes, report.summary_line()

    row = compare(f"Graph initial sync, {size:,} messages (1 % relevant)", ours,
                  lambda: _bare_delta(http, delta_url), reps=reps, goal=1.5,
                  prepare=lambda: copy_store(empty, ws.store_path))
    run_graph_poll(app)  # the state after a sync, for the no-news poll
    link = _bare_delta(http, delta_url)
    before = server.requests()
    run_graph_poll(app)
    requests = server.requests() - before
    def bare_poll() -> None:  # a fresh connection, as a poll process has
        with httpx.Client(verify=ssl.create_default_context(cafile=str(ca.ca_file)),
                          headers=http.headers) as fresh:
            fresh.get(link).raise_for_status()

    no_news = compare("Graph no-news poll", lambda: run_graph_poll(app), bare_poll,
                      reps=reps, goal=None)
    no_news.notes.append(f"HTTP requests of a no-news poll: {requests} (goal: 1)")
    http.close()
    return [row, no_news]


def notify_case(root: Path, ca: TestCA, server: GraphServer, count: int, *, reps: int
                ) -> list[Row]:
    ws = workspace(root / "graph-notify", server, ca)
    app = open_app(ws.config_path, ws.environ)
    _fill(app, recipients(count))
    base = ws.root / "base-store.json"
    copy_store(ws.store_path, base)
    messages = _pre_rendered(app)  # built by mailtracker, flattened in the loop (as SMTP's)
    http, user = _bare(app, ca)
    prefer = {"Prefer": 'IdType="ImmutableId"'}

    def ours() -> None:
        results = asyncio.run(run_notify(app, NotifyOptions()))
        assert len(results) == count and all(r.outcome == "sent" for r in results), results[:3]

    def floor() -> None:
        for message in messages:
            mime = base64.b64encode(message.as_bytes(policy=policy.SMTP))
            draft = http.post(f"{user}/messages", content=mime,
                              headers={"Content-Type": "text/plain", **prefer})
            http.post(f"{user}/messages/{draft.raise_for_status().json()['id']}/send",
                      headers=prefer).raise_for_status()

    def prepare() -> None:
        copy_store(base, ws.store_path)
        server.command("clear")

    row = compare(f"Graph notify, {count} recipients", ours, floor, reps=reps, goal=1.3,
                  prepare=prepare)
    journal = ws.root / "bare-journal"

    def floor_with_fsync() -> None:  # the outbox protocol's one durable write per mail
        with journal.open("ab") as out:
            for message in messages:
                mime = base64.b64encode(message.as_bytes(policy=policy.SMTP))
                out.write(b"sending\n")
                out.flush()
                os.fsync(out.fileno())
                draft = http.post(f"{user}/messages", content=mime,
                                  headers={"Content-Type": "text/plain", **prefer})
                http.post(f"{user}/messages/{draft.raise_for_status().json()['id']}/send",
                          headers=prefer).raise_for_status()

    durable = compare(f"Graph notify, {count} recipients, vs bare loop + 1 fsync per mail",
                      ours, floor_with_fsync, reps=reps, goal=None, prepare=prepare)
    http.close()
    return [row, durable]
