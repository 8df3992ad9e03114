"""What tests do the way a person or a provider would: fill in forms, pay at the cashier,
send signed notifications."""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import sqlalchemy as sa
import stripe
from flask.testing import FlaskClient
from wechatpy.crypto import RefundCrypto, WeChatRefundCrypto
from wechatpy.pay.utils import calculate_signature, dict_to_xml
from werkzeug.test import TestResponse

from core.clock import utcnow
from core.db import db
from core.outbox import OutboxMessage
from core.security import new_token
from membership import figures
from membership.checks import figures_agree, seats_agree
from membership.models import (
    Community,
    ContactKind,
    Group,
    Invitation,
    Member,
    Membership,
    Tier,
    TierAudience,
    TierKind,
)
from membership.services import submit_application
from payments import inbox
from payments.models import Dispute, LedgerEntry, Order, Payment, Refund
from payments.providers import EventKind, Payer, get_provider
from payments.services import request_refund, send_refund, start_payment
from perks.models import Coupon
from tests import fake_apis

ADMIN_EMAIL = "owner@example.com"
ADMIN_PASSWORD = "correct horse battery"

PROSPECT = {
    "display_name": "读书人小王",
    "wechat_id": "wang_reader88",
    "contact_kind": "phone",
    "contact_value": "13812345678",
    "accept_rules": "y",
    "provider": "fake",
}


def count(model) -> int:
    """How many rows ``model`` has (app context needed)."""
    return db.session.scalar(sa.select(sa.func.count()).select_from(model))


#: The statements of the test's own transaction around each test, which a request does not
#: run outside the suite.
_THE_TESTS_OWN = ("SAVEPOINT", "RELEASE SAVEPOINT", "ROLLBACK TO SAVEPOINT")


@contextmanager
def statements(app) -> Iterator[list[str]]:
    """The SQL statements the app runs inside the block, one line each, as they run (not
    the test's savepoints)."""
    seen: list[str] = []
    with app.app_context():
        engine = db.engine

    def watch(_conn, _cursor, statement, *_args) -> None:
        if not statement.startswith(_THE_TESTS_OWN):
            seen.append(" ".join(statement.split()))

    sa.event.listen(engine, "before_cursor_execute", watch)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", watch)


def add_members(app, numbers: Mapping[str, int | None]) -> int:
    """Members of the (only) community, named as ``numbers``' keys, each with its number
    (None: none yet), their contact a WeChat ID (``wx_`` and the name); commits. The
    community's id."""
    with app.app_context():
        community_id = db.session.scalar(sa.select(Community.id))
        db.session.add_all(
            Member(
                community_id=community_id,
                display_name=name,
                contact_kind=ContactKind.WECHAT,
                contact_value=f"wx_{name}",
                number=number,
                created_at=utcnow(),
            )
            for name, number in numbers.items()
        )
        db.session.commit()
    return community_id


def add_communities(how_many: int, tiers: int, *, group_each_tier: bool) -> None:
    """``how_many`` more communities (别的社群0, 别的社群1 …), each with ``tiers`` paid tiers
    for members, in a group of their own each (``group_each_tier``) or all in one. In an
    app context; commits."""
    now = utcnow()
    for n in range(how_many):
        other = Community(name=f"别的社群{n}", slug=f"other-{n}", currency="CNY", created_at=now)
        groups = [
            Group(
                community=other,
                name=f"群{n}-{k}",
                platform="wechat",
                capacity=500,
                join_link=f"https://example.com/{n}/{k}",
                created_at=now,
            )
            for k in range(tiers if group_each_tier else 1)
        ]
        db.session.add_all(
            Tier(
                community=other,
                code=f"tier-{k}",
                name=f"档{k}",
                kind=TierKind.PAID,
                price=1900,
                currency="CNY",
                audience=TierAudience.MEMBERS,
                groups=[groups[k if group_each_tier else 0]],
            )
            for k in range(tiers)
        )
    db.session.commit()


