"""A TCP proxy on 127.0.0.1 in front of a store that, once told to stall, accepts and reads
but never answers: what a hung object store looks like to its client."""

from __future__ import annotations

import select
import socket
import threading
import time

POLL_S = 0.2


class StallingProxy:
    """Forwards bytes both ways until `stall()`; from then on every connection, old or new,
    swallows what it is sent and answers nothing, until `resume()` (connections that saw the
    stall stay silent). Its threads end at `close()` or after `lifetime_s`, whichever first."""

    def __init__(self, upstream: str, lifetime_s: float = 300.0):
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(POLL_S)
        self.endpoint = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.end = time.monotonic() + lifetime_s
        self._stalled, self._closed = threading.Event(), threading.Event()
        threading.Thread(target=self._accept, name="stalling-proxy", daemon=True).start()

    def stall(self) -> None:
        self._stalled.set()

    def resume(self) -> None:
        self._stalled.clear()

    def close(self) -> None:
        self._closed.set()

    def _running(self) -> bool:
        return not self._closed.is_set() and time.monotonic() < self.end

    def _accept(self) -> None:
        with self.server:
            while self._running():
                try:
                    client, _ = self.server.accept()
                except TimeoutError:
                    continue
                threading.Thread(target=self._pipe, args=(client,), daemon=True).start()

    def _pipe(self, client: socket.socket) -> None:
        upstream = None if self._stalled.is_set() else socket.create_connection(self.upstream)
        try:
            while self._running():
                if upstream is not None and self._stalled.is_set():
                    upstream.close()  # whatever the store was saying is never delivered
                    upstream = None
                ready, _, _ = select.select([s for s in (client, upstream) if s], [], [], POLL_S)
                for sock in ready:
                    data = sock.recv(1 << 16)
                    if not data:
                        return
                    if upstream is not None:
                        (upstream if sock is client else client).sendall(data)
        finally:
            client.close()
            if upstream is not None:
                upstream.close()
