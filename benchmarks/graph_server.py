"""The tests' fake identity provider and fake Microsoft Graph in their own process
(``python -m benchmarks.graph_server CA_FILE CERT_FILE KEY_FILE``), for the Graph cases.

In its own process for the reason ``smtp_server`` is: a server thread would compete with the
client for the GIL. Prints one JSON line (endpoint, authority, tenant, app id, secret,
mailbox) once listening, then answers one line per command on stdin:

* ``fill N`` — a fresh mailbox holding N messages from ``mailgen`` (1 % relevant);
* ``requests`` — how many requests Graph has answered so far;
* ``clear`` — forget the mail sent so far (Sent Items, drafts, the outgoing log).

Stops when its stdin closes.
"""

from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path

from benchmarks import mailgen
from tests.plugins.fakegraph import FakeGraph
from tests.plugins.fakeidp import FakeIdP
from tests.plugins.tlsca import TestCA

APP_ID = "mt-bench-app"
MAILBOX = "efaktura8b@kommune.example"


def main(argv: list[str]) -> None:
    ca = TestCA(*(Path(a) for a in argv))
    idp = FakeIdP(ca)
    graph = FakeGraph(ca, idp)
    secret = secrets.token_urlsafe(16)
    idp.register_app(APP_ID, mailbox=MAILBOX, secret=secret)
    graph.add_mailbox(MAILBOX, owner=APP_ID)
    print(json.dumps({"endpoint": graph.endpoint, "authority": idp.authority,
                      "tenant": idp.tenant, "app_id": APP_ID, "secret": secret,
                      "mailbox": MAILBOX}), flush=True)
    try:
        for line in sys.stdin:
            command, _, arg = line.strip().partition(" ")
            if command == "fill":
                graph.mailboxes.pop(MAILBOX)
                graph.add_mailbox(MAILBOX, owner=APP_ID)
                for raw in mailgen.mailbox(int(arg), mailgen.fixture_mails()):
                    graph.deliver(MAILBOX, raw)
                print(json.dumps({"ok": True}), flush=True)
            elif command == "requests":
                print(json.dumps({"requests": len(graph.requests)}), flush=True)
            elif command == "clear":
                box = graph.mailboxes[MAILBOX]
                for folder in ("sentitems", "drafts"):
                    for msg in graph.folder_messages(MAILBOX, folder):
                        del box.messages[msg.id]
                graph.outgoing.clear()
                print(json.dumps({"ok": True}), flush=True)
    finally:
        graph.stop()
        idp.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
