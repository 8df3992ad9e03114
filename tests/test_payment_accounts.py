"""Communities' own payment keys: sealed at rest, used for their orders, refunds, queries
and webhooks (whose URL names the community), the install's keys when they have none;
rotation of the sealing key; never shown again, logged or audited; the admin page."""

from __future__ import annotations

import json
import logging
import re
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet, InvalidToken

from app import create_app
from config import SettingError
from core.audit import AuditEntry
from core.auth import create_staff_user
from core.clock import utcnow
from core.db import db
from core.money import Money
from membership.models import Community, Member
from payments.accounts import account_of, save_account
from payments.models import (
    InboxStatus,
    Order,
    Payment,
    PaymentAccount,
    PaymentStatus,
    RefundStatus,
    WebhookEvent,
)
from payments.providers import Payer, ProviderError, enabled_providers, get_provider
from payments.services import (
    confirm_payment,
    create_order,
    register_with_provider,
    request_refund,
    send_refund,
    settle_from_provider,
    start_payment,
)
from payments.views import OPENID_SESSION_KEY
from tests import fake_apis
from tests.conftest import app_config, dispose_engines, fresh_database
from tests.helpers import (
    PROSPECT,
    checkout_session,
    csrf_token,
    join_and_pay,
    log_in,
    money_snapshot,
    open_join_form,
    start_test_payment,
    stripe_delivery,
    wechat_notification,
    wechat_paid,
)
from tests.test_reconciliation import BEIJING, wechat_bill, wechat_line
from tests.test_wechatpay import IN_WECHAT

A_STRIPE_KEY = "sk_test_community_a_0001"
A_WEBHOOK_SECRET = "whsec_community_a_secret"
B_STRIPE_KEY = "sk_test_community_b_0002"
B_WEBHOOK_SECRET = "whsec_community_b_secret"
A_MCH_ID = "1900000777"
A_APP_ID = "wx00000000000000aa"
A_API_KEY = "a" * 16 + "0123456789abcdef"


@pytest.fixture
def communities(app, demo) -> tuple[int, int]:
    """Community A (the demo) and community B (``other``), committed."""
    with app.app_context():
        other = Community(name="别的社群", slug="other", currency="CNY", created_at=demo.created_at)
        db.session.add(other)
        db.session.commit()
        return demo.id, other.id


def give_stripe(app, apis, community_id: int, key: str, webhook_secret: str) -> None:
    """The community's own Stripe account, saved as the admin page saves it; the fake
    Stripe knows the key."""
    apis.stripe_keys.add(key)
    with app.test_request_context():
        save_account(
            community_id,
            "stripe",
            plain={},
            secrets={"STRIPE_SECRET_KEY": key, "STRIPE_WEBHOOK_SECRET": webhook_secret},
            cleared=set(),
            actor="test",
        )
        db.session.commit()


def give_wechatpay(app, apis, community_id: int) -> None:
    """The community's own WeChat Pay merchant (API v2), known to the fake."""
    apis.wechat_merchants[A_MCH_ID] = (A_APP_ID, A_API_KEY)
    with app.test_request_context():
        save_account(
            community_id,
            "wechatpay",
            plain={"WECHATPAY_APP_ID": A_APP_ID, "WECHATPAY_MCH_ID": A_MCH_ID},
            secrets={"WECHATPAY_API_KEY": A_API_KEY},
            cleared=set(),
            actor="test",
        )
        db.session.commit()


def started_payment(app, community_id: int, provider: str) -> str:
    """A ¥99 order of the community, registered with ``provider`` as the join page does
    it; its payment's public id."""
    with app.test_request_context():
        order = create_order(
            Money(9900, "CNY"), "Test", community_id=community_id, product="test", actor="test"
        )
        payment = start_payment(
            order,
            provider,
            payer=Payer(user_agent="Mozilla/5.0 (X11; Linux x86_64)"),
            return_url="http://qunmen.test/",
            cancel_url="http://qunmen.test/",
            actor="test",
        )
        db.session.commit()
        register_with_provider(payment, Payer(), actor="test")
        return payment.public_id


def stripe_paid(app, public_id: str, secret: str) -> tuple[bytes, dict[str, str]]:
    with app.app_context():
        payment = db.session.scalar(sa.select(Payment).where(Payment.public_id == public_id))
        return stripe_delivery(
            "checkout.session.completed", checkout_session(payment), secret=secret
        )


def wechat_paid_as(payment: Payment, *, app_id: str, mch_id: str, key: str) -> bytes:
    """WeChat Pay's notification that ``payment`` was paid, from another merchant."""
    return wechat_notification(
        {
            "appid": app_id,
            "mch_id": mch_id,
            "result_code": "SUCCESS",
            "out_trade_no": payment.public_id,
            "transaction_id": f"4200{payment.id:020d}",
            "total_fee": str(payment.amount),
            "fee_type": payment.currency,
            "trade_type": "NATIVE",
            "time_end": "20261125120000",
        },
        key=key,
    )


