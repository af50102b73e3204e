"""A TCP proxy on loopback that tests can cut: a machine's network, in software.

`online = False` closes every open connection and refuses new ones, as if the
machine had lost its network; `online = True` brings it back.  Fault tests can
also make the network bad, at random but reproducibly (``seed``):

- ``delay`` and ``jitter``: every chunk waits ``delay`` plus up to ``jitter`` seconds;
- ``rate``: bytes per second per direction of a connection (0: unlimited);
- ``cut_rate``: the chance, per request and per answer, that the connection
  ends in the middle of it with a FIN (at a random byte: in its first 64 KiB
  or, half the time, anywhere in its first 4 MiB: a block upload);
- ``reset_rate``: the same, ending with a TCP reset (RST) instead;
- ``error_rate``: the chance that a new connection's first request is not
  passed on but answered with ``error_status`` (503 by default);
- ``answer_status``: answer every request with this status (e.g. 507, a full
  server disk) and pass nothing on;
- `trip_offline_at`: go offline once this many bytes went up (deterministic
  cuts in the middle of an upload);
- `lose_answer`: pass the next request that contains some bytes (e.g.
  ``b"/commit"``) to the server, and cut the connection instead of passing its
  answer back: the server did the work, the client never hears of it.

Counters (``bytes_up``, ``bytes_down``, ``connections``, ``requests``, ``cuts``,
``resets``, ``errors``, ``refused``) let tests measure what crossed the network, e.g. that
a resumed upload sent only the blocks the server lacked.  Bytes "up" go from
the client to the server.
"""

from __future__ import annotations

import random
import socket
import struct
import threading
import time

_CHUNK = 65536
_REASONS = {503: "Service Unavailable", 507: "Insufficient Storage", 500: "Internal Server Error"}


class Proxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1", seed: int | None = None) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._online = True
        self.delay = 0.0
        self.jitter = 0.0
        self.rate = 0.0
        self.cut_rate = 0.0
        self.reset_rate = 0.0
        self.error_rate = 0.0
        self.error_status = 503
        self.answer_status: int | None = None
        self._trip_up: int | None = None
        self._lose: tuple[bytes, int] | None = None
        self.lost_answers = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.connections = 0
        #: Requests begun (the first bytes of each, also those answered with an injected error)
        self.requests = 0
        self.refused = 0
        self.cuts = 0
        self.resets = 0
        self.errors = 0
        #: time.monotonic() of every connection attempt (accepted or refused)
        self.attempts: list[float] = []
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    # -- controls ----------------------------------------------------------------
    @property
    def online(self) -> bool:
        return self._online

    @online.setter
    def online(self, value: bool) -> None:
        self._online = value
        if not value:
            self._cut_all()

    def trip_offline_at(self, bytes_up: int) -> None:
        """Go offline (cutting every connection) once ``bytes_up`` reaches *bytes_up*."""
        self._trip_up = bytes_up

    def lose_answer(self, marker: bytes, count: int = 1) -> None:
        """Cut the answers to the next *count* requests whose first bytes contain *marker*."""
        self._lose = (marker, count)

    def calm(self) -> None:
        """A good network again: no delays, cuts, resets or injected errors."""
        self.delay = self.jitter = self.rate = 0.0
        self.cut_rate = self.reset_rate = self.error_rate = 0.0
        self.answer_status = None
        self._trip_up = None

    def chaos(self, *, delay: float = 0.0, jitter: float = 0.02, cut_rate: float = 0.03, reset_rate: float = 0.03,
              error_rate: float = 0.1) -> None:
        """A bad network: random delays, mid-request cuts and resets, and some 503s."""
        self.delay, self.jitter = delay, jitter
        self.cut_rate, self.reset_rate, self.error_rate = cut_rate, reset_rate, error_rate

    # -- the proxy ---------------------------------------------------------------
    def _chance(self, p: float) -> bool:
        if p <= 0:
            return False
        with self._lock:
            return self._random.random() < p

    def _cut_all(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, set()
        for conn in conns:
            _close(conn)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.attempts.append(time.monotonic())
            if not self._online:
                self.refused += 1
                _close(client, reset=True)
                continue
            status = self.answer_status
            if status is None and self._chance(self.error_rate):
                status = self.error_status
            if status is not None:
                self.errors += 1
                self.requests += 1
                threading.Thread(target=self._answer, args=(client, status), daemon=True).start()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client, reset=True)
                continue
            upstream.settimeout(None)
            self.connections += 1
            with self._lock:
                self._conns |= {client, upstream}
            link = _Link()
            threading.Thread(target=self._pipe, args=(client, upstream, True, link), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False, link), daemon=True).start()

    def _answer(self, client: socket.socket, status: int) -> None:
        """Read one request and answer it with *status* (JSON as the server would), then close."""
        try:
            client.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = client.recv(_CHUNK)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
            while len(body) < length:
                chunk = client.recv(_CHUNK)
                if not chunk:
                    return
                body += chunk
            self.bytes_up += len(head) + 4 + len(body)
            code = {507: "insufficient_storage"}.get(status, "unavailable")
            payload = f'{{"error": "{code}", "message": "injected by the test proxy"}}'.encode()
            reason = _REASONS.get(status, "Error")
            client.sendall(
                f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n".encode() + payload
            )
        except (OSError, ValueError):
            pass
        finally:
            _close(client)

    def _pipe(self, src: socket.socket, dst: socket.socket, up: bool, link: _Link) -> None:
        try:
            while True:
                data = src.recv(_CHUNK)
                if not data:
                    break
                wait = self.delay
                if self.jitter:
                    with self._lock:
                        wait += self._random.uniform(0, self.jitter)
                if self.rate:
                    wait += len(data) / self.rate
                if wait:
                    time.sleep(wait)
                if link.up is not up:
                    # Data in the other direction than last time: a request or an answer begins.
                    link.up = up
                    link.cut_after = None
                    if up:
                        self.requests += 1
                    if self._chance(self.cut_rate + self.reset_rate):
                        with self._lock:
                            within = len(data) if self._random.random() < 0.5 else 4 * 1024 * 1024
                            link.cut_after = self._random.randrange(within + 1)
                            link.reset = self._random.random() * (self.cut_rate + self.reset_rate) < self.reset_rate
                lose = self._lose
                if up and lose is not None and lose[0] in data[:4096] and not link.lose:
                    link.lose = True
                    self._lose = (lose[0], lose[1] - 1) if lose[1] > 1 else None
                if not up and link.lose:
                    self.lost_answers += 1
                    _close(src)
                    _close(dst)
                    break
                if link.cut_after is not None and link.cut_after < len(data):
                    part = link.cut_after
                    dst.sendall(data[:part])
                    self._count(up, part)
                    if link.reset:
                        self.resets += 1
                    else:
                        self.cuts += 1
                    _close(src, reset=link.reset)
                    _close(dst, reset=link.reset)
                    break
                if link.cut_after is not None:
                    link.cut_after -= len(data)
                if not self._online:
                    break
                dst.sendall(data)
                self._count(up, len(data))
        except OSError:
            pass
        finally:
            _close(src)
            _close(dst)
            with self._lock:
                self._conns -= {src, dst}

    def _count(self, up: bool, n: int) -> None:
        if not up:
            self.bytes_down += n
            return
        self.bytes_up += n
        trip = self._trip_up
        if trip is not None and self.bytes_up >= trip:
            self._trip_up = None
            self.online = False

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self._cut_all()


class _Link:
    """What the two directions of one proxied connection share."""

    def __init__(self) -> None:
        self.up: bool | None = None  # direction of the last data
        self.cut_after: int | None = None  # bytes of the current message to pass before a cut
        self.reset = False
        self.lose = False  # the answer to the request under way is to be lost


def _close(sock: socket.socket, reset: bool = False) -> None:
    # close() alone does not end a connection whose socket another thread is blocked in
    # recv() on (Linux keeps it open until that recv returns, so the peer hears nothing
    # and waits for its timeout): shutdown() first, which wakes that thread.
    try:
        if reset:
            # SO_LINGER with a zero timeout: the last close sends RST instead of FIN;
            # SHUT_RD wakes the other pipe thread without sending anything.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.shutdown(socket.SHUT_RD)
        else:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
