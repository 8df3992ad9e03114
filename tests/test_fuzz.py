"""Hostile input, generated: thousands of bodies and headers at every webhook endpoint and
the public join form. Never a 500; never a change from a request that was refused."""

from __future__ import annotations

import io
import json
import re

import pytest
import sqlalchemy as sa
import wtforms
from flask_wtf import FlaskForm
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import MultiDict
from wtforms.fields.core import UnboundField

from core import admin as core_admin
from core import auth as core_auth
from core.db import db
from core.forms import DateField, DateTimeLocalField, Form, IntegerField
from core.outbox import OutboxMessage
from membership import admin as membership_admin
from membership import forms as membership_forms
from membership.models import Application, Member, Tier
from payments import admin as payments_admin
from payments.models import LedgerEntry, Order, Payment, Refund
from perks import admin as perks_admin
from perks import forms as perks_forms
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


def _form_classes() -> list[type[FlaskForm]]:
    """Every form the product declares."""
    modules = (core_admin, core_auth, membership_forms, payments_admin, perks_admin, perks_forms)
    return [
        form
        for module in modules
        for form in vars(module).values()
        if isinstance(form, type)
        and issubclass(form, FlaskForm)
        and form.__module__ == module.__name__
    ]


def test_every_number_and_day_a_form_takes_is_bounded():
    """A number past the database's integers, or a day past Python's calendar once moved
    to a community's zone, is refused by the field, never given to a statement."""
    bounded = {
        wtforms.IntegerField: IntegerField,
        wtforms.DateField: DateField,
        wtforms.DateTimeLocalField: DateTimeLocalField,
    }
    seen = 0
    for form in _form_classes():
        for name in dir(form):
            field = getattr(form, name)
            if not isinstance(field, UnboundField):
                continue
            for plain, ours in bounded.items():
                if issubclass(field.field_class, plain):
                    assert issubclass(field.field_class, ours), f"{form.__name__}.{name}"
                    seen += 1
    assert seen > 20  # the scan found the forms' numbers and days


class _Bounded(wtforms.Form):
    number = IntegerField()
    day = DateField()
    moment = DateTimeLocalField()


@pytest.mark.parametrize(
    ("field", "typed", "accepted"),
    [
        ("number", "2147483647", True),
        ("number", "-2147483647", True),
        ("number", HUGE, False),
        ("number", "-" + HUGE, False),
        ("day", "2026-12-03", True),
        ("day", "0001-01-01", False),
        ("day", "9999-12-31", False),
        ("moment", "9999-12-31T23:59", False),
        ("moment", "2030-01-01T08:00", True),
    ],
)
def test_bounded_fields_refuse_what_the_database_or_the_calendar_cannot_hold(
    app, field, typed, accepted
):
    with app.test_request_context():
        form = _Bounded(MultiDict({field: typed}))
        form.validate()
        assert not form[field].errors if accepted else form[field].errors, form[field].errors
        assert (form[field].data is not None) is accepted


def test_a_number_or_day_too_large_on_an_admin_form_is_an_error_on_the_field(app, demo, logged_in):
    with app.app_context():
        tier_id = db.session.scalar(sa.select(Tier.id).where(Tier.code == "main"))
    url = f"/admin/tiers/{tier_id}/edit"
    page = logged_in.get(url).text
    fields = dict(re.findall(r'<input[^>]*?name="(\w+)"[^>]*?value="([^"]*)"', page))
    response = logged_in.post(url, data={**fields, "sort_order": HUGE})
    assert response.status_code == 200 and "数字太大" in response.text
    export = f"/admin/communities/{demo.id}/export"
    for first, last in (("0001-01-01", "2026-12-31"), ("2026-01-01", "9999-12-31")):
        response = logged_in.get(export, query_string={"first_day": first, "last_day": last})
        assert response.status_code == 200 and "请选择 1900-01-01 到 9000-12-31 之间的日期" in (
            response.text
        )


def test_a_failure_that_spoils_the_session_still_gets_the_error_page(
    app, demo, logged_in, monkeypatch
):
    """A statement the database refused leaves the session needing a rollback: the error
    page (whose frame reads the admin's communities) is still drawn, in the reader's
    language, not Werkzeug's bare English one."""
    monkeypatch.setitem(app.config, "PROPAGATE_EXCEPTIONS", False)

    def spoiled(*_args, **_kwargs):
        db.session.add(Member(community_id=demo.id))  # its required columns left out
        db.session.flush()

    monkeypatch.setattr(membership_admin, "load_for", spoiled)
    response = logged_in.get(f"/admin/communities/{demo.id}/members")
    assert response.status_code == 500
    assert "服务器出错了" in response.text and "Internal Server Error" not in response.text


def test_a_file_sent_as_a_text_field_is_an_error_on_the_form_not_a_500(app, client, demo):
    """Flask-WTF looks a field up in the request's files first: a forged file part named
    like a text field reached its validators as a file."""
    login = "/join/demo/login"
    data = {
        "csrf_token": csrf_token(client, login),
        "contact_kind": "phone",
        "contact_value": (io.BytesIO(b"13812345678"), "a.txt"),
    }
    response = client.post(login, data=data, content_type="multipart/form-data")
    assert response.status_code == 422 and "field-error" in response.text
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(OutboxMessage)) == 0
    # Every form of the product is one of these (file fields still get their files: the
    # imports' tests upload theirs).
    assert all(issubclass(form, Form) for form in _form_classes())
