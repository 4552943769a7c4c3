"""A 127.0.0.1 TCP (or Unix socket) server that answers each connection with scripted raw bytes.

For tests of the plugin's HTTP reader (``istio_cni.transport``): the bytes go over a real
socket, split into pieces with optional pauses between them (slow, trickled answers), then
the server closes its side. Every wait is bounded and cut short by ``stop()``; the thread is
a daemon, so a test can never hang on it.
"""

from __future__ import annotations

import queue
import socket
import threading


class Answer:
    """One connection's script: ``pieces`` sent in order, ``gap`` seconds before each but the
    first; ``read_request``: read the client's request first (head, and a Content-Length
    body), and keep it."""

    def __init__(self, pieces: list[bytes], gap: float = 0.0, read_request: bool = False) -> None:
        self.pieces, self.gap, self.read_request = pieces, gap, read_request
        self.request = b""
        self.done = threading.Event()


class RawServer:
    def __init__(self, max_wait: float = 10.0, unix_path: str | None = None) -> None:
        self.max_wait = max_wait
        self._answers: queue.Queue[Answer] = queue.Queue()
        self._stop = threading.Event()
        if unix_path is None:
            self._sock = socket.create_server(("127.0.0.1", 0), backlog=64)
            self.port = self._sock.getsockname()[1]
        else:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._sock.bind(unix_path)
            self._sock.listen(64)
            self.port = 0
        self._sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._serve, name="rawhttp", daemon=True)

    def __enter__(self) -> RawServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        try:
            self._sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() at once
        except OSError:
            pass
        self._thread.join(self.max_wait)
        self._sock.close()

    def script(self, answer: Answer) -> Answer:
        """Queue the answer for the next connection."""
        self._answers.put(answer)
        return answer

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                answer = self._answers.get_nowait()
            except queue.Empty:
                conn.close()
                continue
            # One connection at a time is enough for these tests and keeps the order simple;
            # a slow answer is bounded by max_wait and by stop().
            try:
                self._answer(conn, answer)
            finally:
                conn.close()
                answer.done.set()

    def _answer(self, conn: socket.socket, answer: Answer) -> None:
        conn.settimeout(self.max_wait)
        try:
            if answer.read_request:
                self._read_request(conn, answer)
            for i, piece in enumerate(answer.pieces):
                if i and answer.gap and self._stop.wait(answer.gap):
                    return
                conn.sendall(piece)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            return  # the client gave up (its deadline, or it refused the answer): expected


    @staticmethod
    def _read_request(conn: socket.socket, answer: Answer) -> None:
        while b"\r\n\r\n" not in answer.request:
            data = conn.recv(65536)
            if not data:
                return
            answer.request += data
        head, _, body = answer.request.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length" and value.strip().isdigit():
                length = int(value)
        while len(body) < length:
            data = conn.recv(65536)
            if not data:
                return
            body += data
            answer.request += data


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (out-of-range and repeated cuts ignored)."""
    points = sorted({c for c in cuts if 0 < c < len(data)})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out
