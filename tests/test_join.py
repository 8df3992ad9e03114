"""The prospect's journey on the H5 pages, with the fake provider, and its bad inputs."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from core.clock import utcnow
from core.db import db
from core.limits import AttemptCounter
from core.outbox import OutboxMessage
from membership.login import JOIN_CODE_REQUESTS
from membership.models import (
    Application,
    Invitation,
    InvitationStatus,
    LoginCode,
    Member,
    Tier,
)
from payments.models import LedgerEntry, Order, OrderStatus, Payment, PaymentStatus
from tests.helpers import (
    PROSPECT,
    add_coupon,
    cashier_action,
    count,
    csrf_token,
    join_and_pay,
    latest_code,
    log_in_member,
    new_phone,
    open_join_form,
    prove_join,
    statements,
    submit_form,
    submit_join,
)


def test_join_page_lists_tiers_with_yuan_prices(client, demo):
    html = client.get("/join/demo").get_data(as_text=True)
    assert "群门读书会" in html
    assert "¥99.00" in html
    assert "免费" in html
    assert "每周共读分享" in html  # what the tier includes
    assert "¥9.00" not in html  # re-entry is for returning members only


def test_paid_journey_ends_with_number_and_group_qr(app, client, demo):
    status_path = join_and_pay(client, "main")
    html = client.get(status_path).get_data(as_text=True)
    assert 'id="member-number">0001<' in html
    with app.app_context():
        invitation = db.session.scalars(sa.select(Invitation)).one()
        assert invitation.status is InvitationStatus.ISSUED
        assert invitation.group.name == "正式一群"
    assert f"/invitations/{invitation.token}/qr" in html

    qr = client.get(f"/invitations/{invitation.token}/qr")
    assert qr.status_code == 200
    assert qr.mimetype == "image/png"
    assert qr.data.startswith(b"\x89PNG")
    assert "no-store" in qr.headers["Cache-Control"]

    with app.app_context():
        order = db.session.scalars(sa.select(Order)).one()
        assert order.status is OrderStatus.PAID
        assert order.payments[0].status is PaymentStatus.CONFIRMED
        ledger = db.session.scalars(sa.select(LedgerEntry)).one()
        assert (ledger.kind, ledger.amount, ledger.currency) == ("payment", 9900, "CNY")


def member_link_of(app, client) -> str:
    """A new member who logged in with a code; the member link their status page shows."""
    phone = new_phone()
    status_path = join_and_pay(client, "main", contact_kind="phone", contact_value=phone)
    assert 'id="member-link"' not in client.get(status_path).text  # not proven yet
    log_in_member(app, client, phone)
    html = client.get(status_path).get_data(as_text=True)
    return html.split('id="member-link">', 1)[1].split("<", 1)[0]


def test_member_link_opens_me_in_another_browser(app, client, demo):
    link = member_link_of(app, client)
    assert link.startswith("http://qunmen.test/me/link/")

    other_browser = app.test_client()
    assert other_browser.get("/me").status_code == 401
    response = other_browser.get(link.removeprefix("http://qunmen.test"))
    assert response.status_code == 302
    page = other_browser.get("/me").get_data(as_text=True)
    assert 'id="member-number">0001<' in page
    assert "/invitations/" in page


def test_tampered_member_link_is_refused(app, client, demo):
    link = member_link_of(app, client)
    assert client.get(link[:-2] + "xx").status_code == 404


def test_members_are_numbered_in_payment_order(app, demo):
    paths = [join_and_pay(app.test_client(), "main") for _ in range(3)]
    with app.app_context():
        numbers = db.session.scalars(sa.select(Member.number_label).order_by(Member.id)).all()
    assert numbers == ["0001", "0002", "0003"]
    assert len(set(paths)) == 3


def test_free_lobby_admits_at_once_without_a_number(app, client, demo):
    response = submit_join(client, "lobby", provider=None)
    assert response.status_code == 302
    assert "/status/" in response.location
    with app.app_context():
        member = db.session.scalars(sa.select(Member)).one()
        assert member.number is None
        assert member.invitations[0].group.name == "大厅群"
        assert count(Order) == 0


def test_unknown_community_or_tier_is_a_chinese_404(client, demo):
    for path in ("/join/nope", "/join/demo/nope", "/join/nope/main"):
        response = client.get(path)
        assert response.status_code == 404
        assert "页面不存在" in response.get_data(as_text=True)


def test_inactive_tier_says_it_is_closed(app, client, demo):
    opened_before = open_join_form(client)
    with app.app_context():
        db.session.scalar(sa.select(Tier).where(Tier.code == "main")).active = False
        db.session.commit()
    response = client.get("/join/demo/main")
    assert response.status_code == 403
    assert "该档位已停止报名" in response.get_data(as_text=True)
    # A form opened before the tier closed is refused as well.
    response = client.post("/join/demo/main", data={**opened_before, **PROSPECT})
    assert response.status_code == 403
    with app.app_context():
        assert count(Order) == 0


def test_returning_only_tier_is_not_open_to_prospects(client, demo):
    response = client.get("/join/demo/reentry")
    assert response.status_code == 403
    assert "仅限回归的老成员" in response.get_data(as_text=True)


def test_bad_fields_rerender_with_errors_and_create_nothing(app, client, demo):
    cases = {
        "display_name": ({"display_name": "  "}, "必填"),
        "unseen display_name": ({"display_name": " \u200b\u2060 \ufeff"}, "必填"),
        "no channel": ({"contact_value": ""}, "请填写手机号或邮箱"),
        "phone": ({"contact_kind": "phone", "contact_value": "12345"}, "11位手机号"),
        "email": ({"contact_kind": "email", "contact_value": "not-mail"}, "邮箱格式不正确"),
        "rules": ({"accept_rules": None}, "请阅读并同意群规"),
        # WTForms' own message, from its Chinese catalog.
        "contact kind": ({"contact_kind": "fax"}, "不是有效的选择"),
        "provider": ({"provider": "paypal"}, "不是有效的选择"),
        "too long": ({"display_name": "长" * 41}, "最多40个字"),
    }
    for name, (fields, message) in cases.items():
        response = submit_join(client, "main", **fields)
        html = response.get_data(as_text=True)
        assert response.status_code == 422, name
        assert message in html, name
        assert "请修改下面标红的内容" in html, name
    with app.app_context():
        assert count(Application) == 0
        assert count(Order) == 0


def test_names_are_kept_without_control_characters_or_direction_marks(app, client, demo):
    """A name that would read backwards (RLO), carry a NUL into pages and CSVs, or hide
    behind zero-width spaces is kept as the name it shows; an emoji's joiners stay."""
    for typed, kept in (
        ("\u202e三张", "三张"),
        ("x\x00y\x1b", "xy"),
        ("\u200b小王\u200b", "小王"),
        ("👨\u200d👩\u200d👧 一家", "👨\u200d👩\u200d👧 一家"),
    ):
        browser = app.test_client()
        assert submit_join(browser, "main", display_name=typed).status_code == 302, typed
        with app.app_context():
            name = db.session.scalar(
                sa.select(Application.display_name).order_by(Application.id.desc()).limit(1)
            )
        assert name == kept, typed


