"""A webhook receiver on 127.0.0.1 for the outgoing webhooks' tests: it keeps every
request (headers and body), fails the first ``fail_first`` with a 500, can answer with a
redirect, and can hold each request a while before answering."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Received:
    """What the receiver saw and how it should answer."""

    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    fail_first: int = 0
    #: Answer with this status instead (e.g. 302), after the failures.
    status: int = 200
    #: Seconds each request is held before it is answered.
    delay: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def ids(self) -> list[str]:
        return [headers["webhook-id"] for headers, _ in self.requests]


def start() -> tuple[Received, ThreadingHTTPServer, str]:
    """Start a receiver; returns its state, the server (shut it down) and its URL."""
    state = Received()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            with state.lock:
                state.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                failing = len(state.requests) <= state.fail_first
            time.sleep(state.delay)
            status = 500 if failing else state.status
            answer = b"down for now" if failing else b"thanks"
            self.send_response(status)
            if 300 <= status < 400:
                self.send_header("Location", f"http://127.0.0.1:{self.server.server_port}/moved")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format, *args) -> None:  # quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return state, server, f"http://127.0.0.1:{server.server_port}/qunmen"