def payment_status(app, public_id: str) -> PaymentStatus:
    with app.app_context():
        return db.session.scalar(sa.select(Payment.status).where(Payment.public_id == public_id))


def inbox_rows(app) -> list[tuple[InboxStatus, int | None]]:
    with app.app_context():
        rows = db.session.execute(
            sa.select(WebhookEvent.status, WebhookEvent.community_id).order_by(WebhookEvent.id)
        )
        return [tuple(row) for row in rows]


# The two facts that must hold ---------------------------------------------------------------


def test_b_webhook_secret_does_not_verify_a_delivery_to_a(app, client, apis, communities):
    a, b = communities
    give_stripe(app, apis, a, A_STRIPE_KEY, A_WEBHOOK_SECRET)
    give_stripe(app, apis, b, B_STRIPE_KEY, B_WEBHOOK_SECRET)
    public_id = started_payment(app, a, "stripe")
    # A's session was made with A's secret key.
    assert apis.last("/v1/checkout/sessions").headers["Authorization"] == f"Bearer {A_STRIPE_KEY}"

    body, headers = stripe_paid(app, public_id, B_WEBHOOK_SECRET)
    refused = client.post(f"/webhooks/stripe/{a}", data=body, headers=headers)
    assert refused.status_code == 400
    assert payment_status(app, public_id) is PaymentStatus.CREATED
    assert inbox_rows(app) == [(InboxStatus.REJECTED, a)]
    # Nor do the install's keys verify it at the install-wide URL.
    body, headers = stripe_paid(app, public_id, fake_apis.STRIPE_WEBHOOK_SECRET)
    assert client.post("/webhooks/stripe", data=body, headers=headers).status_code == 400
    assert payment_status(app, public_id) is PaymentStatus.CREATED

    # A's own secret, to A's URL (by slug or id), verifies it.
    body, headers = stripe_paid(app, public_id, A_WEBHOOK_SECRET)
    assert client.post("/webhooks/stripe/demo", data=body, headers=headers).status_code == 200
    assert payment_status(app, public_id) is PaymentStatus.CONFIRMED
    assert inbox_rows(app)[-1] == (InboxStatus.PROCESSED, a)


def test_a_delivery_signed_with_a_secret_to_b_url_is_refused(app, client, apis, communities):
    a, b = communities
    give_stripe(app, apis, a, A_STRIPE_KEY, A_WEBHOOK_SECRET)
    give_stripe(app, apis, b, B_STRIPE_KEY, B_WEBHOOK_SECRET)
    public_id = started_payment(app, a, "stripe")
    body, headers = stripe_paid(app, public_id, A_WEBHOOK_SECRET)
    assert client.post(f"/webhooks/stripe/{b}", data=body, headers=headers).status_code == 400
    assert payment_status(app, public_id) is PaymentStatus.CREATED
    assert inbox_rows(app) == [(InboxStatus.REJECTED, b)]


def test_a_payment_of_a_at_b_url_is_refused_even_when_the_keys_verify(
    app, client, apis, communities
):
    """Neither community has keys of its own: the install's verify the delivery at B's
    URL, but the payment is A's."""
    a, b = communities
    public_id = started_payment(app, a, "stripe")
    body, headers = stripe_paid(app, public_id, fake_apis.STRIPE_WEBHOOK_SECRET)
    assert client.post(f"/webhooks/stripe/{b}", data=body, headers=headers).status_code == 400
    assert payment_status(app, public_id) is PaymentStatus.CREATED
    assert inbox_rows(app) == [(InboxStatus.REJECTED, b)]
    with app.app_context():
        assert "community" in db.session.scalar(sa.select(WebhookEvent.detail))


def test_a_refunds_go_through_a_merchant(app, client, apis, communities):
    a, b = communities
    give_stripe(app, apis, a, A_STRIPE_KEY, A_WEBHOOK_SECRET)
    give_stripe(app, apis, b, B_STRIPE_KEY, B_WEBHOOK_SECRET)
    public_id = started_payment(app, a, "stripe")
    body, headers = stripe_paid(app, public_id, A_WEBHOOK_SECRET)
    assert client.post(f"/webhooks/stripe/{a}", data=body, headers=headers).status_code == 200
    with app.test_request_context():
        payment = db.session.scalar(sa.select(Payment).where(Payment.public_id == public_id))
        refund = request_refund(
            payment, Money(9900, "CNY"), reason="asked", revoke_access=True, actor="test"
        )
        db.session.commit()
        refund = send_refund(refund, actor="test")
        assert refund.status is RefundStatus.SUCCEEDED
    call = apis.last("/v1/refunds")
    assert call.headers["Authorization"] == f"Bearer {A_STRIPE_KEY}"
    assert call.data["payment_intent"] == f"pi_{public_id}"