def hidden_value(html: str, name: str) -> str:
    """The value of the hidden input ``name`` in a rendered page."""
    match = re.search(rf'name="{name}" type="hidden" value="([^"]*)"', html) or re.search(
        rf'type="hidden" name="{name}" value="([^"]*)"', html
    )
    assert match, f"no hidden field {name!r} in the page"
    return match.group(1)


def csrf_token(client: FlaskClient, url: str) -> str:
    """The CSRF token of the form on the page at ``url`` (CSRF stays on in tests)."""
    return hidden_value(client.get(url).get_data(as_text=True), "csrf_token")


def submit_form(client: FlaskClient, url: str, data: dict, **kwargs) -> TestResponse:
    """Open the form at ``url`` and send ``data`` with the page's CSRF token."""
    return client.post(url, data={"csrf_token": csrf_token(client, url), **data}, **kwargs)


def log_in(
    client: FlaskClient,
    email: str = ADMIN_EMAIL,
    password: str = ADMIN_PASSWORD,
    code: str = "",
    **kwargs,
) -> TestResponse:
    """Log in on the admin login page (``code``: from the authenticator app, if on)."""
    return submit_form(
        client, "/admin/login", {"email": email, "password": password, "code": code}, **kwargs
    )


def open_join_form(client: FlaskClient, tier: str = "main", slug: str = "demo") -> dict[str, str]:
    """Open the join form; the hidden fields a browser would send back with it."""
    response = client.get(f"/join/{slug}/{tier}")
    assert response.status_code == 200, response.status_code
    html = response.get_data(as_text=True)
    return {
        "csrf_token": hidden_value(html, "csrf_token"),
        "submission_key": hidden_value(html, "submission_key"),
        "shown_price": hidden_value(html, "shown_price"),
    }


def submit_join(
    client: FlaskClient,
    tier: str = "main",
    slug: str = "demo",
    *,
    prove: bool = True,
    wechat_code: str = "good-code",
    **fields: str | None,
) -> TestResponse:
    """Open the join form and send it with ``PROSPECT``'s answers, changed by ``fields``
    (a value of None leaves the field out), then (``prove``) prove the channel as the
    applicant would: type the code the join sent to the phone or e-mail, or, inside
    WeChat, come back from WeChat's silent OAuth with ``wechat_code``. The response is the
    one after that step. Each call is a different person (a phone of their own) unless
    ``contact_value`` is given."""
    fields.setdefault("contact_value", new_phone())
    data = {**open_join_form(client, tier, slug), **PROSPECT, **fields}
    response = client.post(
        f"/join/{slug}/{tier}", data={k: v for k, v in data.items() if v is not None}
    )
    if prove and response.status_code == 302 and "/verify/" in response.location:
        if urlsplit(response.location).path.endswith("/wechat"):
            response = wechat_round_trip(client, response.location, wechat_code)
        else:
            response = prove_join(client, response.location)
    return response


def wechat_round_trip(client: FlaskClient, start_url: str, code: str = "good-code"):
    """Follow our redirect to WeChat's authorize page and come back with ``code`` (the
    local fake names an openid for it: see :func:`tests.fake_apis.openid_for`)."""
    to_wechat = client.get(start_url)
    assert to_wechat.location.startswith("https://open.weixin.qq.com/connect/oauth2/authorize")
    query = parse_qs(urlsplit(to_wechat.location).query)
    back = urlsplit(query["redirect_uri"][0]).path
    return client.get(back, query_string={"code": code, "state": query["state"][0]})


def prove_join(client: FlaskClient, verify_url: str, code: str | None = None) -> TestResponse:
    """Type the code the join sent (read from the outbox), or ``code``, on the join's code
    step at ``verify_url``."""
    code = code or latest_code(client.application)
    return client.post(
        verify_url, data={"csrf_token": csrf_token(client, verify_url), "code": code}
    )


