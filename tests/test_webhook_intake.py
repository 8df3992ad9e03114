"""The webhook door under abuse: verified before anything is stored, refused deliveries
kept cut short and only so many per client, a body cap near real notification sizes, and
WeChat Pay XML bounded in depth and size before any parser reads it."""

from __future__ import annotations

import sqlalchemy as sa

from core.db import db
from payments import inbox
from payments.models import InboxStatus, Payment, WebhookEvent
from payments.providers import wechatpay
from payments.views import MAX_NOTIFICATION_BYTES
from tests.helpers import count, submit_join, wechat_paid
from tests.test_wechatpay import DESKTOP


def stored(app) -> list[tuple[int, str, InboxStatus]]:
    with app.app_context():
        return db.session.execute(
            sa.select(sa.func.length(WebhookEvent.body), WebhookEvent.detail, WebhookEvent.status)
        ).all()


def forbid_xml_parsing(monkeypatch) -> None:
    """Fail the test if the XML parser behind wechatpy ever sees the body."""

    def refuse(*args, **kwargs):
        raise AssertionError("xmltodict parsed a body that should have been refused first")

    monkeypatch.setattr(wechatpay.xmltodict, "parse", refuse)


def test_a_forged_delivery_is_kept_cut_short(app, client, demo):
    body = b'{"id": "evt_forged", "padding": "' + b"x" * 60_000 + b'"}'
    response = client.post("/webhooks/stripe", data=body, headers={"Stripe-Signature": "v1=0"})
    assert response.status_code == 400
    [(length, detail, status)] = stored(app)
    assert length == inbox.REFUSED_BODY_BYTES
    assert status is InboxStatus.REJECTED
    assert f"body of {len(body)} bytes" in detail


def test_refused_deliveries_are_kept_only_so_many_per_client(app, demo):
    limit = inbox.REFUSED_RECORDED.tries
    flooder = app.test_client()
    flooder.environ_base["REMOTE_ADDR"] = "203.0.113.7"
    answers = {flooder.post("/webhooks/fake", data=b"{}").status_code for _ in range(limit + 5)}
    assert answers == {400}
    with app.app_context():
        assert count(WebhookEvent) == limit
    other = app.test_client()
    other.environ_base["REMOTE_ADDR"] = "198.51.100.2"
    assert other.post("/webhooks/fake", data=b"{}").status_code == 400
    with app.app_context():
        assert count(WebhookEvent) == limit + 1


def test_a_body_over_the_cap_is_refused_unread(app, client, demo):
    response = client.post("/webhooks/wechatpay", data=b"<xml>" + b" " * MAX_NOTIFICATION_BYTES)
    assert response.status_code == 413
    assert b"body over 64 KB" in response.data
    [(length, _detail, _status)] = stored(app)
    assert length == 0


def test_deep_xml_is_refused_before_it_is_parsed(app, client, demo, monkeypatch):
    forbid_xml_parsing(monkeypatch)
    depth = 8000  # 56 KB, under the body cap
    body = b"<xml>" + b"<a>" * depth + b"</a>" * depth + b"</xml>"
    response = client.post("/webhooks/wechatpay", data=body)
    assert response.status_code == 400
    assert b"nested deeper than 3" in response.data
    [(length, _detail, _status)] = stored(app)
    assert length == inbox.REFUSED_BODY_BYTES


def test_xml_of_too_many_elements_is_refused_before_it_is_parsed(app, client, demo, monkeypatch):
    forbid_xml_parsing(monkeypatch)
    body = b"<xml>" + b"".join(b"<f%d>1</f%d>" % (i, i) for i in range(200)) + b"</xml>"
    response = client.post("/webhooks/wechatpay", data=body)
    assert response.status_code == 400
    assert b"more than 100 elements" in response.data


def test_an_entity_bomb_is_refused_before_it_is_parsed(app, client, demo, monkeypatch):
    forbid_xml_parsing(monkeypatch)
    lol = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    body = f'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY l0 "lol">{lol}]><xml>&l9;</xml>'
    response = client.post("/webhooks/wechatpay", data=body.encode())
    assert response.status_code == 400
    assert b"DOCTYPE" in response.data


def test_a_genuine_notification_is_stored_whole_and_applied(app, client, demo, apis):
    client.environ_base["HTTP_USER_AGENT"] = DESKTOP
    submit_join(client, "main", provider="wechatpay")
    with app.app_context():
        body = wechat_paid(db.session.scalars(sa.select(Payment)).one())
    response = client.post("/webhooks/wechatpay", data=body)
    assert response.status_code == 200
    [(length, _detail, status)] = stored(app)
    assert (length, status) == (len(body), InboxStatus.PROCESSED)
