"""WeChat Pay: the three ways to pay, notifications signed with wechatpy's own functions,
refund results encrypted as WeChat Pay encrypts them, and hostile XML."""

from __future__ import annotations

import logging
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from wechatpy.pay.utils import calculate_signature

from core.db import db
from membership.models import InvitationStatus, MembershipStatus
from payments.models import (
    InboxStatus,
    Payment,
    PaymentStatus,
    Refund,
    RefundStatus,
    WebhookEvent,
)
from tests import fake_apis
from tests.helpers import (
    count,
    money_snapshot,
    submit_join,
    wechat_notification,
    wechat_paid,
    wechat_refunded,
)

DESKTOP = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/120.0 Safari/537.36"
PHONE = (
    "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 Chrome/120.0 Mobile Safari/537.36"
)
IN_WECHAT = PHONE + " MicroMessenger/8.0.47.2560(0x28002F35) WeChat/arm64 NetType/WIFI"


def join_with_wechat(client, user_agent=DESKTOP):
    client.environ_base["HTTP_USER_AGENT"] = user_agent
    return submit_join(client, "main", provider="wechatpay")


@pytest.fixture
def payment_id(app, client, demo, apis) -> int:
    """A prospect on a desktop, shown a WeChat Pay QR code for the ¥99 tier."""
    response = join_with_wechat(client)
    assert response.status_code == 302
    with app.app_context():
        return db.session.scalars(sa.select(Payment.id)).one()


def post(client, body: bytes):
    return client.post("/webhooks/wechatpay", data=body, headers={"Content-Type": "text/xml"})


def notify(app, client, build=wechat_paid, **fields):
    with app.app_context():
        body = build(db.session.scalars(sa.select(Payment)).one(), **fields)
    return post(client, body)


def test_desktop_gets_a_native_qr_code(app, client, payment_id, apis):
    request = apis.last("/pay/unifiedorder")
    data = dict(request.data)
    sign = data.pop("sign")
    assert sign == calculate_signature(data, fake_apis.WECHAT_API_KEY)
    with app.app_context():
        payment = db.session.get(Payment, payment_id)
        assert data["trade_type"] == "NATIVE"
        assert data["total_fee"] == "9900"
        assert data["out_trade_no"] == payment.public_id
        # The URL names the community whose keys verify the notification.
        community_id = payment.order.community_id
        assert data["notify_url"] == f"http://qunmen.test/webhooks/wechatpay/{community_id}"
        assert payment.method == "native"
        page = f"/pay/wechat/{payment.public_id}"
    html = client.get(page).get_data(as_text=True)
    assert "请用微信扫码支付" in html
    svg = client.get(f"{page}/qr.svg")
    assert svg.mimetype == "image/svg+xml"
    assert b"<svg" in svg.data


def test_phone_browser_goes_to_h5_payment(app, client, demo, apis):
    response = join_with_wechat(client, PHONE)
    assert response.location.startswith("https://wx.tenpay.test/cgi-bin/mmpayweb-bin/checkmweb")
    redirect_url = parse_qs(urlsplit(response.location).query)["redirect_url"][0]
    assert redirect_url.startswith("http://qunmen.test/join/demo/status/")
    assert apis.last("/pay/unifiedorder").data["trade_type"] == "MWEB"


def test_inside_wechat_pays_with_jsapi_after_oauth(app, client, demo, apis):
    client.environ_base["HTTP_USER_AGENT"] = IN_WECHAT
    joined = submit_join(client, "main", provider="wechatpay", prove=False)
    response = client.get(joined.location)  # the join's silent OAuth gives the openid
    assert response.location.startswith("https://open.weixin.qq.com/connect/oauth2/authorize")
    query = parse_qs(urlsplit(response.location).query)
    state, callback = query["state"][0], urlsplit(query["redirect_uri"][0]).path
    # A wrong code is refused by WeChat: the payer is told, nothing is paid.
    refused = client.get(callback, query_string={"code": "bad", "state": state})
    assert refused.status_code == 302
    assert "微信授权失败" in client.get(refused.location).text
    assert not any(r.path == "/pay/unifiedorder" for r in apis.requests)

    # The state worked once, in this browser: the payer starts again for a new one.
    replayed = client.get(callback, query_string={"code": "good-code", "state": state})
    assert replayed.status_code == 400
    again = client.get(joined.location)
    state = parse_qs(urlsplit(again.location).query)["state"][0]
    back = client.get(callback, query_string={"code": "good-code", "state": state})
    assert back.status_code == 302
    order_request = apis.last("/pay/unifiedorder")
    assert order_request.data["trade_type"] == "JSAPI"
    assert order_request.data["openid"] == fake_apis.WECHAT_OPENID
    html = client.get(back.location).get_data(as_text=True)
    assert "getBrandWCPayRequest" in html
    with app.app_context():
        params = db.session.scalars(sa.select(Payment)).one().provider_data["jsapi"]
    signed = {k: v for k, v in params.items() if k != "paySign"}
    assert params["paySign"] == calculate_signature(signed, fake_apis.WECHAT_API_KEY)


