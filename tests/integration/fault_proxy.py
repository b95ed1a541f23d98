"""A loopback TCP proxy in front of the real store that breaks chosen responses mid-body.

Real network faults, not mocks: the client talks HTTP to the proxy, the proxy to the real
SeaweedFS, byte for byte (so SigV4 signatures still match); a response that grows past `cut_after`
bytes has its connection closed there, as a dying network or server would, `cuts` times (-1: every
time). Every request head the client sent is kept for assertions (method, path, Range).
"""

from __future__ import annotations

import re
import socket
import threading


class FaultProxy:
    def __init__(self, upstream_port: int, *, cut_after: int | None = None, cuts: int = 0) -> None:
        self.upstream_port = upstream_port
        self.cut_after = cut_after
        self.cuts_left = cuts
        self.cut_count = 0
        self._sent = bytearray()
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def requests(self) -> list[tuple[str, str, str | None]]:
        """(method, path, Range header or None) of every request seen, in order."""
        with self._lock:
            text = self._sent.decode("latin-1")
        out = []
        for m in re.finditer(r"(GET|HEAD|PUT|POST|DELETE) (\S+) HTTP/1\.1\r\n(.*?)\r\n\r\n", text, re.S):
            rng = re.search(r"^range: *(.+)$", m.group(3), re.I | re.M)
            out.append((m.group(1), m.group(2), rng.group(1).strip() if rng else None))
        return out

    def close(self) -> None:
        self._stop = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            state = {"since_request": 0}
            threading.Thread(target=self._up, args=(client, upstream, state), daemon=True).start()
            threading.Thread(target=self._down, args=(upstream, client, state), daemon=True).start()

    def _up(self, client: socket.socket, upstream: socket.socket, state: dict[str, int]) -> None:
        try:
            while data := client.recv(65536):
                with self._lock:
                    self._sent += data
                    state["since_request"] = 0
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            _close(upstream)

    def _down(self, upstream: socket.socket, client: socket.socket, state: dict[str, int]) -> None:
        try:
            while data := upstream.recv(65536):
                with self._lock:
                    before = state["since_request"]
                    state["since_request"] += len(data)
                    cut = (
                        self.cut_after is not None
                        and self.cuts_left != 0
                        and state["since_request"] > self.cut_after
                    )
                    if cut:
                        self.cuts_left -= 1
                        self.cut_count += 1
                if cut:
                    client.sendall(data[: max(0, self.cut_after - before)])  # type: ignore[operator]
                    break
                client.sendall(data)
        except OSError:
            pass
        finally:
            _close(client)
            _close(upstream)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
