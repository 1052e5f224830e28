"""The recording aiosmtpd server of the tests, in its own process (``python -m
benchmarks.smtp_server CA_FILE CERT_FILE KEY_FILE``).

A server thread inside the benchmark process would compete with the client for the GIL, and
every blocking call of the client (an fsync, a rename) would then wait for the server's
thread to let go: a cost a real deployment, whose server is another process, never pays.
Prints one JSON line (host, port, username, password) once listening; stops when its stdin
closes.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

from tests.plugins.smtpd import start_smtp_server
from tests.plugins.tlsca import TestCA


def main(argv: list[str]) -> None:
    warnings.filterwarnings("ignore", "Session.login_data is deprecated")
    ca_file, cert_file, key_file = (Path(a) for a in argv)
    server = start_smtp_server(TestCA(ca_file, cert_file, key_file))
    print(json.dumps({"host": server.host, "port": server.port, "username": server.username,
                      "password": server.password}), flush=True)
    try:
        sys.stdin.read()
    finally:
        server.stop()


if __name__ == "__main__":
    main(sys.argv[1:])
