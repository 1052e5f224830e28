"""A loopback TCP proxy with switches for simulating broken links.

``tcp_proxy(target_host, target_port)`` returns a :class:`Proxy` listening on ``.host``/``.port``
that forwards every connection to the target. Switches, effective when the call returns:

* ``cut()``: close every current connection (clients see EOF / a reset);
* ``blackhole()``: keep all sockets open but forward nothing in either direction, also for
  new connections: the "silently dead link" (a NAT timeout, a pulled cable);
* ``restore()``: forward again. Bytes swallowed while blackholed are gone, so streams that
  were open during the blackhole are corrupt; new connections work normally.

``client_bytes`` holds everything clients sent (whether forwarded or not), so a test can assert
that a password never went over the wire.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from collections.abc import Callable, Iterator

import pytest


class Proxy:
    """One listening socket and a background thread that pumps all its connections."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.host, self.port = self._listener.getsockname()[:2]
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._peer: dict[socket.socket, socket.socket] = {}
        self._lock = threading.Lock()
        self._requests: list[tuple[Callable[[], None], threading.Event]] = []
        self._forwarding = True
        self._stopped = False
        self._client_socks: set[socket.socket] = set()
        self._client_bytes = bytearray()
        self._sel.register(self._listener, selectors.EVENT_READ, "accept")
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._run, name=f"tcpproxy:{self.port}",
                                        daemon=True)
        self._thread.start()

    # -- switches (run on the pump thread; return once applied) ---------------------------

    def cut(self) -> None:
        """Close every current connection, both sides."""
        self._call(self._close_all)

    def blackhole(self) -> None:
        """Stop forwarding in both directions; sockets stay open."""
        self._call(lambda: setattr(self, "_forwarding", False))

    def restore(self) -> None:
        """Forward again (for bytes arriving from now on)."""
        self._call(lambda: setattr(self, "_forwarding", True))

    @property
    def client_bytes(self) -> bytes:
        """Everything any client sent through this proxy so far."""
        with self._lock:
            return bytes(self._client_bytes)

    @property
    def connection_count(self) -> int:
        """Number of client connections currently open through the proxy."""
        result: list[int] = []
        self._call(lambda: result.append(len(self._client_socks)))
        return result[0]

    def close(self) -> None:
        if self._stopped:
            return
        self._call(self._shutdown)
        self._thread.join(timeout=5)

    # -- pump thread ---------------------------------------------------------------------

    def _call(self, fn: Callable[[], None]) -> None:
        done = threading.Event()
        with self._lock:
            self._requests.append((fn, done))
        self._wake_w.send(b"x")
        if not done.wait(timeout=10):
            raise RuntimeError("tcp proxy thread did not respond")

    def _run(self) -> None:
        while not self._stopped:
            for key, _ in self._sel.select():
                if key.data == "accept":
                    self._accept()
                elif key.data == "wake":
                    self._handle_requests()
                elif self._stopped:
                    break
                else:
                    self._pump(key.fileobj)  # type: ignore[arg-type]
        self._sel.close()

    def _handle_requests(self) -> None:
        self._wake_r.recv(4096)
        with self._lock:
            requests, self._requests = self._requests, []
        for fn, done in requests:
            fn()
            done.set()

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        self._peer[client] = upstream
        self._peer[upstream] = client
        self._client_socks.add(client)
        self._sel.register(client, selectors.EVENT_READ, "conn")
        self._sel.register(upstream, selectors.EVENT_READ, "conn")

    def _pump(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except OSError:
            data = b""
        if not data:
            self._close_pair(sock)
            return
        if sock in self._client_socks:
            with self._lock:
                self._client_bytes += data
        if not self._forwarding:
            return  # swallowed: the dead link
        try:
            self._peer[sock].sendall(data)
        except OSError:
            self._close_pair(sock)

    def _close_pair(self, sock: socket.socket) -> None:
        other = self._peer.pop(sock, None)
        for s in (sock, other):
            if s is None:
                continue
            self._peer.pop(s, None)
            self._client_socks.discard(s)
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(s)
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def _close_all(self) -> None:
        for sock in list(self._client_socks):
            self._close_pair(sock)

    def _shutdown(self) -> None:
        self._close_all()
        self._stopped = True
        self._sel.unregister(self._listener)
        self._listener.close()
        self._sel.unregister(self._wake_r)
        self._wake_r.close()
        self._wake_w.close()


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[[str, int], Proxy]]:
    """Factory ``make(target_host, target_port) -> Proxy``; all proxies close at teardown."""
    proxies: list[Proxy] = []

    def make(target_host: str, target_port: int) -> Proxy:
        proxy = Proxy(target_host, target_port)
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.close()