def test_wechat_pay_of_a_goes_through_a_merchant(app, client, apis, communities):
    """Order, status query and notification: A's merchant id and key, A's notify URL;
    a notification signed with the install's key is refused at A's URL."""
    a, _b = communities
    give_wechatpay(app, apis, a)
    public_id = started_payment(app, a, "wechatpay")
    order = apis.last("/pay/unifiedorder").data
    assert (order["mch_id"], order["appid"]) == (A_MCH_ID, A_APP_ID)
    assert order["notify_url"] == f"http://qunmen.test/webhooks/wechatpay/{a}"

    apis.wechat_orders[public_id] = {"trade_state": "NOTPAY"}
    with app.app_context():
        payment = db.session.scalar(sa.select(Payment).where(Payment.public_id == public_id))
        assert settle_from_provider(payment) is False
    assert apis.last("/pay/orderquery").data["mch_id"] == A_MCH_ID

    with app.app_context():
        payment = db.session.scalar(sa.select(Payment).where(Payment.public_id == public_id))
        install_signed = wechat_paid(payment)
        a_signed = wechat_paid_as(payment, app_id=A_APP_ID, mch_id=A_MCH_ID, key=A_API_KEY)
    url = f"/webhooks/wechatpay/{a}"
    assert client.post(url, data=install_signed).status_code == 400
    assert payment_status(app, public_id) is PaymentStatus.CREATED
    assert client.post(url, data=a_signed).status_code == 200
    assert payment_status(app, public_id) is PaymentStatus.CONFIRMED


# The install's keys, when a community has none ---------------------------------------------


def test_a_community_without_keys_uses_the_install_keys(app, client, apis, communities):
    a, b = communities
    give_stripe(app, apis, b, B_STRIPE_KEY, B_WEBHOOK_SECRET)
    public_id = started_payment(app, a, "stripe")
    sent = apis.last("/v1/checkout/sessions").headers["Authorization"]
    assert sent == f"Bearer {fake_apis.STRIPE_SECRET_KEY}"
    body, headers = stripe_paid(app, public_id, fake_apis.STRIPE_WEBHOOK_SECRET)
    # At its own URL, and (a payment started before URLs named communities) the install's.
    assert client.post(f"/webhooks/stripe/{a}", data=body, headers=headers).status_code == 200
    assert payment_status(app, public_id) is PaymentStatus.CONFIRMED
    assert inbox_rows(app) == [(InboxStatus.PROCESSED, a)]
    with app.app_context():
        assert get_provider("stripe", a) is get_provider("stripe")
        assert get_provider("stripe", b) is not get_provider("stripe")


def test_a_payment_made_before_its_community_took_its_own_keys_stays_on_the_install_s(
    app, client, apis, communities
):
    """Nothing paid for is lost when a community takes its own Stripe account while a
    payer is at the checkout: the payment was made with the install's keys, so the
    install's delivery pays it, and its refund goes through the install's account."""
    a, _b = communities
    public_id = started_payment(app, a, "stripe")  # started with the install's keys
    give_stripe(app, apis, a, A_STRIPE_KEY, A_WEBHOOK_SECRET)
    body, headers = stripe_paid(app, public_id, fake_apis.STRIPE_WEBHOOK_SECRET)
    assert client.post("/webhooks/stripe", data=body, headers=headers).status_code == 200
    assert payment_status(app, public_id) is PaymentStatus.CONFIRMED
    assert inbox_rows(app) == [(InboxStatus.PROCESSED, None)]
    with app.test_request_context():
        payment = db.session.scalar(sa.select(Payment).where(Payment.public_id == public_id))
        refund = request_refund(
            payment, Money(9900, "CNY"), reason="asked", revoke_access=True, actor="test"
        )
        db.session.commit()
        assert send_refund(refund, actor="test").status is RefundStatus.SUCCEEDED
    call = apis.last("/v1/refunds")
    assert call.headers["Authorization"] == f"Bearer {fake_apis.STRIPE_SECRET_KEY}"


def test_the_install_url_refuses_a_payment_made_with_the_community_s_own_keys(
    app, client, apis, communities
):
    a, _b = communities
    give_stripe(app, apis, a, A_STRIPE_KEY, A_WEBHOOK_SECRET)
    public_id = started_payment(app, a, "stripe")  # started with A's own keys
    body, headers = stripe_paid(app, public_id, fake_apis.STRIPE_WEBHOOK_SECRET)
    assert client.post("/webhooks/stripe", data=body, headers=headers).status_code == 400
    assert payment_status(app, public_id) is PaymentStatus.CREATED
    assert inbox_rows(app) == [(InboxStatus.REJECTED, None)]