def test_join_form_without_csrf_token_is_refused(app, client, demo):
    data = {**open_join_form(client), **PROSPECT}
    del data["csrf_token"]
    response = client.post("/join/demo/main", data=data)
    assert response.status_code == 400
    # Said plainly, with the way back to the form.
    assert "表单已失效" in response.text
    assert '<a class="button" href="/join/demo/main">重新打开这一页</a>' in response.text
    # A session that ended since the form was drawn (its token is the old session's).
    fresh = client.application.test_client()
    response = fresh.post("/join/demo/main", data={**open_join_form(client), **PROSPECT})
    assert response.status_code == 400 and "表单已失效" in response.text
    with app.app_context():
        assert count(Order) == 0
    # A form with no page of its own to open again is offered the home page only.
    response = client.post("/join/demo/status/1/pay")
    assert response.status_code == 400 and "重新打开这一页</a>" not in response.text


def test_double_submit_makes_one_order(app, client, demo):
    data = {**open_join_form(client), **PROSPECT}
    first = client.post("/join/demo/main", data=data)
    second = client.post("/join/demo/main", data=data)
    assert first.status_code == second.status_code == 302
    assert first.location == second.location  # the same application's code step
    prove_join(client, first.location)
    with app.app_context():
        assert count(Application) == 1
        assert count(Order) == 1
        assert count(Payment) == 1