def add_coupon(app, code: str = "VIP20", **fields) -> int:
    """A coupon of the (only) community, 20% off unless ``fields`` say otherwise; its id."""
    with app.app_context():
        community = db.session.scalar(sa.select(Community))
        tiers = fields.pop("tiers", [])
        coupon = Coupon(
            community=community,
            code=code,
            currency="CNY",
            created_at=utcnow(),
            **({"percent_off": 20} | fields),
        )
        coupon.tiers = [db.session.scalar(sa.select(Tier).where(Tier.code == t)) for t in tiers]
        db.session.add(coupon)
        db.session.commit()
        return coupon.id


def cashier_action(client: FlaskClient, cashier_url: str, action: str = "pay") -> TestResponse:
    """Press a button on the fake provider's cashier page: pay, fail or cancel."""
    token = csrf_token(client, cashier_url)
    return client.post(cashier_url, data={"csrf_token": token, action: "y"})


def join_and_pay(client: FlaskClient, tier: str = "main", **fields: str) -> str:
    """The whole journey for one prospect; returns the status page's path."""
    response = submit_join(client, tier, **fields)
    assert response.status_code == 302, response.get_data(as_text=True)
    cashier_url = response.location
    assert cashier_url.startswith("/fake-pay/")
    response = cashier_action(client, cashier_url, "pay")
    assert response.status_code == 302
    return response.location


def signed_notification(
    payment: Payment,
    kind: EventKind = EventKind.PAYMENT_SUCCEEDED,
    *,
    event_id: str | None = None,
    now: datetime | None = None,
) -> tuple[bytes, dict[str, str]]:
    """A notification about ``payment`` as the fake provider's server signs it (app
    context needed)."""
    return get_provider("fake").build_notification(
        payment,
        kind,
        event_id=event_id or f"evt_{new_token(12)}",
        transaction_id=f"fake_{new_token(12)}",
        now=now or utcnow(),
    )


def stripe_delivery(
    event_type: str,
    obj: dict,
    *,
    event_id: str | None = None,
    secret: str = fake_apis.STRIPE_WEBHOOK_SECRET,
    timestamp: int | None = None,
    livemode: bool = False,
) -> tuple[bytes, dict[str, str]]:
    """A Stripe event as Stripe sends it, signed with stripe's own scheme (the tests' keys
    are test-mode keys)."""
    payload = json.dumps(
        {
            "id": event_id or f"evt_{new_token(12)}",
            "object": "event",
            "type": event_type,
            "api_version": "2025-09-30.clover",
            "created": int(time.time()),
            "livemode": livemode,
            "data": {"object": obj},
        }
    )
    header = stripe.WebhookSignature.generate_signature_header(
        payload, secret, timestamp=timestamp or int(time.time())
    )
    return payload.encode(), {"Content-Type": "application/json", "Stripe-Signature": header}


def checkout_session(payment: Payment, **fields) -> dict:
    """The Checkout Session object Stripe reports for ``payment``."""
    return {
        "id": payment.provider_data.get("session", "cs_test_unknown"),
        "object": "checkout.session",
        "payment_status": "paid",
        "status": "complete",
        "amount_total": payment.amount,
        "currency": payment.currency.lower(),
        "payment_intent": f"pi_{payment.public_id}",
        "metadata": {"order": payment.order.public_id, "payment": payment.public_id},
        **fields,
    }


def charge(payment: Payment, **fields) -> dict:
    """A Charge object of ``payment``'s payment intent."""
    return {
        "id": f"ch_{payment.public_id}",
        "object": "charge",
        "amount": payment.amount,
        "amount_refunded": 0,
        "currency": payment.currency.lower(),
        "payment_intent": f"pi_{payment.public_id}",
        "paid": True,
        **fields,
    }


def dispute(payment: Payment, status: str = "needs_response", **fields) -> dict:
    return {
        "id": f"dp_{payment.public_id}",
        "object": "dispute",
        "amount": payment.amount,
        "currency": payment.currency.lower(),
        "charge": f"ch_{payment.public_id}",
        "payment_intent": f"pi_{payment.public_id}",
        "reason": "fraudulent",
        "status": status,
        **fields,
    }