def test_forged_oauth_state_is_refused(client, demo):
    response = client.get("/pay/wechat/oauth-return", query_string={"code": "c", "state": "x"})
    assert response.status_code == 400


def test_paid_notification_admits_and_answers_success(app, client, payment_id):
    response = notify(app, client)
    assert response.status_code == 200
    assert response.mimetype == "text/xml"
    assert b"<return_code><![CDATA[SUCCESS]]></return_code>" in response.data
    state = money_snapshot(app)
    assert state["members"] == ["0001"]
    assert state["ledger"] == [("payment", 9900)]


def _refused(app, response):
    assert 400 <= response.status_code < 500
    assert b"<return_code><![CDATA[FAIL]]></return_code>" in response.data
    with app.app_context():
        event = db.session.scalars(sa.select(WebhookEvent)).one()
        assert event.status is InboxStatus.REJECTED
        assert event.detail


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"total_fee": "1"}, "does not match"),
        ({"fee_type": "USD"}, "does not match"),
        ({"fee_type": "XXX"}, "unsupported currency"),
        ({"total_fee": "99.00"}, "whole number"),
        ({"appid": "wx_someone_else"}, "appid"),
        ({"mch_id": "1234567890"}, "mch_id"),
    ],
)
def test_signed_but_wrong_notification_is_refused(app, client, payment_id, fields, why):
    before = money_snapshot(app)
    _refused(app, notify(app, client, **fields))
    assert money_snapshot(app) == before
    with app.app_context():
        assert why in db.session.scalars(sa.select(WebhookEvent.detail)).one()


def test_a_payment_that_is_not_ours_is_recorded_and_answered_success(app, client, payment_id):
    """Another system's sale on the same merchant account: WeChat Pay would deliver a
    refusal again and again, so it is answered SUCCESS, recorded, and changes nothing."""
    before = money_snapshot(app)
    response = notify(app, client, out_trade_no="not-ours")
    assert response.status_code == 200
    assert b"<return_code><![CDATA[SUCCESS]]></return_code>" in response.data
    assert money_snapshot(app) == before
    with app.app_context():
        event = db.session.scalars(sa.select(WebhookEvent)).one()
        assert (event.status, event.detail) == (InboxStatus.IGNORED, "not one of our payments")


def _paid_body(app, **kwargs) -> bytes:
    with app.app_context():
        payment = db.session.scalars(sa.select(Payment)).one()
        return wechat_paid(payment), payment


def test_forged_and_probe_signatures_are_refused(app, client, payment_id):
    with app.app_context():
        payment = db.session.scalars(sa.select(Payment)).one()
        fields = {
            "result_code": "SUCCESS",
            "out_trade_no": payment.public_id,
            "transaction_id": "4200000000000000000001",
            "total_fee": "9900",
        }
        forged = wechat_notification(fields, key="f" * 32)
        probe = wechat_notification(fields, sign="WECHATPAY/SIGNTEST/" + "A" * 40)
        unsigned = wechat_notification(fields, sign="")
    before = money_snapshot(app)
    for body in (forged, probe, unsigned):
        response = post(client, body)
        assert response.status_code == 400
        assert b"FAIL" in response.data
    assert money_snapshot(app) == before
    with app.app_context():
        details = db.session.scalars(sa.select(WebhookEvent.detail)).all()
    assert details == ["signature does not match"] * 3


