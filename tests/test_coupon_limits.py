"""Coupon codes are limited per client and in all, and the limit holds when a burst of
tries arrives at once over real connections (on PostgreSQL as on SQLite)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
import requests
import sqlalchemy as sa

from core.audit import AuditEntry
from core.db import db
from core.limits import AttemptCounter
from membership.cli import seed_demo_community
from payments.discounts import register_discount_quote
from payments.models import Order
from perks.coupons import quote_coupon
from perks.models import CouponUse
from tests.conftest import fresh_database
from tests.helpers import PROSPECT, add_coupon, hidden_value, latest_code
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

        def counting_quote(*args, **kwargs):
            looked_up.append(args[1])
            return quote_coupon(*args, **kwargs)

        # A prospect's code is checked by the quote; its use is reserved once they prove
        # their contact (see membership.services.keep_coupon_for_proof).
        register_discount_quote(app, counting_quote)
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


PROVERS = 8


@pytest.mark.committing
def test_proofs_at_once_give_a_one_use_coupon_once(tmp_path, _api_server):
    """Eight prospects typed a one-use coupon (held by none of them while unproven) and
    type their codes at once, on parallel connections: one order gets the discount, the
    others keep their price and are told; one use is reserved."""
    with fresh_database(tmp_path, _api_server) as app:
        with app.app_context():
            seed_demo_community()
            db.session.commit()
        add_coupon(app, "ONLY1", max_uses=1)
        server, base = _serve(app)
        try:
            provers = []
            for person in range(PROVERS):
                browser = requests.Session()
                browser.headers["Host"] = "qunmen.test"
                page = browser.get(f"{base}/join/demo/main", timeout=60).text
                fields = {
                    name: hidden_value(page, name) for name in ("csrf_token", "submission_key")
                }
                fields |= PROSPECT | {"contact_value": f"1370000{person:04}", "coupon": "ONLY1"}
                sent = browser.post(
                    f"{base}/join/demo/main", data=fields, allow_redirects=False, timeout=60
                )
                verify_url = base + sent.headers["Location"]
                page = browser.get(verify_url, timeout=60).text
                code = {"csrf_token": hidden_value(page, "csrf_token"), "code": latest_code(app)}
                provers.append((browser, verify_url, code))
            start = threading.Barrier(PROVERS)

            def prove(prover) -> requests.Response:
                browser, url, code = prover
                start.wait()
                return browser.post(url, data=code, allow_redirects=False, timeout=60)

            with ThreadPoolExecutor(max_workers=PROVERS) as pool:
                responses = list(pool.map(prove, provers))
        finally:
            server.shutdown()
        where = sorted(urlsplit(r.headers["Location"]).path.split("/")[1] for r in responses)
        assert where == ["fake-pay"] + ["join"] * (PROVERS - 1)  # the rest: their status page
        with app.app_context():
            amounts = sorted(db.session.scalars(sa.select(Order.amount)))
            assert amounts == [7920] + [9900] * (PROVERS - 1)
            assert db.session.scalar(sa.select(sa.func.count(CouponUse.id))) == 1
            refused = sa.select(sa.func.count(AuditEntry.id)).where(
                AuditEntry.action == "application.coupon_refused"
            )
            assert db.session.scalar(refused) == PROVERS - 1
