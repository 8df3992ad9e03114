"""Order creation under load: prospects send the join form (an application, and a code
queued to their phone for the join's code step, answered by a redirect to that step; the
order and its payment attempt follow the proof), against the bare one-INSERT endpoint,
both on 2 gunicorn workers in the same run. A community takes 1,000 code requests per 15
minutes (membership.login.CODE_REQUESTS): more forms than that get no code.

Each form is opened beforehand in a session of its own, as a phone would have it open:
the load is the sending alone.

    bench/run order_create --orders 1000
"""

from __future__ import annotations

import sys
import tempfile
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app import create_app  # noqa: E402
from bench.webhook_ingest import database, gunicorn, load, prepare, rate_main, read  # noqa: E402
from tests.helpers import PROSPECT, hidden_value  # noqa: E402

Delivery = tuple[bytes, dict[str, str]]


def form_post(client, path: str, fields: dict[str, str]) -> Delivery:
    """The form at ``path`` opened in ``client``'s session, and sent with ``fields`` (its
    hidden fields added): a body and headers any HTTP client can send again."""
    response = client.get(path)
    page = response.get_data(as_text=True)
    hidden = {
        name: hidden_value(page, name)
        for name in ("csrf_token", "submission_key")
        if f'name="{name}"' in page
    }
    session = SimpleCookie(response.headers["Set-Cookie"])["session"].value
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "Cookie": f"session={session}",
    }
    return urlencode({**hidden, **fields}).encode(), headers


def join_forms(url: str, count: int) -> list[Delivery]:
    """``count`` prospects' join forms for the main tier, filled in."""
    app = create_app(
        {"SQLALCHEMY_DATABASE_URI": url, "PAYMENT_PROVIDERS": ["fake"], "QUEUE_IN_PROCESS": False}
    )
    forms = []
    for i in range(count):
        body, headers = form_post(
            app.test_client(), "/join/demo/main", {**PROSPECT, "contact_value": f"139{i:08d}"}
        )
        # Each prospect from an address of their own (see bench/flash_join.py).
        forms.append(
            (body, {**headers, "X-Forwarded-For": f"198.51.{100 + i // 250}.{i % 250 + 1}"})
        )
    return forms


def run(kind: str, orders: int, clients: int) -> list[tuple[str, dict[str, float]]]:
    with tempfile.TemporaryDirectory() as scratch, database(kind, Path(scratch)) as url:
        prepare(url, 0)
        forms = join_forms(url, orders)
        with gunicorn("bench.bare:create_app()", url) as base:
            bare = load(f"{base}/ingest", forms, clients)
        with gunicorn(
            "app:create_app()", url, PAYMENT_PROVIDERS="fake", TRUSTED_PROXIES="1"
        ) as base:
            ours = load(f"{base}/join/demo/main", forms, clients)
        (made,) = read(url, "SELECT count(*) FROM login_codes")
        assert made == orders, f"{made} applications with a code of {orders} forms"
        return [("bare INSERT endpoint", bare), ("join form → code step", ours)]


if __name__ == "__main__":
    rate_main(__doc__, "order creation", "orders", 1000, "orders/s", run)