def wechat_notification(
    fields: dict[str, str], *, key: str = fake_apis.WECHAT_API_KEY, sign: str | None = None
) -> bytes:
    """A WeChat Pay notification body, signed with wechatpy's own function (``sign`` given
    instead, or ``""`` for none)."""
    data = {
        "appid": fake_apis.WECHAT_APP_ID,
        "mch_id": fake_apis.WECHAT_MCH_ID,
        "nonce_str": new_token(12),
        "return_code": "SUCCESS",
        **fields,
    }
    signature = calculate_signature(data, key) if sign is None else sign
    return dict_to_xml(data, signature or None).encode()


def wechat_paid(payment: Payment, **fields: str) -> bytes:
    """WeChat Pay's notification that ``payment`` was paid."""
    return wechat_notification(
        {
            "result_code": "SUCCESS",
            "out_trade_no": payment.public_id,
            "transaction_id": f"4200{payment.id:020d}",
            "total_fee": str(payment.amount),
            "fee_type": payment.currency,
            "trade_type": "NATIVE",
            "openid": fake_apis.WECHAT_OPENID,
            "time_end": "20261125120000",
            **fields,
        }
    )


def wechat_refunded(
    payment: Payment, refund_fee: int, out_refund_no: str, *, status: str = "SUCCESS"
) -> bytes:
    """WeChat Pay's refund result: ``req_info`` encrypted as WeChat Pay does."""
    inner = {
        "out_trade_no": payment.public_id,
        "transaction_id": f"4200{payment.id:020d}",
        "out_refund_no": out_refund_no,
        "refund_id": f"5000{payment.id:010d}{refund_fee}",
        "total_fee": str(payment.amount),
        "refund_fee": str(refund_fee),
        "settlement_refund_fee": str(refund_fee),
        "refund_status": status,
    }
    plain = "<root>" + "".join(f"<{k}><![CDATA[{v}]]></{k}>" for k, v in inner.items()) + "</root>"
    key = WeChatRefundCrypto(fake_apis.WECHAT_API_KEY).key
    req_info = RefundCrypto(key).encrypt(plain).decode()
    data = {
        "return_code": "SUCCESS",
        "appid": fake_apis.WECHAT_APP_ID,
        "mch_id": fake_apis.WECHAT_MCH_ID,
        "nonce_str": new_token(12),
        "req_info": req_info,
    }
    return dict_to_xml(data).encode()


def open_payment(tier: Tier, provider: str, person: int) -> Payment:
    """Person number ``person`` applies to ``tier`` and starts paying (app context; the
    caller commits), the way the join form does it."""
    application = submit_application(
        tier,
        display_name=f"成员{person}",
        contact_kind=ContactKind.WECHAT,
        contact_value=f"wx_member{person:06d}",
        submission_key=new_token(24),
    )
    return start_test_payment(db.session.get(Order, application.order_id), provider)


def start_test_payment(order: Order, provider: str = "fake", *, actor: str = "prospect") -> Payment:
    """Start paying ``order`` at ``provider`` from a browser (app context; the caller
    commits)."""
    return start_payment(
        order,
        provider,
        payer=Payer(),
        return_url="http://qunmen.test/",
        cancel_url="http://qunmen.test/",
        actor=actor,
    )


def refund_in_full(payment: Payment, *, revoke_access: bool = False) -> None:
    """An admin refunds all of ``payment`` and the provider agrees (app context; commits)."""
    refund = request_refund(
        payment, payment.money, reason="test", revoke_access=revoke_access, actor="staff:1"
    )
    db.session.commit()
    send_refund(refund, actor="staff:1")
    db.session.commit()


def pay_through_inbox(app, count: int) -> list[Payment]:
    """``count`` prospects apply to the main tier and pay with the fake provider, each
    delivery received by the inbox in a context of its own; every payment, in order."""
    with app.app_context():
        tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
        payments = [open_payment(tier, "fake", person) for person in range(count)]
        db.session.commit()
        deliveries = [signed_notification(payment) for payment in payments]
    for delivery in deliveries:
        with app.app_context():
            inbox.receive("fake", *delivery)
    with app.app_context():
        return db.session.scalars(sa.select(Payment).order_by(Payment.id)).all()