def test_a_community_url_takes_the_install_s_delivery_only_for_its_payments(
    app, client, apis, communities
):
    """WeChat Pay notifies at the URL naming the community whatever keys a payment was
    made with: there the install's keys are tried after the community's own, and what they
    verify must be a payment made with them. One made with the community's own keys is
    not paid by the install's signature."""
    a, _b = communities
    before = started_payment(app, a, "stripe")
    give_stripe(app, apis, a, A_STRIPE_KEY, A_WEBHOOK_SECRET)
    after = started_payment(app, a, "stripe")
    body, headers = stripe_paid(app, before, fake_apis.STRIPE_WEBHOOK_SECRET)
    assert client.post(f"/webhooks/stripe/{a}", data=body, headers=headers).status_code == 200
    body, headers = stripe_paid(app, after, fake_apis.STRIPE_WEBHOOK_SECRET)
    assert client.post(f"/webhooks/stripe/{a}", data=body, headers=headers).status_code == 400
    assert payment_status(app, before) is PaymentStatus.CONFIRMED
    assert payment_status(app, after) is PaymentStatus.CREATED
    body, headers = stripe_paid(app, after, A_WEBHOOK_SECRET)
    assert client.post(f"/webhooks/stripe/{a}", data=body, headers=headers).status_code == 200
    assert payment_status(app, after) is PaymentStatus.CONFIRMED


def test_an_unknown_community_url_is_not_found(client, communities):
    assert client.post("/webhooks/stripe/no-such-community", data=b"{}").status_code == 404


@pytest.mark.parametrize("name", ["9223372036854775808", "99999999999", "0" * 40])
def test_a_number_too_large_for_an_id_is_not_found(client, communities, name):
    """Not a database overflow (a 500): more digits than an id has name no community
    (found by schemathesis on the documented path)."""
    assert client.post(f"/webhooks/wechatpay/{name}", data=b"<xml/>").status_code == 404


# Sealed at rest, and rotation ---------------------------------------------------------------


def test_secrets_are_sealed_with_the_configured_key(app, apis, communities, monkeypatch):
    key = Fernet.generate_key()
    monkeypatch.setitem(app.config, "SECRETS_KEYS", key.decode())
    a, _b = communities
    give_stripe(app, apis, a, A_STRIPE_KEY, A_WEBHOOK_SECRET)
    with app.app_context():
        stored = db.session.execute(sa.text("SELECT sealed FROM payment_accounts")).scalar()
    assert A_STRIPE_KEY not in str(stored)
    token = (json.loads(stored) if isinstance(stored, str) else stored)["STRIPE_SECRET_KEY"]
    assert Fernet(key).decrypt(token.encode()).decode() == A_STRIPE_KEY


def test_rotation_reseals_under_the_new_key(app, apis, runner, communities, monkeypatch):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    monkeypatch.setitem(app.config, "SECRETS_KEYS", old)
    a, _b = communities
    give_stripe(app, apis, a, A_STRIPE_KEY, A_WEBHOOK_SECRET)

    # The new key alone opens nothing yet: a community provider cannot be built.
    monkeypatch.setitem(app.config, "SECRETS_KEYS", new)
    with app.app_context(), pytest.raises(ProviderError):
        get_provider("stripe", a)
    monkeypatch.setitem(app.config, "SECRETS_KEYS", f"{new},{old}")
    result = runner.invoke(args=["payments", "rotate-secrets"])
    assert result.exit_code == 0, result.output
    assert "已重新加密的账户：1" in result.output

    monkeypatch.setitem(app.config, "SECRETS_KEYS", new)
    with app.app_context():
        account = account_of(a, "stripe")
        token = account.sealed["STRIPE_SECRET_KEY"]
        with pytest.raises(InvalidToken):
            Fernet(old.encode()).decrypt(token.encode())
        assert Fernet(new.encode()).decrypt(token.encode()).decode() == A_STRIPE_KEY
        assert get_provider("stripe", a) is not get_provider("stripe")
        actions = db.session.scalars(
            sa.select(AuditEntry.action).where(AuditEntry.target_type == "payment_accounts")
        ).all()
        assert "payment_account.resealed" in actions


