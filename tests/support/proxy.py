"""A real forwarding HTTP proxy that records every request it passes to an MLflow server.

Clients point their tracking URI at `Proxy.url`; calls from subprocesses count too, which a
client-side spy could not see.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_ARTIFACT_PREFIXES = ("/api/2.0/mlflow-artifacts/", "/ajax-api/2.0/mlflow-artifacts/")
_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "host"}
# The tracking API's writes of runs' and experiments' tags and data (the last path segment).
_WRITE_ENDPOINTS = ("set-tag", "delete-tag", "log-batch", "set-experiment-tag", "delete-experiment-tag")


class Proxy:
    # Seconds to wait for the server's answer (benchmarks raise it for 50,000-run requests).
    timeout: float = 120.0

    def __init__(self, target_url: str) -> None:
        target = urlsplit(target_url)
        self.target_host = target.hostname or "127.0.0.1"
        self.target_port = target.port or 80
        self.requests: list[tuple[str, str]] = []
        # Request bodies of the tracking API in the order of ``requests`` (b"" without one).
        self.bodies: list[bytes] = []
        # (path, bytes of the answer's body) for every answered request, in the order answered.
        self.answers: list[tuple[str, int]] = []
        # While True, every request is answered 503 without reaching the server: the tracking
        # server as a client sees it when it goes down (tests flip it mid-pass).
        self.down = False
        # Endpoints (the last path segment, e.g. "search") answered 503 the same way: a server
        # that fails some calls and answers others.
        self.down_endpoints: frozenset[str] = frozenset()
        self.refused = 0  # requests answered 503 by ``down`` or ``down_endpoints``
        # While cleared, writes wait for it (up to ``timeout``) before they reach the server: a
        # client stopped between what it read and what it writes. ``held`` counts them.
        self.writes_open = threading.Event()
        self.writes_open.set()
        self.held = 0
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # The answer goes out as two writes (headers, then body): with Nagle's algorithm the
            # body waits for the client's delayed ACK of the headers, ~40 ms per call, which
            # would weigh on every small request the proxy counts.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: object) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with proxy._lock:
                    proxy._connections.add(self.connection)

            def finish(self) -> None:
                with proxy._lock:
                    proxy._connections.discard(self.connection)
                super().finish()

            def _forward(self) -> None:
                body = self._read_body()
                with proxy._lock:
                    proxy.requests.append((self.command, self.path))
                    proxy.bodies.append(body or b"")
                if (
                    self.path.split("?")[0].rsplit("/", 1)[-1] in _WRITE_ENDPOINTS
                    and not proxy.writes_open.is_set()
                ):
                    with proxy._lock:
                        proxy.held += 1
                    proxy.writes_open.wait(proxy.timeout)
                if proxy.down or self.path.split("?")[0].rsplit("/", 1)[-1] in proxy.down_endpoints:
                    with proxy._lock:
                        proxy.refused += 1
                    data = b"server down"
                    self.send_response(503, "Service Unavailable")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
                headers["Host"] = f"{proxy.target_host}:{proxy.target_port}"
                if body is not None:
                    headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(proxy.target_host, proxy.target_port, timeout=proxy.timeout)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                # Counted before the client can read it: a test reads the counts as soon as its
                # call returns.
                with proxy._lock:
                    proxy.answers.append((self.path, len(data)))
                self.send_response(resp.status, resp.reason)
                for key, value in resp.getheaders():
                    if key.lower() not in _HOP_HEADERS and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _read_body(self) -> bytes | None:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().strip().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    return b"".join(chunks)
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else None

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _forward

        self._handler = Handler
        self._listen(0)
        self.url = f"http://127.0.0.1:{self.port}"

    def _listen(self, port: int) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._listening = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop_listening(self) -> None:
        """Go away as a stopped server does: the port refuses connections and every open one is
        cut, so a client's pooled connection fails too. ``listen_again`` takes the same port."""
        self._server.shutdown()
        self._server.server_close()
        self._listening = False
        with self._lock:
            for conn in self._connections:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def listen_again(self) -> None:
        """Accept connections on the same port again (the server is back)."""
        self._listen(self.port)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.bodies.clear()
            self.answers.clear()

    def tracking_calls(self) -> list[tuple[str, str]]:
        """Requests to the tracking API, artifact uploads and downloads apart."""
        with self._lock:
            return [(m, p) for m, p in self.requests if not p.startswith(_ARTIFACT_PREFIXES)]

    def tracking_bytes(self) -> int:
        """Bytes the tracking API's answers carried (bodies), artifact transfers apart."""
        with self._lock:
            return sum(n for p, n in self.answers if not p.startswith(_ARTIFACT_PREFIXES))

    def close(self) -> None:
        if self._listening:
            self.stop_listening()