def money_snapshot(app) -> dict:
    """Everything a payment notification may change, in a comparable form."""

    def column(*columns):
        rows = db.session.execute(sa.select(*columns).order_by(columns[0].class_.id)).all()
        return [row[0] for row in rows] if len(columns) == 1 else rows

    with app.app_context():
        return {
            "payment": column(Payment.status),
            "order": column(Order.status),
            "members": column(Member.number_label),
            "memberships": column(Membership.status),
            "invitations": column(Invitation.status),
            "ledger": column(LedgerEntry.kind, LedgerEntry.amount),
            "refunds": column(Refund.amount, Refund.status),
            "disputes": column(Dispute.status),
        }


def latest_code(app) -> str:
    """The six-digit code in the latest outbox message."""
    with app.app_context():
        body = (
            db.session.scalars(sa.select(OutboxMessage).order_by(OutboxMessage.id.desc()))
            .first()
            .body
        )
    return re.search(r"\b(\d{6})\b", body).group(1)


def messages_besides_codes() -> list[OutboxMessage]:
    """The outbox's messages, oldest first, but for the one-time codes (app context)."""
    return list(
        db.session.scalars(
            sa.select(OutboxMessage)
            .where(OutboxMessage.subject.not_like("%验证码%"))
            .order_by(OutboxMessage.id)
        )
    )


def log_in_member(
    app, client: FlaskClient, phone: str, next_path: str | None = None, slug: str = "demo"
) -> TestResponse:
    """Log in on the member login page with a code sent to ``phone`` (read from the
    outbox): a login that proves the contact."""
    response = submit_form(
        client,
        f"/join/{slug}/login" + (f"?next={next_path}" if next_path else ""),
        {"contact_kind": "phone", "contact_value": phone},
    )
    assert response.status_code == 302, response.get_data(as_text=True)
    return submit_form(client, response.location, {"code": latest_code(app)})


def new_phone() -> str:
    """A mainland mobile number nobody else in the test has."""
    return f"139{secrets.randbelow(10**8):08d}"


# WeChat Pay API v3 ------------------------------------------------------------------------


def wechat_v3_delivery(
    event_type: str,
    resource: dict,
    *,
    key=None,
    serial: str = fake_apis.WECHATPAY_PLATFORM_KEY_ID,
    timestamp: int | None = None,
    signature: str | None = None,
    api_v3_key: str = fake_apis.WECHATPAY_V3_KEY,
) -> tuple[bytes, dict[str, str]]:
    """A WeChat Pay v3 notification as WeChat Pay sends it: ``resource`` encrypted with
    AES-256-GCM under the APIv3 key, the body signed with the platform key (``key``, the
    platform public key's by default) named by ``serial``, at ``timestamp`` (now). Its
    body and headers."""
    original_type = "refund" if event_type.startswith("REFUND.") else "transaction"
    envelope = {
        "id": f"EV-{new_token(12)}",
        "create_time": utcnow().astimezone(ZoneInfo("Asia/Shanghai")).isoformat(timespec="seconds"),
        "resource_type": "encrypt-resource",
        "event_type": event_type,
        "summary": "支付成功" if original_type == "transaction" else "退款状态",
        "resource": {
            "original_type": original_type,
            **fake_apis.wechatpay_v3_encrypt(
                json.dumps(resource, ensure_ascii=False), original_type, api_v3_key
            ),
        },
    }
    body = json.dumps(envelope, ensure_ascii=False)
    stamp = str(int(utcnow().timestamp()) if timestamp is None else timestamp)
    nonce = new_token(24)
    if signature is None:
        signature = fake_apis.wechatpay_v3_sign(
            key or fake_apis.WECHATPAY_PLATFORM_KEY, stamp, nonce, body
        )
    headers = {
        "Content-Type": "application/json",
        "Wechatpay-Timestamp": stamp,
        "Wechatpay-Nonce": nonce,
        "Wechatpay-Signature": signature,
        "Wechatpay-Serial": serial,
        "Wechatpay-Signature-Type": "WECHATPAY2-SHA256-RSA2048",
    }
    return body.encode(), headers


