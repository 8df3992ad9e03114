"""Event fan-out: 1,000 admissions (to the free lobby, through ``submit_application``, each
writing its ``member.admitted`` event), 3 endpoints subscribed to it, and one worker
delivering the 3,000 signed requests to a local receiver. The target: all delivered within
a minute.

    bench/run event_fanout --admissions 1000
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import create_app  # noqa: E402
from bench.webhook_ingest import SETTINGS, database, free_port, prepare  # noqa: E402
from core.clock import utcnow  # noqa: E402
from core.db import db  # noqa: E402
from core.events import DeliveryStatus, WebhookDelivery  # noqa: E402
from core.webhooks_out import create_endpoint, drain_webhooks  # noqa: E402
from membership.models import ContactKind, Tier  # noqa: E402
from membership.services import submit_application  # noqa: E402

ENDPOINTS = 3


class _Receiver(BaseHTTPRequestHandler):
    """Answers every delivery 204 over a kept-alive connection, and counts it."""

    protocol_version = "HTTP/1.1"
    received: Synchronized

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.received.get_lock():
            self.received.value += 1
        self.send_response(204)
        self.end_headers()

    def log_message(self, format, *args) -> None:
        pass


def _serve(port: int, received: Synchronized) -> None:
    _Receiver.received = received
    server = ThreadingHTTPServer(("127.0.0.1", port), _Receiver)
    server.daemon_threads = True
    server.serve_forever()


@contextmanager
def receiver():
    """A local receiver in a process of its own (not competing with the worker's); yields
    its URL and its count of requests."""
    received = multiprocessing.Value("i", 0)
    port = free_port()
    process = multiprocessing.Process(target=_serve, args=(port, received), daemon=True)
    process.start()
    time.sleep(0.5)
    try:
        yield f"http://127.0.0.1:{port}/hook", received
    finally:
        process.terminate()
        process.join()


def run(kind: str, admissions: int) -> dict[str, float]:
    with (
        receiver() as (url, received),
        tempfile.TemporaryDirectory() as scratch,
        database(kind, Path(scratch)) as db_url,
    ):
        prepare(db_url, 0)
        app = create_app(
            {
                "SQLALCHEMY_DATABASE_URI": db_url,
                "QUEUE_IN_PROCESS": False,
                "WEBHOOKS_ALLOW_PRIVATE_URLS": True,
            }
        )
        with app.app_context():
            lobby = db.session.scalar(sa.select(Tier).where(Tier.is_lobby))
            for i in range(ENDPOINTS):
                create_endpoint(
                    lobby.community_id,
                    f"{url}/{i}",
                    ["member.admitted"],
                    actor="bench",
                    now=utcnow(),
                )
            db.session.commit()
            start = time.perf_counter()
            for i in range(admissions):
                submit_application(
                    lobby,
                    display_name=f"新人{i}",
                    contact_kind=ContactKind.EMAIL,
                    contact_value=f"fanout{i}@example.com",
                    submission_key=f"fanout-{i}",
                    now=utcnow(),
                )
                db.session.commit()
            admitted = time.perf_counter() - start
            start = time.perf_counter()
            while drain_webhooks():
                pass
            delivered = time.perf_counter() - start
            counts = dict(
                db.session.execute(
                    sa.select(WebhookDelivery.status, sa.func.count()).group_by(
                        WebhookDelivery.status
                    )
                ).all()
            )
            for engine in db.engines.values():
                engine.dispose()
        expected = admissions * ENDPOINTS
        assert counts == {DeliveryStatus.DELIVERED: expected}, counts
        assert received.value == expected, received.value
        return {"admit_s": admitted, "deliver_s": delivered, "deliveries": expected}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--admissions", type=int, default=1000)
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    os.environ.update(SETTINGS)
    print(
        f"event fan-out: {args.admissions} admissions × {ENDPOINTS} endpoints, one worker, "
        f"{os.cpu_count()} CPUs (target: delivered within 60 s)"
    )
    print(
        f"{'database':10} {'admitting s':>12} {'delivering s':>13} {'deliveries/s':>13} {'met':>4}"
    )
    for kind in ["sqlite", "postgres"] if args.database == "both" else [args.database]:
        r = run(kind, args.admissions)
        print(
            f"{kind:10} {r['admit_s']:12.1f} {r['deliver_s']:13.1f} "
            f"{r['deliveries'] / r['deliver_s']:13.1f} {'yes' if r['deliver_s'] <= 60 else 'no':>4}"
        )


if __name__ == "__main__":
    main()