def test_rotation_without_the_old_key_changes_nothing(app, apis, runner, communities, monkeypatch):
    old = Fernet.generate_key().decode()
    monkeypatch.setitem(app.config, "SECRETS_KEYS", old)
    a, _b = communities
    give_stripe(app, apis, a, A_STRIPE_KEY, A_WEBHOOK_SECRET)
    with app.app_context():
        before = dict(account_of(a, "stripe").sealed)
    monkeypatch.setitem(app.config, "SECRETS_KEYS", Fernet.generate_key().decode())
    result = runner.invoke(args=["payments", "rotate-secrets"])
    assert result.exit_code == 1
    assert "SECRETS_KEYS" in result.output
    with app.app_context():
        assert account_of(a, "stripe").sealed == before


def test_production_refuses_to_start_with_sealed_secrets_and_no_key(
    tmp_path, _api_server, monkeypatch
):
    key = Fernet.generate_key().decode()
    with fresh_database(tmp_path, _api_server, SECRETS_KEYS=key) as app:
        url = app.config["SQLALCHEMY_DATABASE_URI"]
        with app.app_context():
            community = Community(name="A", slug="a", currency="CNY", created_at=sa.func.now())
            db.session.add(community)
            db.session.commit()
            community_id = community.id
        give_stripe(app, fake_apis.FakeAPIs(), community_id, A_STRIPE_KEY, A_WEBHOOK_SECRET)
        production = {
            **app_config(url, *_api_server),
            "TESTING": False,
            "PAYMENT_PROVIDERS": ["stripe"],
            "QUEUE_IN_PROCESS": False,
            "OUTBOX_TO_LOG": False,
        }
        monkeypatch.delenv("SECRETS_KEYS", raising=False)
        root = logging.getLogger()
        handlers, level = root.handlers[:], root.level
        try:
            with pytest.raises(SettingError, match="SECRETS_KEYS is not set"):
                create_app({**production, "SECRETS_KEYS": None})
            wrong = Fernet.generate_key().decode()
            with pytest.raises(SettingError, match="SECRETS_KEYS"):
                create_app({**production, "SECRETS_KEYS": wrong})
            with pytest.raises(SettingError, match="not a Fernet key"):
                create_app({**production, "SECRETS_KEYS": "not-a-key"})
            started = create_app({**production, "SECRETS_KEYS": f"{wrong},{key}"})
            assert not started.testing
            dispose_engines(started)
        finally:
            root.handlers[:] = handlers
            root.setLevel(level)


# The admin page ----------------------------------------------------------------------------

PAGE = "/admin/payments/accounts/{}"


def post_account(client, community_id: int, provider: str, data: dict):
    token = csrf_token(client, PAGE.format(community_id))
    fields = {f"{provider}-{name}": value for name, value in data.items()}
    return client.post(
        PAGE.format(community_id),
        data={f"{provider}-csrf_token": token, **fields},
    )


def test_admin_sets_replaces_and_clears_a_stripe_account(app, logged_in, apis, communities, caplog):
    caplog.set_level(logging.DEBUG)
    a, _b = communities
    apis.stripe_keys.update({A_STRIPE_KEY, B_STRIPE_KEY})
    page = logged_in.get(PAGE.format(a)).text
    assert 'id="account-stripe" data-own="no"' in page
    assert f"http://qunmen.test/webhooks/stripe/{a}" in page

    saved = post_account(
        logged_in,
        a,
        "stripe",
        {"save": "1", "STRIPE_SECRET_KEY": A_STRIPE_KEY, "STRIPE_WEBHOOK_SECRET": A_WEBHOOK_SECRET},
    )
    assert saved.status_code == 302
    page = logged_in.get(PAGE.format(a)).text
    assert 'id="account-stripe" data-own="yes"' in page
    # Shown once, as set and its last four characters; never the secret.
    assert A_STRIPE_KEY not in page and A_WEBHOOK_SECRET not in page
    assert f'data-hint="STRIPE_SECRET_KEY" hidden>••••{A_STRIPE_KEY[-4:]}<' in page
    with app.app_context():
        assert get_provider("stripe", a) is not get_provider("stripe")

    # Saving again with the secrets left empty keeps them.
    with app.app_context():
        before = dict(account_of(a, "stripe").sealed)
    assert post_account(logged_in, a, "stripe", {"save": "1"}).status_code == 302
    with app.app_context():
        assert account_of(a, "stripe").sealed == before

    # Replacing the secret key: the next session goes with the new one.
    replaced = post_account(
        logged_in, a, "stripe", {"save": "1", "STRIPE_SECRET_KEY": B_STRIPE_KEY}
    )
    assert replaced.status_code == 302
    assert f"••••{B_STRIPE_KEY[-4:]}" in logged_in.get(PAGE.format(a)).text
    started_payment(app, a, "stripe")
    assert apis.last("/v1/checkout/sessions").headers["Authorization"] == f"Bearer {B_STRIPE_KEY}"

    # Clearing the webhook secret leaves an account that cannot work: refused, unchanged.
    with app.app_context():
        before = dict(account_of(a, "stripe").sealed)
    cleared = post_account(
        logged_in, a, "stripe", {"save": "1", "clear_STRIPE_WEBHOOK_SECRET": "y"}
    )
    assert cleared.status_code == 422
    assert 'id="stripe-save-errors"' in cleared.text
    with app.app_context():
        assert account_of(a, "stripe").sealed == before

    # Removing it: the install's keys again.
    assert post_account(logged_in, a, "stripe", {"remove": "1"}).status_code == 302
    with app.app_context():
        assert account_of(a, "stripe") is None
        assert get_provider("stripe", a) is get_provider("stripe")

    # Never in the audit log, never in the log.
    with app.app_context():
        entries = db.session.scalars(sa.select(AuditEntry)).all()
        audited = json.dumps([[e.action, e.data] for e in entries], ensure_ascii=False)
    assert "payment_account.created" in audited and "payment_account.removed" in audited
    assert "STRIPE_SECRET_KEY" in audited  # the names of what changed, …
    for secret in (A_STRIPE_KEY, B_STRIPE_KEY, A_WEBHOOK_SECRET):
        assert secret not in audited  # … never the values
        assert secret not in caplog.text
        assert all(secret not in record.getMessage() for record in caplog.records)