def wechat_v3_transaction(payment: Payment, **fields) -> dict:
    """The decrypted resource of WeChat Pay v3's notice that ``payment`` was paid (with the
    same transaction id as :func:`wechat_paid`'s)."""
    return {
        "appid": fake_apis.WECHAT_APP_ID,
        "mchid": fake_apis.WECHAT_MCH_ID,
        "out_trade_no": payment.public_id,
        "transaction_id": f"4200{payment.id:020d}",
        "trade_type": "NATIVE",
        "trade_state": "SUCCESS",
        "trade_state_desc": "支付成功",
        "bank_type": "OTHERS",
        "attach": "",
        "success_time": "2026-12-02T10:00:00+08:00",
        "payer": {"openid": fake_apis.WECHAT_OPENID},
        "amount": {
            "total": payment.amount,
            "payer_total": payment.amount,
            "currency": payment.currency,
            "payer_currency": payment.currency,
        },
        **fields,
    }


def wechat_v3_paid(payment: Payment, **fields) -> tuple[bytes, dict[str, str]]:
    """WeChat Pay v3's signed notification that ``payment`` was paid."""
    return wechat_v3_delivery("TRANSACTION.SUCCESS", wechat_v3_transaction(payment, **fields))


def wechat_v3_refund(
    payment: Payment, refund_fee: int, out_refund_no: str, *, status: str = "SUCCESS", **fields
) -> dict:
    """The decrypted resource of WeChat Pay v3's refund result (no appid, no currency:
    as WeChat Pay sends it)."""
    return {
        "mchid": fake_apis.WECHAT_MCH_ID,
        "out_trade_no": payment.public_id,
        "transaction_id": f"4200{payment.id:020d}",
        "out_refund_no": out_refund_no,
        "refund_id": f"5030{payment.id:010d}{refund_fee}",
        "refund_status": status,
        "success_time": "2026-12-02T10:30:00+08:00",
        "user_received_account": "支付用户零钱",
        "amount": {
            "total": payment.amount,
            "refund": refund_fee,
            "payer_total": payment.amount,
            "payer_refund": refund_fee,
        },
        **fields,
    }


def wechat_v3_refunded(
    payment: Payment, refund_fee: int, out_refund_no: str, *, status: str = "SUCCESS"
) -> tuple[bytes, dict[str, str]]:
    """WeChat Pay v3's signed refund result."""
    resource = wechat_v3_refund(payment, refund_fee, out_refund_no, status=status)
    return wechat_v3_delivery(f"REFUND.{status}", resource)


#: Compared by shape: they cannot repeat from one run to the next.
ROWS_BY_SHAPE = {
    ("webhook_events", "body"),
    ("webhook_events", "headers"),
    ("staff_users", "password_hash"),
}


def every_row(app) -> dict[str, list[dict]]:
    """Every table's rows in key order (the daily figures summed over their slots, which
    PostgreSQL picks at random), and that the checks ``flask check`` runs find nothing: for
    the fast paths' agreement tests, which run the same steps into two databases."""
    with app.app_context():
        assert list(figures_agree(utcnow())) == []
        assert [f for f in seats_agree(utcnow()) if "seat counter" in f] == []
        tables = {}
        for table in db.metadata.sorted_tables:
            if table.name == "daily_figures":
                kept = figures.kept(db.session)
                tables[table.name] = sorted((list(key), values) for key, values in kept.items())
                continue
            select = sa.select(table).order_by(*table.primary_key.columns)
            tables[table.name] = [
                {
                    name: type(value).__name__ if (table.name, name) in ROWS_BY_SHAPE else value
                    for name, value in row.items()
                }
                for row in db.session.execute(select).mappings()
            ]
        return tables
