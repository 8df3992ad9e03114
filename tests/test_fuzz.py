"""Hostile input, generated: thousands of bodies and headers at every webhook endpoint and
the public join form. Never a 500; never a change from a request that was refused."""

from __future__ import annotations

import json

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.db import db
from membership.models import Application, Member
from payments.models import LedgerEntry, Order, Payment, Refund
from tests.helpers import PROSPECT, csrf_token, open_join_form, submit_join

FUZZ = settings(
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)
# Shapes the providers send, so the fuzzing reaches past the first check.
stripe_like = st.fixed_dictionaries(
    {
        "id": st.text(max_size=20),
        "type": st.sampled_from(
            ["checkout.session.completed", "charge.refunded", "charge.dispute.created", "x"]
        ),
        "data": st.fixed_dictionaries({"object": json_values}),
    }
).map(lambda event: json.dumps(event).encode())
xml_like = st.lists(
    st.tuples(
        st.sampled_from(
            [
                "return_code",
                "appid",
                "mch_id",
                "sign",
                "total_fee",
                "out_trade_no",
                "req_info",
                "result_code",
                "x",
            ]
        ),
        st.text(),
    ),
    max_size=8,
).map(
    lambda pairs: ("<xml>" + "".join(f"<{k}>{v}</{k}>" for k, v in pairs) + "</xml>").encode(
        "utf-8", "surrogatepass"
    )
)
bodies = (
    st.binary(max_size=2048)
    | stripe_like
    | xml_like
    | json_values.map(lambda value: json.dumps(value).encode())
)
header_values = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=120)
headers = st.dictionaries(
    st.sampled_from(["Stripe-Signature", "Fake-Signature", "Content-Type", "X-Request-ID"]),
    header_values | st.builds(lambda t, v: f"t={t},v1={v}", st.integers(), header_values),
    max_size=4,
)


def money_state(app) -> tuple:
    with app.app_context():
        counts = [
            db.session.execute(sa.select(sa.func.count()).select_from(model)).scalar()
            for model in (Payment, Order, Member, LedgerEntry, Refund)
        ]
        statuses = db.session.scalars(sa.select(Payment.status).order_by(Payment.id)).all()
        return (*counts, statuses)


def _fuzz_webhook(app, client, provider: str):
    before = money_state(app)

    @FUZZ
    @given(body=bodies, sent_headers=headers)
    def run(body, sent_headers):
        response = client.post(f"/webhooks/{provider}", data=body, headers=sent_headers)
        assert response.status_code < 500, response.data
        assert response.status_code >= 400 or response.status_code == 200

    run()
    assert money_state(app) == before


def test_fake_webhook_never_fails_or_changes_on_junk(app, client, demo):
    submit_join(client, "main")  # a payment waiting, for the junk to aim at
    _fuzz_webhook(app, client, "fake")


def test_stripe_webhook_never_fails_or_changes_on_junk(app, client, demo, apis):
    submit_join(client, "main", provider="stripe")
    _fuzz_webhook(app, client, "stripe")


def test_wechatpay_webhook_never_fails_or_changes_on_junk(app, client, demo, apis):
    submit_join(client, "main", provider="wechatpay")
    _fuzz_webhook(app, client, "wechatpay")


form_text = st.text(max_size=300)


def test_join_form_never_fails_and_refusals_change_nothing(app, client, demo):
    hidden = open_join_form(client)

    @settings(FUZZ, max_examples=500)
    @given(
        fields=st.fixed_dictionaries(
            {},
            optional={
                "display_name": form_text,
                "contact_kind": st.sampled_from(["wechat", "phone", "email"]) | form_text,
                "contact_value": form_text,
                "accept_rules": st.sampled_from(["y", "", "on"]) | form_text,
                "provider": st.sampled_from(["fake", "stripe", "wechatpay"]) | form_text,
                "submission_key": form_text,
            },
        )
    )
    def run(fields):
        with app.app_context():
            applications = db.session.scalar(sa.select(sa.func.count(Application.id)))
        data = {**hidden, **fields}
        data = {
            k: v.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
            for k, v in data.items()
        }
        response = client.post("/join/demo/main", data=data)
        assert response.status_code in (302, 422), response.status_code
        if response.status_code == 422:
            with app.app_context():
                assert db.session.scalar(sa.select(sa.func.count(Application.id))) == applications

    run()
    # A well-formed form still works afterwards.
    assert submit_join(client, "main", **PROSPECT).status_code == 302


#: A number past any row's id: SQLite's driver cannot bind it (OverflowError) and
#: PostgreSQL's 32-bit ids refuse it ("integer out of range").
HUGE = "99999999999999999999999"


def test_a_number_too_large_for_an_id_is_a_404_or_ignored_never_a_500(
    app, demo, logged_in, monkeypatch
):
    """Every route with a number in its path, sent that number (logged in as an admin, and
    not logged in), and every admin page sent it in each number its query reads."""
    monkeypatch.setitem(app.config, "PROPAGATE_EXCEPTIONS", False)
    stranger = app.test_client()
    tokens = {
        logged_in: csrf_token(logged_in, "/admin/"),
        stranger: csrf_token(stranger, "/join/demo/main"),
    }
    tried = 0
    for rule in app.url_map.iter_rules():
        numbers = [name for name, kind in rule._converters.items() if kind.regex == r"\d+"]
        if not numbers:
            continue
        url = rule.rule
        for name in rule.arguments:
            url = url.replace(f"<int:{name}>", HUGE).replace(f"<{name}>", "demo")
        for client, token in tokens.items():
            for method in rule.methods & {"GET", "POST"}:
                response = client.open(url, method=method, data={"csrf_token": token})
                assert response.status_code < 500, (method, url, response.status_code)
                tried += 1
    assert tried > 50
    query = {
        "page": HUGE,
        "community": HUGE,
        "tier": HUGE,
        "days": HUGE,
        "target_id": HUGE,
        "actor": f"staff:{HUGE}",
    }
    pages = [r.rule for r in app.url_map.iter_rules() if "GET" in r.methods and not r.arguments]
    pages += ["/admin/communities/1/members"]
    for page in (p for p in pages if p.startswith("/admin")):
        response = logged_in.get(page, query_string=query)
        assert response.status_code < 500, (page, response.status_code)
