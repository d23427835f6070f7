"""A small TCP fault proxy on 127.0.0.1 for network-fault tests (threads, no dependencies).

Modes (``proxy.mode = ...``, changeable at any time):
  pass       forward both ways
  latency    forward, delaying every chunk by ``proxy.delay`` seconds
  blackhole  accept and read, never forward (the peer's kernel still ACKs: only client-side
             read timeouts notice)
  reset      RST every active connection (SO_LINGER 0), then behave as ``pass``
  cut        close every active connection cleanly, then behave as ``pass``
  lose_reply forward requests; the first reply from the server (the first that contains
             ``proxy.reply_marker``, when set) is dropped and its connection closed (the server
             did the work, the client never hears of it), then ``pass``
  refuse     close every active connection, then close each new one at once (a server
             restarting, a standby not promoted yet) until the mode changes
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from contextlib import suppress


class FaultProxy:
    """Listens on 127.0.0.1:<port> (or the Unix socket ``listen``) and forwards to ``target``.

    ``target`` is a (host, port) or the path of a Unix socket: a Unix socket joins network
    namespaces, so a proxy inside one can reach a server outside.
    """

    def __init__(self, target: tuple[str, int] | str, *, listen: str | None = None) -> None:
        self.target = target
        self.delay = 0.2
        self.reply_marker: bytes | None = None
        self._mode = "pass"
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        if listen is None:
            self._server = socket.create_server(("127.0.0.1", 0))
            self.port: int = self._server.getsockname()[1]
        else:
            self._server = socket.socket(socket.AF_UNIX)
            self._server.bind(listen)
            self._server.listen()
            self.port = 0
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def mode(self) -> str:
        return self._mode

    @mode.setter
    def mode(self, mode: str) -> None:
        assert mode in ("pass", "latency", "blackhole", "reset", "cut", "lose_reply", "refuse")
        if mode in ("reset", "cut", "refuse"):
            with self._lock:
                conns, self._conns = self._conns, []
            for s in conns:
                with suppress(OSError):
                    if mode == "reset":
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    else:
                        # At once, as a server that closes its end does: a close() alone waits
                        # for the pipe thread blocked in recv() on it.
                        s.shutdown(socket.SHUT_RDWR)
                s.close()
            mode = "refuse" if mode == "refuse" else "pass"
        self._mode = mode

    def close(self) -> None:
        self._stopped = True
        self._server.close()
        self.mode = "cut"

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self._mode == "refuse":
                client.close()
                continue
            try:
                if isinstance(self.target, str):
                    upstream = socket.socket(socket.AF_UNIX)
                    upstream.settimeout(5)
                    upstream.connect(self.target)
                else:
                    upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for src, dst, reply in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pipe, args=(src, dst, reply), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, reply: bool) -> None:
        with suppress(OSError):
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if (
                    reply
                    and self._mode == "lose_reply"
                    and (self.reply_marker is None or self.reply_marker in data)
                ):
                    self._mode = "pass"
                    break
                if self._mode == "blackhole":
                    continue
                if self._mode == "latency":
                    time.sleep(self.delay)
                dst.sendall(data)
        for s in (src, dst):
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
