"""Messages sent per second by one worker, against the local fake SMS API (Alibaba's SDK
signing every request), beside a bare loop of the same SDK calls in the same run: what the
queue (claim, commit, send, record, commit) costs on top of the provider's call.

    bench/run outbox_send --messages 500 [--provider aliyun|tencent]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import flask_migrate

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import create_app  # noqa: E402
from bench.webhook_ingest import SETTINGS, database  # noqa: E402
from core.clock import utcnow  # noqa: E402
from core.db import db  # noqa: E402
from core.outbox import MessageKind, drain_outbox, enqueue_many  # noqa: E402
from core.sms import sms_sender  # noqa: E402
from tests import fake_apis  # noqa: E402
from tests.test_sms import sms_settings  # noqa: E402

PARAMS = {"community": "群门读书会", "title": "写作课", "link": "https://join.example.com/c/1"}


def phone(i: int) -> str:
    return f"139{i:08d}"


def run(kind: str, messages: int, provider: str, apis: fake_apis.FakeAPIs) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as scratch, database(kind, Path(scratch)) as url:
        app = create_app(
            {"SQLALCHEMY_DATABASE_URI": url, "OUTBOX_TO_LOG": False} | sms_settings(provider, apis)
        )
        with app.app_context():
            flask_migrate.upgrade(directory=str(ROOT / "migrations"))
            sender = sms_sender(app)
            apis.reset()
            start = time.perf_counter()
            for i in range(messages):
                sender.send(phone(i), "announcement", PARAMS, f"bare-{i}")
            bare = time.perf_counter() - start
            enqueue_many(
                [
                    {
                        "kind": MessageKind.ANNOUNCEMENT,
                        "routes": [["sms", phone(i)]],
                        "subject": "新课程 · New course",
                        "body": "…",
                        "params": PARAMS,
                        "member_id": i,
                        "dedupe_key": f"bench:{i}",
                    }
                    for i in range(messages)
                ],
                now=utcnow(),
            )
            db.session.commit()
            apis.reset()
            start = time.perf_counter()
            sent = 0
            while tried := drain_outbox(limit=messages):
                sent += tried
            queued = time.perf_counter() - start
            delivered = len(apis.sms_messages)
            for engine in db.engines.values():
                engine.dispose()
    return {
        "bare": messages / bare,
        "queue": messages / queued,
        "ratio": bare / queued,
        "delivered": delivered,
        "tried": sent,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=500)
    parser.add_argument("--provider", choices=["aliyun", "tencent"], default="aliyun")
    parser.add_argument("--database", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    os.environ.update(SETTINGS)
    kinds = ["sqlite", "postgres"] if args.database == "both" else [args.database]
    if "postgres" in kinds and "TEST_DATABASE_URL" not in os.environ:
        kinds.remove("postgres")
    apis, server = fake_apis.start()
    try:
        print(f"one worker, {args.messages} SMS by {args.provider} to the local fake")
        print(f"{'database':10} {'bare /s':>9} {'queue /s':>9} {'vs bare':>8} {'delivered':>9}")
        for kind in kinds:
            r = run(kind, args.messages, args.provider, apis)
            print(
                f"{kind:10} {r['bare']:9.1f} {r['queue']:9.1f} {r['ratio']:8.2f} "
                f"{r['delivered']:9d}"
            )
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