def test_a_join_claims_its_tries_at_once_and_queues_its_code_with_the_application(
    app, client, demo
):
    """The join's tries (per client, overall) and its code request (per contact, client,
    community) are one statement; the code's message is queued with the application."""
    data = {**open_join_form(client), **PROSPECT, "contact_value": new_phone()}
    with statements(app) as seen:
        response = client.post("/join/demo/main", data=data)
    assert response.status_code == 302 and "/verify/" in response.location
    assert len([s for s in seen if "attempt_counters" in s]) == 1
    with app.app_context():
        counted = {c.key.rsplit(":", 1)[0] for c in db.session.scalars(sa.select(AttemptCounter))}
        assert {"join:client", "code-request:join-contact:phone", "code-request:join-client"} <= (
            counted
        )
        application = db.session.scalars(sa.select(Application)).one()
        assert db.session.scalars(sa.select(LoginCode)).one().application_id == application.id
        assert count(OutboxMessage) == 1
    assert prove_join(client, response.location).status_code == 302


def test_a_join_over_the_code_limit_is_made_and_told_why_no_code_came(app, client, demo):
    phone = new_phone()
    with app.app_context():
        per_contact = JOIN_CODE_REQUESTS[0]
        db.session.add(
            AttemptCounter(
                key=f"{per_contact.name}:phone:{phone}",
                window_start=utcnow(),
                count=per_contact.tries,
            )
        )
        db.session.commit()
    data = {**open_join_form(client), **PROSPECT, "contact_value": phone}
    response = client.post("/join/demo/main", data=data)
    assert response.status_code == 302 and "/verify/" in response.location
    assert "请求过于频繁" in client.get(response.location).get_data(as_text=True)
    with app.app_context():
        assert count(Application) == count(Order) == 1
        assert count(LoginCode) == count(OutboxMessage) == 0


def test_failed_payment_can_be_retried(app, client, demo):
    response = submit_join(client, "main")
    cashier_url = response.location
    status_path = cashier_action(client, cashier_url, "fail").location
    html = client.get(status_path).get_data(as_text=True)
    assert "支付失败" in html
    with app.app_context():
        assert count(Member) == 0

    token = html.split('name="csrf_token" type="hidden" value="', 1)[1].split('"', 1)[0]
    retry = client.post(f"{status_path}/pay", data={"csrf_token": token, "provider": "fake"})
    assert retry.status_code == 302
    assert retry.location != cashier_url  # a new payment attempt
    cashier_action(client, retry.location, "pay")
    assert 'id="member-number">0001<' in client.get(status_path).get_data(as_text=True)
    with app.app_context():
        statuses = db.session.scalars(sa.select(Payment.status).order_by(Payment.id)).all()
    assert statuses == [PaymentStatus.FAILED, PaymentStatus.CONFIRMED]


def test_cancel_at_the_cashier_returns_to_a_retry(app, client, demo):
    cashier_url = submit_join(client, "main").location
    token = csrf_token(client, cashier_url)
    status_path = cashier_action(client, cashier_url, "cancel").location
    html = client.get(status_path).get_data(as_text=True)
    assert "支付已取消" in html
    assert "重新支付" in html
    # A finished payment cannot be paid any more, even from a page opened before.
    late = client.post(cashier_url, data={"csrf_token": token, "pay": "y"})
    assert late.status_code == 200
    assert "这笔支付已结束" in late.get_data(as_text=True)
    with app.app_context():
        assert count(Member) == 0


def test_pending_payment_status_page_refreshes_itself(app, client, demo):
    submit_join(client, "main")
    with app.app_context():
        application = db.session.scalars(sa.select(Application)).one()
    html = client.get(f"/join/demo/status/{application.public_id}").get_data(as_text=True)
    assert '<meta http-equiv="refresh"' in html
    assert "正在确认支付结果" in html


def test_status_page_of_another_community_is_404(app, client, demo):
    submit_join(client, "main")
    with app.app_context():
        application = db.session.scalars(sa.select(Application)).one()
    assert client.get(f"/join/other/status/{application.public_id}").status_code == 404
    assert client.get("/join/demo/status/not-a-real-id").status_code == 404


def _expire_order(app) -> None:
    with app.app_context():
        order = db.session.scalars(sa.select(Order)).one()
        order.expires_at = order.created_at - timedelta(seconds=1)
        db.session.commit()