XXE = b"""<?xml version="1.0"?>
<!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<xml><return_code>SUCCESS</return_code><appid>&xxe;</appid></xml>"""
BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;">]>
<xml><return_code>&lol2;</return_code></xml>"""


@pytest.mark.parametrize(
    "body",
    [
        XXE,
        BILLION_LAUGHS,
        b"",
        b"not xml",
        b'{"json": true}',
        b"<xml><a><b>1</b></a></xml>",
        b"<other>1</other>",
        b"<xml><!-- hidden --><return_code>SUCCESS</return_code></xml>",
    ],
    ids=["xxe", "billion laughs", "empty", "text", "json", "nested", "wrong root", "comment"],
)
def test_hostile_or_malformed_xml_is_refused_unparsed(app, client, payment_id, body):
    before = money_snapshot(app)
    _refused(app, post(client, body))
    assert money_snapshot(app) == before
    if b"<!" in body:  # declarations are refused before any parser sees them
        with app.app_context():
            detail = db.session.scalars(sa.select(WebhookEvent.detail)).one()
        assert "DOCTYPE, entity or comment" in detail


def test_over_64_kb_is_refused_and_recorded(app, client, payment_id):
    response = post(client, b"<xml>" + b"a" * (64 * 1024) + b"</xml>")
    assert response.status_code == 413
    assert b"FAIL" in response.data
    with app.app_context():
        event = db.session.scalars(sa.select(WebhookEvent)).one()
        assert (event.status, event.detail) == (InboxStatus.REJECTED, "body over 64 KB")


def test_failed_payment_notification(app, client, payment_id):
    with app.app_context():
        payment = db.session.scalars(sa.select(Payment)).one()
        body = wechat_notification(
            {
                "result_code": "FAIL",
                "out_trade_no": payment.public_id,
                "err_code": "NOTENOUGH",
                "err_code_des": "余额不足",
            }
        )
    assert post(client, body).status_code == 200
    assert money_snapshot(app)["payment"] == [PaymentStatus.FAILED]


def test_same_notification_ten_times_counts_once(app, client, payment_id):
    with app.app_context():
        body = wechat_paid(db.session.scalars(sa.select(Payment)).one())
    for _ in range(10):
        response = post(client, body)
        assert response.status_code == 200
        assert b"SUCCESS" in response.data
    state = money_snapshot(app)
    assert state["members"] == ["0001"]
    assert state["invitations"] == [InvitationStatus.ISSUED]
    assert state["ledger"] == [("payment", 9900)]


def _refund_from_admin(app, logged_in, payment_id, amount="99.00", revoke=False):
    from tests.helpers import submit_form

    data = {"amount": amount, "reason": "退群 · left the group"}
    if revoke:
        data["revoke_access"] = "y"
    return submit_form(logged_in, f"/admin/payments/payments/{payment_id}/refund", data)


def test_admin_refund_then_refund_notification(app, client, payment_id, apis, logged_in):
    notify(app, client)
    response = _refund_from_admin(app, logged_in, payment_id)
    assert response.status_code == 302
    request = apis.last("/secapi/pay/refund")
    assert (request.data["total_fee"], request.data["refund_fee"]) == ("9900", "9900")
    with app.app_context():
        refund = db.session.scalars(sa.select(Refund)).one()
        assert refund.status is RefundStatus.REQUESTED
        assert request.data["out_refund_no"] == refund.public_id
        payment = refund.payment
        body = wechat_refunded(payment, 9900, refund.public_id)
    assert money_snapshot(app)["memberships"] == [MembershipStatus.ACTIVE]  # not until it is done
    response = post(client, body)
    assert response.status_code == 200
    state = money_snapshot(app)
    assert state["refunds"] == [(9900, RefundStatus.SUCCEEDED)]
    assert state["memberships"] == [MembershipStatus.ENDED]
    assert state["invitations"] == [InvitationStatus.REVOKED]
    assert state["ledger"] == [("payment", 9900), ("refund", -9900)]
    assert post(client, body).status_code == 200  # again: nothing more
    assert money_snapshot(app) == state


def test_refund_result_before_the_payment_notification(app, client, payment_id):
    with app.app_context():
        payment = db.session.scalars(sa.select(Payment)).one()
        refund_body = wechat_refunded(payment, 9900, "refund-made-at-wechat")
        paid_body = wechat_paid(payment)
    assert post(client, refund_body).status_code == 200
    assert post(client, paid_body).status_code == 200
    state = money_snapshot(app)
    assert state["payment"] == [PaymentStatus.CONFIRMED]
    assert state["memberships"] == [MembershipStatus.ENDED]
    assert state["invitations"] == [InvitationStatus.REVOKED]
    assert state["ledger"] == [("payment", 9900), ("refund", -9900)]


def test_refund_result_that_does_not_decrypt_is_refused(app, client, payment_id):
    body = (
        b"<xml><return_code>SUCCESS</return_code><appid>"
        + fake_apis.WECHAT_APP_ID.encode()
        + b"</appid><mch_id>"
        + fake_apis.WECHAT_MCH_ID.encode()
        + b"</mch_id><req_info>bm90IGVuY3J5cHRlZA==</req_info></xml>"
    )
    before = money_snapshot(app)
    _refused(app, post(client, body))
    assert money_snapshot(app) == before


def test_partial_refund_keeps_access_unless_asked(app, client, payment_id, logged_in):
    notify(app, client)
    assert _refund_from_admin(app, logged_in, payment_id, amount="20.00").status_code == 302
    assert _refund_from_admin(app, logged_in, payment_id, amount="90.00").status_code == 200
    with app.app_context():
        refund = db.session.scalars(sa.select(Refund)).one()
        body = wechat_refunded(refund.payment, 2000, refund.public_id)
    post(client, body)
    assert money_snapshot(app)["memberships"] == [MembershipStatus.ACTIVE]
    assert _refund_from_admin(app, logged_in, payment_id, "10.00", revoke=True).status_code == 302
    with app.app_context():
        second = db.session.scalars(sa.select(Refund).order_by(Refund.id.desc())).first()
        body = wechat_refunded(second.payment, 1000, second.public_id)
    post(client, body)
    assert money_snapshot(app)["memberships"] == [MembershipStatus.ENDED]


def test_wechatpy_never_logs_the_api_key(app, client, demo, apis, caplog):
    caplog.set_level(logging.DEBUG)
    join_with_wechat(client)
    assert any(r.path == "/pay/unifiedorder" for r in apis.requests)
    assert fake_apis.WECHAT_API_KEY not in caplog.text
    with app.app_context():
        assert count(Payment) == 1