def test_admin_page_refuses_an_incomplete_account(app, logged_in, communities):
    a, _b = communities
    response = post_account(
        logged_in, a, "stripe", {"save": "1", "STRIPE_SECRET_KEY": A_STRIPE_KEY}
    )
    assert response.status_code == 422
    assert A_STRIPE_KEY not in response.text  # not even sent back in the form
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count(PaymentAccount.id))) == 0


def test_admin_page_speaks_the_reader_language(app, logged_in, communities):
    a, _b = communities
    zh = logged_in.get(PAGE.format(a)).text
    assert '<html lang="zh-CN">' in zh and "使用本站的密钥" in zh
    # The community's page leads to it.
    assert (
        f'href="{PAGE.format(a)}" id="payment-accounts"'
        in logged_in.get(f"/admin/communities/{a}").text
    )
    logged_in.get("/lang/en")
    page = logged_in.get(PAGE.format(a)).text
    assert '<html lang="en">' in page
    assert "Uses the install's keys" in page and "使用本站的密钥" not in page
    response = post_account(
        logged_in, a, "stripe", {"save": "1", "STRIPE_SECRET_KEY": A_STRIPE_KEY}
    )
    assert "These settings do not make a working account" in response.text


def test_payment_accounts_are_for_the_owner(app, client, admin, communities):
    a, _b = communities
    with app.app_context():
        create_staff_user(
            "finance@example.com", "会计", "finance password 1", actor="test", role="finance"
        )
        db.session.commit()
    log_in(client, "finance@example.com", "finance password 1")
    assert client.get(PAGE.format(a)).status_code == 403
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count(Order.id))) == 0


def test_a_community_official_account_proves_the_join_and_gives_the_jsapi_openid(
    app, client, apis, communities
):
    """An openid is an id under one official account: a community with its own proves
    the join through that account (its app id on WeChat's authorize page, not the
    install's), and its merchant's JSAPI payment uses the openid that proof gave, with no
    second OAuth. Nothing is kept as the install's account's openid."""
    a, _b = communities
    give_official_account(app, apis, a)
    client.environ_base["HTTP_USER_AGENT"] = IN_WECHAT
    sent = client.post(
        "/join/demo/main",
        data={**open_join_form(client, "main", "demo"), **PROSPECT, "provider": "wechatpay"},
    )
    assert sent.status_code == 302 and urlsplit(sent.location).path.endswith("/wechat")
    to_wechat = client.get(sent.location)
    query = parse_qs(urlsplit(to_wechat.location).query)
    assert query["appid"] == [A_APP_ID]
    back = urlsplit(query["redirect_uri"][0]).path
    proven = client.get(back, query_string={"code": "good-code-a", "state": query["state"][0]})
    assert proven.status_code == 302
    assert not proven.location.startswith("https://open.weixin.qq.com/")
    paying = client.get(proven.location)
    assert paying.status_code == 200
    order = apis.last("/pay/unifiedorder").data
    assert (order["trade_type"], order["appid"], order["mch_id"]) == ("JSAPI", A_APP_ID, A_MCH_ID)
    assert order["openid"] == fake_apis.openid_for("good-code-a")
    with client.session_transaction() as session:
        assert session[f"{OPENID_SESSION_KEY}:{A_APP_ID}"] == fake_apis.openid_for("good-code-a")
        assert OPENID_SESSION_KEY not in session