def test_expired_order_takes_no_new_payment(app, client, demo):
    cashier_url = submit_join(client, "main").location
    status_path = cashier_action(client, cashier_url, "cancel").location
    _expire_order(app)
    token = csrf_token(client, status_path)
    response = client.post(f"{status_path}/pay", data={"csrf_token": token, "provider": "fake"})
    assert response.location == status_path
    html = client.get(status_path).get_data(as_text=True)
    assert "订单已过期" in html
    assert "/join/demo/main" in html  # start again
    with app.app_context():
        assert db.session.scalars(sa.select(Order.status)).one() is OrderStatus.EXPIRED
        assert count(Payment) == 1


def test_payment_confirmed_after_expiry_still_counts(app, client, demo):
    """The money moved: the payer is admitted even though the order had expired."""
    cashier_url = submit_join(client, "main").location
    _expire_order(app)
    status_path = cashier_action(client, cashier_url, "pay").location
    assert 'id="member-number">0001<' in client.get(status_path).get_data(as_text=True)


def test_full_width_digits_and_letters_from_a_chinese_keyboard_are_read_as_typed(app, client, demo):
    """A Chinese keyboard in full-width mode types "１３８…", "ＶＩＰ２０", "＠": the phone,
    the code and the coupon are read as their half-width twins, not refused."""
    add_coupon(app, "VIP20")
    data = {
        **open_join_form(client),
        **PROSPECT,
        "contact_value": "１３９ ００１３ ９０００",
        "coupon": "ｖｉｐ２０",
    }
    sent = client.post("/join/demo/main", data=data)
    assert sent.status_code == 302 and "/verify/" in sent.location
    code = latest_code(app).translate(str.maketrans("0123456789", "０１２３４５６７８９"))
    proven = prove_join(client, sent.location, code)
    assert proven.status_code == 302 and "/fake-pay/" in proven.location
    with app.app_context():
        application = db.session.scalar(sa.select(Application))
        assert application.contact_value == "13900139000"
        assert db.session.scalar(sa.select(Order.coupon_code)) == "VIP20"


def test_the_join_page_does_not_offer_a_member_the_tier_they_hold(app, client, demo):
    """A member back on the join page sees the tier they hold as theirs, with the way to
    renew, not a "choose" button that leads to a refusal."""
    join_and_pay(client, "main", contact_value="13600136000")
    page = app.test_client()
    log_in_member(app, page, phone="13600136000")
    html = page.get("/join/demo").text
    held = html.split('id="tier-main"')[1].split("</section>")[0]
    assert "你已是该档位成员" in held and 'href="/me"' in held
    assert 'href="/join/demo/main"' not in held
    lobby = html.split('id="tier-lobby"')[1].split("</section>")[0]
    assert 'href="/join/demo/lobby"' in lobby  # another tier is still offered


def test_join_forms_with_a_members_phone_do_not_use_up_their_login_codes(app, client, demo):
    """Anyone may type a member's phone into join forms, from as many browsers as they
    like: the member can still have a login code sent to them."""
    phone = "13500135000"
    join_and_pay(client, "main", contact_value=phone)
    for _ in range(4):
        stranger = app.test_client()
        data = {**open_join_form(stranger, "lobby"), **PROSPECT, "contact_value": phone}
        stranger.post("/join/demo/lobby", data=data)
    member = app.test_client()
    asked = submit_form(
        member, "/join/demo/login", {"contact_kind": "phone", "contact_value": phone}
    )
    assert asked.status_code == 302, asked.get_data(as_text=True)[-400:]
    assert "请求过于频繁" not in member.get(asked.location).text


def test_a_price_changed_while_the_form_was_open_is_shown_before_any_order(app, client, demo):
    """The form said ¥99.00; the admin raised the price to ¥120.00 meanwhile: sending it
    makes nothing and shows the new price; sent again, the order is at ¥120.00."""
    data = {**open_join_form(client), **PROSPECT, "contact_value": new_phone()}
    with app.app_context():
        db.session.scalar(sa.select(Tier).where(Tier.code == "main")).price = 12000
        db.session.commit()
    told = client.post("/join/demo/main", data=data)
    assert told.status_code == 422
    assert "价格已变为 ¥120.00：请确认后再支付" in told.text
    with app.app_context():
        assert count(Application) == count(Order) == 0
    again = client.post("/join/demo/main", data=data | {"shown_price": "12000"})
    assert again.status_code == 302 and prove_join(client, again.location).status_code == 302
    with app.app_context():
        assert db.session.scalar(sa.select(Order.amount)) == 12000
