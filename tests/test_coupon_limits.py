"""Coupon codes are limited per client and in all, and the limit holds when a burst of
tries arrives at once over real connections (on PostgreSQL as on SQLite)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from core.db import db
from core.limits import AttemptCounter
from membership.cli import seed_demo_community
from payments.discounts import register_discount_rule
from perks.coupons import reserve_coupon
from tests.conftest import fresh_database
from tests.helpers import PROSPECT, hidden_value
from tests.test_concurrency import _serve

TRIES = 30


def _join_forms(base: str, times: int) -> list[tuple[requests.Session, dict[str, str]]]:
    """``times`` browsers, each with the main tier's join form open and filled in with a
    wrong coupon code."""
    forms = []
    for person in range(times):
        browser = requests.Session()
        browser.headers["Host"] = "qunmen.test"
        page = browser.get(f"{base}/join/demo/main", timeout=60).text
        fields = {name: hidden_value(page, name) for name in ("csrf_token", "submission_key")}
        fields |= PROSPECT | {"contact_value": f"1390000{person:04}", "coupon": f"GUESS{person}"}
        forms.append((browser, fields))
    return forms


@pytest.mark.committing
def test_a_burst_of_wrong_codes_checks_no_more_than_the_limit(tmp_path, _api_server):
    """30 wrong codes from one client at once, on parallel connections: 10 are looked up,
    the other 20 are told to wait without being looked up."""
    with fresh_database(tmp_path, _api_server) as app:
        with app.app_context():
            seed_demo_community()
            db.session.commit()
        looked_up = []

        def counting_rule(*args, **kwargs):
            looked_up.append(args[1])
            return reserve_coupon(*args, **kwargs)

        register_discount_rule(app, counting_rule)
        server, base = _serve(app)
        try:
            forms = _join_forms(base, TRIES)
            start = threading.Barrier(TRIES)

            def post(form: tuple[requests.Session, dict[str, str]]) -> requests.Response:
                browser, fields = form
                start.wait()
                return browser.post(f"{base}/join/demo/main", data=fields, timeout=60)

            with ThreadPoolExecutor(max_workers=TRIES) as pool:
                responses = list(pool.map(post, forms))
        finally:
            server.shutdown()
        assert [response.status_code for response in responses] == [422] * TRIES
        unknown = [r for r in responses if "优惠码不存在" in r.text]
        waiting = [r for r in responses if "尝试次数过多" in r.text]
        assert (len(looked_up), len(unknown), len(waiting)) == (10, 10, 20)
        with app.app_context():
            counter = db.session.get(AttemptCounter, "coupon-try:client:127.0.0.1")
            assert counter.count == TRIES