def confirmed(app, community_id: int, provider: str, reference: str) -> None:
    """A confirmed ¥99 payment of the community at ``provider``, known there as
    ``reference``."""
    with app.test_request_context():
        order = create_order(
            Money(9900, "CNY"), "Test", community_id=community_id, product="test", actor="test"
        )
        payment = start_test_payment(order, provider, actor="test")
        db.session.flush()
        confirm_payment(payment, reference, actor="test", now=utcnow())
        db.session.commit()


def test_a_community_statement_is_matched_with_its_own_ledger(
    app, apis, runner, communities, tmp_path
):
    """A's bill (downloaded through A's merchant) against A's payments only; the
    install's bill against the payments of communities without a merchant of their own."""
    a, b = communities
    give_wechatpay(app, apis, a)
    confirmed(app, a, "wechatpay", "4200000001")
    confirmed(app, b, "wechatpay", "4200000002")
    day = utcnow().astimezone(BEIJING).date()
    apis.wechat_bills[day.strftime("%Y%m%d")] = wechat_bill(wechat_line("4200000001"))
    own = runner.invoke(
        args=["payments", "reconcile", "wechatpay", "--day", str(day), "--community", str(a)]
    )
    assert own.exit_code == 0, own.output
    assert apis.last("/pay/downloadbill").data["mch_id"] == A_MCH_ID
    assert f"{day}\t1\t1\t1\t0\t0\t0" in own.output

    bill = tmp_path / "install.txt"
    bill.write_text(wechat_bill(wechat_line("4200000002")), encoding="utf-8")
    install = runner.invoke(args=["payments", "reconcile", "wechatpay", "--file", str(bill)])
    assert install.exit_code == 0, install.output
    assert f"{day}\t1\t1\t1\t0\t0\t0" in install.output


def test_a_community_is_offered_its_own_providers_in_the_install_order(app, apis, communities):
    a, b = communities
    give_stripe(app, apis, b, B_STRIPE_KEY, B_WEBHOOK_SECRET)
    with app.app_context():
        install = enabled_providers()
        own = enabled_providers(b)
        assert list(own) == list(install)
        assert own["stripe"] is get_provider("stripe", b) is not install["stripe"]
        assert own["wechatpay"] is install["wechatpay"]
        assert enabled_providers(a) == install


def test_a_community_pem_setting_is_never_read_as_a_file(app, logged_in, communities, tmp_path):
    """The install's PEM settings may name a file; a community's would have the server
    read one of its files: refused, nothing saved."""
    a, _b = communities
    key_file = tmp_path / "apiclient_key.pem"
    key_file.write_text(fake_apis.private_pem(fake_apis.WECHATPAY_V3_MCH_KEY))
    response = post_account(
        logged_in,
        a,
        "wechatpay",
        {
            "save": "1",
            "WECHATPAY_APP_ID": A_APP_ID,
            "WECHATPAY_MCH_ID": A_MCH_ID,
            "WECHATPAY_V3_KEY": "k" * 32,
            "WECHATPAY_MCH_PRIVATE_KEY": str(key_file),
            "WECHATPAY_MCH_CERT_SERIAL": "5157F09EFDC096DE15EBE81A47057A7232F1B8E1",
        },
    )
    assert response.status_code == 422
    assert "WECHATPAY_MCH_PRIVATE_KEY is not PEM text" in response.text
    with app.app_context():
        assert account_of(a, "wechatpay") is None


# The reconcile page, for a community's own account ----------------------------------------


def reconcile_on_the_page(client, **fields):
    """Send the reconcile page's form (the day of WeChat Pay's bill, by default)."""
    return client.post(
        "/admin/payments/reconcile",
        data={
            "csrf_token": csrf_token(client, "/admin/payments/reconcile"),
            "provider": "wechatpay",
            **fields,
        },
    )


def test_the_reconcile_page_downloads_a_community_bill_with_its_keys(
    app, apis, communities, client
):
    """Finance of community A picks A's own account: A's bill is downloaded through A's
    merchant and matched with A's payments only; the import is in A's history, not in
    the history of B's finance, who cannot pick A (nor the install's accounts)."""
    a, b = communities
    give_wechatpay(app, apis, a)
    give_stripe(app, apis, b, B_STRIPE_KEY, B_WEBHOOK_SECRET)
    confirmed(app, a, "wechatpay", "4200000001")
    confirmed(app, b, "wechatpay", "4200000002")
    day = utcnow().astimezone(BEIJING).date()
    apis.wechat_bills[day.strftime("%Y%m%d")] = wechat_bill(wechat_line("4200000001"))
    with app.app_context():
        for email, community in (("fin-a@example.com", a), ("fin-b@example.com", b)):
            create_staff_user(
                email,
                "财务",
                "pw-finance-123",
                actor="test",
                role="finance",
                community_id=community,
            )
        db.session.commit()
    assert log_in(client, email="fin-a@example.com", password="pw-finance-123").status_code == 302
    page = client.get("/admin/payments/reconcile")
    assert page.status_code == 200
    assert f'<option value="{a}"' in page.text
    assert f'<option value="{b}"' not in page.text and '<option value=""' not in page.text

    answer = reconcile_on_the_page(client, community=str(a), day=str(day))
    assert answer.status_code == 200, answer.text
    assert apis.last("/pay/downloadbill").data["mch_id"] == A_MCH_ID
    days = answer.text[answer.text.index('id="days"') :]
    # theirs 1, ours 1, matched 1, nothing missing either side: B's payment is not A's
    assert re.search(rf"<td>{day}</td>(\s*<td>1</td>){{3}}(\s*<td>0</td>){{2}}", days)
    assert "wechatpay-" in answer.text[answer.text.index('id="history"') :]

    for refused in ({"community": str(b), "day": str(day)}, {"day": str(day)}):
        before = money_snapshot(app)
        assert reconcile_on_the_page(client, **refused).status_code == 422
        assert money_snapshot(app) == before

    other = app.test_client()
    assert log_in(other, email="fin-b@example.com", password="pw-finance-123").status_code == 302
    theirs = other.get("/admin/payments/reconcile")
    assert theirs.status_code == 200
    assert "wechatpay-" not in theirs.text[theirs.text.index('id="history"') :]


def test_the_reconcile_page_is_refused_to_who_has_nothing_to_reconcile(app, communities, client):
    """Finance of a community without its own account, on an install of several
    communities, reconciles nothing: a 403 (the install's statements need every
    community); and a moderator never reaches the page."""
    a, _b = communities
    with app.app_context():
        for email, role in (("fin@example.com", "finance"), ("mod@example.com", "moderator")):
            create_staff_user(
                email, role, "pw-staff-12345", actor="test", role=role, community_id=a
            )
        db.session.commit()
    for email in ("fin@example.com", "mod@example.com"):
        visitor = app.test_client()
        assert log_in(visitor, email=email, password="pw-staff-12345").status_code == 302
        assert visitor.get("/admin/payments/reconcile").status_code == 403


# WeChat login on /me through a community's own official account ---------------------------


def give_official_account(app, apis, community_id: int) -> None:
    """The community's own WeChat Pay merchant with its official account's secret (the
    fake OAuth knows one secret; the app id is what differs)."""
    apis.wechat_merchants[A_MCH_ID] = (A_APP_ID, A_API_KEY)
    with app.test_request_context():
        save_account(
            community_id,
            "wechatpay",
            plain={"WECHATPAY_APP_ID": A_APP_ID, "WECHATPAY_MCH_ID": A_MCH_ID},
            secrets={
                "WECHATPAY_API_KEY": A_API_KEY,
                "WECHATPAY_APP_SECRET": fake_apis.WECHAT_APP_SECRET,
            },
            cleared=set(),
            actor="test",
        )
        db.session.commit()


def test_wechat_login_goes_through_the_community_official_account(app, apis, communities):
    """A member of a community with its own official account logs in with WeChat through
    that account (its app id in WeChat's authorize URL; the openid kept as that account's,
    not as the install's); a community without one still goes through the install's."""
    a, _b = communities
    give_official_account(app, apis, a)
    join_and_pay(app.test_client(), "main")
    openid = fake_apis.openid_for("good-code-a")
    with app.app_context():
        member = db.session.scalars(sa.select(Member).where(Member.community_id == a)).one()
        member.wechat_openid = openid
        db.session.commit()
    client = app.test_client()
    client.environ_base["HTTP_USER_AGENT"] = IN_WECHAT
    assert "/join/demo/login/wechat" in client.get("/me").text
    to_wechat = client.get("/join/demo/login/wechat")
    query = parse_qs(urlsplit(to_wechat.location).query)
    assert query["appid"] == [A_APP_ID]
    back = urlsplit(query["redirect_uri"][0]).path
    answer = client.get(back, query_string={"code": "good-code-a", "state": query["state"][0]})
    assert (answer.status_code, answer.location) == (302, "/me")
    assert client.get("/me").status_code == 200
    with client.session_transaction() as session:
        assert session[f"{OPENID_SESSION_KEY}:{A_APP_ID}"] == openid
        assert OPENID_SESSION_KEY not in session

    other = app.test_client()
    other.environ_base["HTTP_USER_AGENT"] = IN_WECHAT
    install = parse_qs(urlsplit(other.get("/join/other/login/wechat").location).query)
    assert install["appid"] == [fake_apis.WECHAT_APP_ID]
