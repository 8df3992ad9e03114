"""Member login, one person one member, activity, purges, re-entry and expiry.
Time-dependent behaviour runs on a controlled clock (``now=``), never by sleeping."""

from __future__ import annotations

import io
import re
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from core import outbox
from core.clock import utcnow
from core.db import db
from core.limits import AttemptCounter
from core.outbox import OutboxMessage
from membership.lifecycle import (
    PurgeRefused,
    expire_memberships,
    mark_active,
    purge_candidates,
    run_purge,
    send_reminders,
)
from membership.login import (
    CODE_REQUESTS,
    LoginRefused,
    claim_code_check,
    claim_code_request,
    request_code,
    verify_code,
)
from membership.models import (
    Application,
    Community,
    ContactKind,
    Group,
    Invitation,
    InvitationStatus,
    LoginCode,
    Member,
    Membership,
    MembershipStatus,
    Purge,
    Tier,
    TierAudience,
    TierKind,
)
from payments.models import FlagKind, LedgerEntry, Order, OrderFlag, Payment, PaymentStatus
from tests import fake_apis
from tests.helpers import (
    add_coupon,
    cashier_action,
    count,
    csrf_token,
    join_and_pay,
    latest_code,
    messages_besides_codes,
    prove_join,
    signed_notification,
    submit_form,
    submit_join,
)
from tests.helpers import log_in_member as log_in_with_code

PHONE = "13800138000"


def join_with_phone(client, tier="main", phone=PHONE):
    return join_and_pay(client, tier, contact_kind="phone", contact_value=phone)


def log_in_member(app, client, phone=PHONE, next_path=None):
    """Log in as the member of ``PHONE`` (unless told another) with a code."""
    return log_in_with_code(app, client, phone, next_path)


def _code_sent_to(app, recipient: str) -> str:
    """The six-digit code in the latest message to ``recipient``."""
    with app.app_context():
        message = db.session.scalars(
            sa.select(OutboxMessage)
            .where(sa.cast(OutboxMessage.routes, sa.String).contains(recipient))
            .order_by(OutboxMessage.id.desc())
        ).first()
        return re.search(r"\b(\d{6})\b", message.body).group(1)


def purge_everyone(app):
    with app.app_context():
        community = db.session.scalar(sa.select(Community))
        purge = run_purge(community, utcnow() + timedelta(days=1), actor="test")
        db.session.commit()
        return purge.purged_count


def test_member_logs_in_with_a_code(app, demo):
    join_with_phone(app.test_client())
    browser = app.test_client()
    response = log_in_member(app, browser)
    assert response.status_code == 302
    assert response.location == "/me"
    page = browser.get("/me").get_data(as_text=True)
    assert 'id="member-number">0001<' in page
    with app.app_context():
        code = latest_code(app)
        login = db.session.scalars(sa.select(LoginCode).where(LoginCode.member_id.is_not(None)))
        assert login.one().code_hash != code
        _joined, message = db.session.scalars(sa.select(OutboxMessage)).all()
        assert (message.kind, message.routes, message.status) == (
            "login_code",
            [["sms", PHONE]],
            "pending",
        )
        assert outbox.drain_outbox() == 2  # the worker sends them; the demo's log stands in
        db.session.refresh(message)
        assert (message.channel, message.recipient, message.status) == ("log", PHONE, "sent")
        assert code not in message.body + str(message.params)  # blanked once sent


def check_code(login, code, now):
    """What the code page does: claim the check, then compare."""
    claim_code_check(login, client="198.51.100.7", now=now)
    return verify_code(login, code, now=now)


def test_code_reused_expired_wrong_or_guessed_is_refused(app, demo):
    join_with_phone(app.test_client())
    with app.app_context():
        community = db.session.scalar(sa.select(Community))
        now = utcnow()
        pending, _ = request_code(community, ContactKind.PHONE, PHONE, now=now)
        code = re.search(r"\d{6}", db.session.get(OutboxMessage, _).body).group(0)
        with pytest.raises(LoginRefused, match="已过期"):
            check_code(pending, code, now + timedelta(minutes=11))
        member = check_code(pending, code, now + timedelta(minutes=1))
        assert member.number_label == "0001"
        with pytest.raises(LoginRefused, match="已使用"):
            check_code(pending, code, now + timedelta(minutes=2))

        guessed, message_id = request_code(community, ContactKind.PHONE, PHONE, now=now)
        right = re.search(r"\d{6}", db.session.get(OutboxMessage, message_id).body).group(0)
        wrong = f"{(int(right) + 1) % 10**6:06d}"
        for _attempt in range(5):
            with pytest.raises(LoginRefused, match="不正确"):
                check_code(guessed, wrong, now)
        with pytest.raises(LoginRefused, match="尝试次数过多"):
            check_code(guessed, right, now)


def test_codes_are_rate_limited_per_contact(app, demo):
    with app.app_context():
        now = utcnow()
        for minute in range(3):
            claim_code_request(
                ContactKind.PHONE,
                PHONE,
                community_id=demo.id,
                client=f"c{minute}",
                now=now + timedelta(minutes=minute),
            )
        with pytest.raises(LoginRefused, match="请求过于频繁"):
            claim_code_request(
                ContactKind.PHONE,
                "+86 138 0013 8000",
                community_id=demo.id,
                client="c9",
                now=now + timedelta(minutes=5),
            )
        claim_code_request(
            ContactKind.PHONE,
            PHONE,
            community_id=demo.id,
            client="c9",
            now=now + timedelta(minutes=16),
        )


def test_code_requests_are_limited_per_community_not_per_install(app, demo):
    """A thousand code requests to one community (its flash join) use up its own budget
    for the window, not another community's."""
    with app.app_context():
        now = utcnow()
        per_contact, _per_client, per_community = CODE_REQUESTS
        own = f"{per_community.name}:{demo.id}"
        db.session.add(AttemptCounter(key=own, window_start=now, count=per_community.tries))
        db.session.commit()
        with pytest.raises(LoginRefused, match="请求过于频繁"):
            claim_code_request(ContactKind.PHONE, PHONE, community_id=demo.id, client="c1", now=now)
        db.session.commit()
        other = demo.id + 1
        claim_code_request(ContactKind.PHONE, PHONE, community_id=other, client="c2", now=now)
        db.session.commit()
        assert db.session.get(AttemptCounter, own).count == per_community.tries + 1
        assert db.session.get(AttemptCounter, f"{per_community.name}:{other}").count == 1
        assert db.session.get(AttemptCounter, f"{per_contact.name}:phone:{PHONE}").count == 2


def test_a_stranger_is_not_told_and_cannot_log_in(app, client, demo):
    response = submit_form(
        client, "/join/demo/login", {"contact_kind": "phone", "contact_value": "13900139000"}
    )
    assert response.status_code == 302
    page = client.get(response.location).get_data(as_text=True)
    assert "如果 13900139000 属于本社群成员" in page
    with app.app_context():
        assert count(OutboxMessage) == 0
    for guess in ("000000", "123456"):
        refused = submit_form(client, response.location, {"code": guess})
        assert "验证码不正确" in refused.get_data(as_text=True)
    assert client.get("/me").status_code == 401


def test_a_members_contact_is_answered_like_a_strangers_and_the_member_is_told(app, client, demo):
    join_with_phone(app.test_client())
    stranger_browser = app.test_client()
    stranger = submit_join(stranger_browser, "main", prove=False, contact_value="13900139000")
    response = submit_join(client, "main", prove=False, contact_value="+86 138 0013 8000")
    assert response.status_code == stranger.status_code == 302
    assert "/verify/" in response.location and "/verify/" in stranger.location
    # Both are sent a code, worded the same; the code step looks the same.
    pages = [
        b.get(r.location).get_data(as_text=True).replace(phone, "…")
        for b, r, phone in (
            (client, response, PHONE),
            (stranger_browser, stranger, "13900139000"),
        )
    ]
    assert "登录" not in pages[0]
    assert [re.sub(r'value="[^"]*"|/verify/[\w-]+', "", p) for p in pages[:1]] == [
        re.sub(r'value="[^"]*"|/verify/[\w-]+', "", p) for p in pages[1:]
    ]
    with app.app_context():
        notice = messages_besides_codes()
        assert [(m.routes, m.subject) for m in notice] == [
            ([["sms", PHONE]], "群门读书会：你已是成员")  # the community's language: zh_CN
        ]
        assert "/join/demo/login" in notice[0].body
        every = db.session.scalars(sa.select(OutboxMessage).order_by(OutboxMessage.id)).all()
        codes = [m for m in every if m not in notice][-2:]
        assert {m.routes[0][1] for m in codes} == {PHONE, "13900139000"}
        assert codes[0].subject == codes[1].subject
        assert count(Member) == 1
    # The member's phone proves itself with the code sent to it.
    response = prove_join(client, response.location, code=_code_sent_to(app, PHONE))
    assert response.location.startswith("/fake-pay/")
    # Paid, it lands on the member's record (one person, one member, who holds the tier
    # already: the payment is put before the admins to refund); this browser is told so,
    # and is not logged in as the member.
    status = cashier_action(client, response.location).location
    page = client.get(status).get_data(as_text=True)
    assert 'id="member-number">0001<' not in page
    assert 'id="bought-twice"' in page
    assert client.get("/me").status_code == 401
    with app.app_context():
        assert count(Member) == 1
        assert count(Membership) == 1
        flag = db.session.scalars(sa.select(OrderFlag)).one()
        assert flag.kind is FlagKind.BOUGHT_TWICE and flag.payment is not None


def test_purged_member_comes_back_at_the_reentry_price_keeping_the_number(app, demo):
    first = app.test_client()
    status_path = join_with_phone(first)
    join_and_pay(app.test_client(), "main")  # 0002, someone else
    with app.app_context():
        old_token = db.session.scalars(sa.select(Invitation.token).order_by(Invitation.id)).first()
    assert purge_everyone(app) == 2
    assert first.get(f"/invitations/{old_token}").status_code == 404
    assert "/invitations/" not in first.get(status_path).get_data(as_text=True)

    browser = app.test_client()
    assert browser.get("/join/demo/reentry").status_code == 403
    log_in_member(app, browser)
    join_page = browser.get("/join/demo").get_data(as_text=True)
    assert "¥9.00" in join_page
    assert "你可以按回归价重新加入" in join_page
    status = join_and_pay(browser, "reentry")
    assert 'id="member-number">0001<' in browser.get(status).get_data(as_text=True)
    with app.app_context():
        member = db.session.scalar(sa.select(Member).where(Member.number == 1))
        statuses = [m.status for m in member.memberships]
        assert statuses == [MembershipStatus.PURGED, MembershipStatus.ACTIVE]
        assert member.memberships[1].tier.code == "reentry"
        assert db.session.scalar(sa.select(Community.last_member_number)) == 2
        assert count(Member) == 2
    # Back in: the re-entry price is not offered again.
    assert browser.get("/join/demo/reentry").status_code == 403
    # Their page shows the new invitation; the purged one's leaves no empty card.
    page = browser.get("/me").text
    assert page.count('class="card invitation"') == 1


def test_reentry_price_is_refused_to_those_who_were_never_purged(app, demo):
    browser = app.test_client()
    refused = browser.get("/join/demo/reentry")
    assert refused.status_code == 403
    assert "请先登录" in refused.get_data(as_text=True)
    # A paid, active member.
    join_with_phone(app.test_client())
    log_in_member(app, browser)
    active = browser.get("/join/demo/reentry")
    assert active.status_code == 403
    assert "回归价仅限曾被清退或到期的老成员" in active.get_data(as_text=True)
    # A lobby member (free, never numbered) whose lobby access was purged.
    lobby = app.test_client()
    join_and_pay_lobby = submit_join(
        lobby, "lobby", provider=None, contact_kind="phone", contact_value="13700137000"
    )
    assert join_and_pay_lobby.status_code == 302
    purge_everyone(app)
    guest = app.test_client()
    log_in_member(app, guest, phone="13700137000")
    assert guest.get("/join/demo/reentry").status_code == 403
    with app.app_context():
        assert count(Application) == 2


def test_purge_preview_run_and_run_again(app, demo, logged_in):
    join_with_phone(app.test_client())
    join_and_pay(app.test_client(), "main", display_name="活跃的小张")
    with app.app_context():
        community_id = db.session.scalar(sa.select(Community.id))
    url = f"/admin/communities/{community_id}/activity"
    marked = submit_form(
        logged_in,
        url,
        # Saved by Excel on a Chinese Windows: GBK, and the name read as it was written.
        {
            "identifiers": "",
            "csv_file": (io.BytesIO("昵称\n活跃的小张\n9999\n".encode("gbk")), "a.csv"),
        },
        content_type="multipart/form-data",
    ).get_data(as_text=True)
    assert "已标记 1 位成员为活跃" in marked
    assert "9999" in marked

    # A week passes: both were last seen five days ago.
    with app.app_context():
        for member in db.session.scalars(sa.select(Member)):
            member.created_at -= timedelta(days=5)
            if member.last_active_at:
                member.last_active_at -= timedelta(days=5)
        db.session.commit()
    # Dates are days in the community's time zone (Asia/Shanghai): a cut-off of today
    # catches everyone not seen today; one of a week ago, no one.
    local_today = utcnow().astimezone(ZoneInfo("Asia/Shanghai")).date()
    later = local_today.isoformat()
    purge_url = f"/admin/communities/{community_id}/purge"
    preview = logged_in.get(purge_url, query_string={"inactive_since": later}).get_data(
        as_text=True
    )
    assert "将被清退 (2)" in preview
    week_ago = (local_today - timedelta(days=7)).isoformat()
    preview = logged_in.get(purge_url, query_string={"inactive_since": week_ago}).get_data(
        as_text=True
    )
    assert "将被清退 (0)" in preview
    # A day to come would purge members active now; a day that is no day is said to be so.
    for day, refusal in (
        ((local_today + timedelta(days=1)).isoformat(), "请选择今天或更早的日期"),
        ("2026-13-45", "不是有效的日期值"),
    ):
        preview = logged_in.get(purge_url, query_string={"inactive_since": day}).text
        assert "将被清退" not in preview and refusal in preview, day
    refused = {"csrf_token": csrf_token(logged_in, purge_url)}
    refused["inactive_since"] = (local_today + timedelta(days=1)).isoformat()
    assert logged_in.post(purge_url, data=refused).status_code == 200

    data = {"csrf_token": csrf_token(logged_in, purge_url), "inactive_since": later}
    assert logged_in.post(purge_url, data=data).status_code == 302
    again = logged_in.post(purge_url, data=data)
    assert "这次清退已经执行过" in logged_in.get(again.location).get_data(as_text=True)
    with app.app_context():
        assert count(Purge) == 1
        statuses = db.session.scalars(sa.select(Membership.status)).all()
        assert statuses == [MembershipStatus.PURGED, MembershipStatus.PURGED]


def test_marked_members_survive_a_purge(app, demo):
    join_with_phone(app.test_client())
    join_and_pay(app.test_client(), "main", display_name="活跃的小张")
    with app.app_context():
        community = db.session.scalar(sa.select(Community))
        now = utcnow()
        mark_active(community, ["活跃的小张"], actor="test", now=now + timedelta(days=10))
        cutoff = now + timedelta(days=5)
        assert [m.member.display_name for m in purge_candidates(community, cutoff)] == [
            "读书人小王"
        ]
        assert run_purge(community, cutoff, actor="test", now=now).purged_count == 1
        with pytest.raises(PurgeRefused):
            run_purge(community, cutoff, actor="test", now=now)


def test_memberships_with_a_term_expire_on_time(app, demo, runner):
    with app.app_context():
        tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
        tier.duration_days = 30
        db.session.commit()
    join_with_phone(app.test_client())
    with app.app_context():
        ends_at = db.session.scalar(sa.select(Membership.ends_at))
        assert expire_memberships(now=ends_at - timedelta(seconds=1)) == 0
        assert expire_memberships(now=ends_at) == 1
        db.session.commit()
        assert db.session.scalar(sa.select(Invitation.status)) is InvitationStatus.REVOKED
        assert db.session.scalar(sa.select(Member)).may_reenter
    assert "已到期资格：0" in runner.invoke(args=["expire-memberships"]).output


@pytest.fixture
def thirty_day_tier(app, demo):
    with app.app_context():
        tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
        tier.duration_days, tier.renewal_price = 30, 5000
        db.session.commit()


def _renew(app, browser, coupon=""):
    page = browser.get("/me").get_data(as_text=True)
    assert "续费 ¥50.00" in page
    offered = re.findall(r'name="provider" required type="radio" value="(\w+)"', page)
    assert offered == ["fake", "wechatpay", "stripe"]  # the member picks how to pay
    membership_id = re.search(r"/me/renew/(\d+)", page).group(1)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    return browser.post(
        f"/me/renew/{membership_id}",
        data={"csrf_token": token, "provider": "fake", "coupon": coupon},
    )


def test_renewal_extends_from_the_current_end_and_keeps_the_number(app, thirty_day_tier):
    join_with_phone(app.test_client())
    browser = app.test_client()
    log_in_member(app, browser)
    with app.app_context():
        first_end = db.session.scalar(sa.select(Membership.ends_at))
    to_cashier = _renew(app, browser)
    assert to_cashier.location.startswith("/fake-pay/")
    status = cashier_action(browser, to_cashier.location, "pay").location
    assert "续费成功" in browser.get(status).get_data(as_text=True)
    with app.app_context():
        membership = db.session.scalars(sa.select(Membership)).one()
        assert membership.ends_at == first_end + timedelta(days=30)
        assert db.session.scalar(sa.select(Member.number_label)) == "0001"
        assert db.session.scalar(sa.select(Community.last_member_number)) == 1
        assert count(Invitation) == 1


def test_a_renewal_paid_twice_extends_once(app, thirty_day_tier):
    """Two attempts for the same renewal both confirmed (two tabs, two payments): the money
    is kept for a refund, the membership is extended once."""
    join_with_phone(app.test_client())
    browser = app.test_client()
    log_in_member(app, browser)
    with app.app_context():
        first_end = db.session.scalar(sa.select(Membership.ends_at))
    cashier_url = _renew(app, browser).location
    with app.app_context():
        first = db.session.scalars(sa.select(Payment).order_by(Payment.id.desc())).first()
        second = Payment(
            public_id="renewal-second-tab",
            order_id=first.order_id,
            provider="fake",
            method="cashier",
            amount=first.amount,
            currency=first.currency,
            status=PaymentStatus.CREATED,
            return_url="/",
            cancel_url="/",
            provider_data={},
            created_at=utcnow(),
        )
        db.session.add(second)
        db.session.commit()
        deliveries = [signed_notification(first), signed_notification(second)]
    for body, headers in deliveries:
        assert browser.post("/webhooks/fake", data=body, headers=headers).status_code == 200
    assert cashier_url.startswith("/fake-pay/")
    with app.app_context():
        assert db.session.scalar(sa.select(Membership.ends_at)) == first_end + timedelta(days=30)
        renewal_ledger = db.session.scalars(
            sa.select(LedgerEntry.amount).where(LedgerEntry.order_id == first.order_id)
        ).all()
        assert renewal_ledger == [5000, 5000]


def test_a_renewal_takes_a_coupon_and_a_free_one_renews_at_once(app, thirty_day_tier):
    add_coupon(app, "RENEW10", percent_off=10, tiers=["main"])
    add_coupon(app, "ONUS", percent_off=100, tiers=["main"])
    join_with_phone(app.test_client())
    browser = app.test_client()
    log_in_member(app, browser)
    with app.app_context():
        first_end = db.session.scalar(sa.select(Membership.ends_at))

    refused = _renew(app, browser, coupon="NOPE")
    assert refused.status_code == 422  # the page again, the code in its field, the reason by it
    assert re.search(r'id="coupon-\d+"[^>]*value="NOPE"', refused.text)
    assert "优惠码不存在" in refused.text
    with app.app_context():
        assert count(Order) == 1  # the first year's: no renewal was started
        assert db.session.get(AttemptCounter, "coupon-try:client:127.0.0.1").count == 1

    to_cashier = _renew(app, browser, coupon=" renew10 ")
    assert to_cashier.location.startswith("/fake-pay/")
    with app.app_context():
        renewal = db.session.scalars(sa.select(Order).order_by(Order.id.desc())).first()
        assert (renewal.list_amount, renewal.amount, renewal.coupon_code) == (5000, 4500, "RENEW10")
    status = cashier_action(browser, to_cashier.location, "pay").location
    assert "续费成功" in browser.get(status).get_data(as_text=True)

    with app.app_context():  # it now ends in 60 days: a window that reaches that far
        db.session.scalar(sa.select(Tier).where(Tier.code == "main")).renewal_window_days = 90
        db.session.commit()
    free = _renew(app, browser, coupon="ONUS")
    assert not free.location.startswith("/fake-pay/")  # nothing to pay
    assert "续费成功" in browser.get(free.location).get_data(as_text=True)
    with app.app_context():
        ends_at = db.session.scalars(sa.select(Membership.ends_at)).one()
        assert ends_at == first_end + timedelta(days=60)
        entries = db.session.execute(
            sa.select(LedgerEntry.amount, LedgerEntry.discount, LedgerEntry.coupon_code)
            .order_by(LedgerEntry.id)
            .offset(1)
        ).all()
        assert entries == [(4500, 500, "RENEW10"), (0, 5000, "ONUS")]


def test_lifetime_memberships_are_not_renewed(app, demo):
    join_with_phone(app.test_client())
    browser = app.test_client()
    log_in_member(app, browser)
    assert "续费" not in browser.get("/me").get_data(as_text=True)


def test_reminders_go_once_per_end_date(app, thirty_day_tier, runner):
    join_with_phone(app.test_client())
    with app.app_context():
        membership = db.session.scalars(sa.select(Membership)).one()
        end = membership.ends_at
        assert send_reminders(now=end - timedelta(days=8)) == []
        assert len(send_reminders(now=end - timedelta(days=6))) == 1
        assert send_reminders(now=end - timedelta(days=5)) == []
        membership.ends_at = end + timedelta(days=30)  # renewed
        assert send_reminders(now=end - timedelta(days=5)) == []
        assert len(send_reminders(now=end + timedelta(days=24))) == 1
        db.session.commit()
        message = messages_besides_codes()[0]
        assert "即将到期" in message.subject
        assert "¥50.00" in message.body
    result = runner.invoke(args=["expire-memberships"])
    assert "已发送到期提醒：0；已到期资格：0" in result.output


@pytest.fixture
def season_two(app, demo):
    """A second season: its own group, a ¥19 fee for current members."""
    with app.app_context():
        community = db.session.scalar(sa.select(Community))
        group = Group(
            community=community,
            name="第二季群 · Season 2",
            platform="wechat",
            capacity=500,
            join_link="https://example.com/season-2",
            created_at=utcnow(),
        )
        tier = Tier(
            community=community,
            code="season-2",
            name="第二季 · Season 2",
            kind=TierKind.PAID,
            price=1900,
            currency="CNY",
            audience=TierAudience.MEMBERS,
            groups=[group],
        )
        db.session.add_all([group, tier])
        db.session.commit()
        return tier.id


def _open_season(app, logged_in, season_id, mode):
    with app.app_context():
        main_id = db.session.scalar(sa.select(Tier.id).where(Tier.code == "main"))
    url = f"/admin/tiers/{season_id}/season"
    return submit_form(logged_in, url, {"from_tier": str(main_id), "mode": mode})


def test_a_free_season_invites_current_members_once(app, season_two, logged_in):
    join_with_phone(app.test_client())
    submit_join(app.test_client(), "lobby", provider=None)  # lobby only: not invited
    assert _open_season(app, logged_in, season_two, "free").status_code == 302
    with app.app_context():
        member = db.session.scalar(sa.select(Member).where(Member.number == 1))
        assert member.holds(season_two)
        groups = [i.group.name for i in member.invitations]
        assert groups == ["正式一群", "第二季群 · Season 2"]
        assert len(messages_besides_codes()) == 1
    _open_season(app, logged_in, season_two, "free")
    with app.app_context():
        assert len(messages_besides_codes()) == 1  # nobody new to invite


def test_a_paid_season_is_open_to_current_members_only(app, season_two, logged_in):
    join_with_phone(app.test_client())
    _open_season(app, logged_in, season_two, "fee")
    with app.app_context():
        (message,) = messages_besides_codes()
        assert "¥19.00" in message.body
        assert "/join/demo/season-2" in message.body
    stranger = app.test_client()
    refused = stranger.get("/join/demo/season-2")
    assert refused.status_code == 403
    assert "仅限现有成员" in refused.text
    browser = app.test_client()
    log_in_member(app, browser)
    assert "第二季 · Season 2" in browser.get("/join/demo").text
    status = join_and_pay(browser, "season-2")
    assert 'id="member-number">0001<' in browser.get(status).text
    with app.app_context():
        assert db.session.scalar(sa.select(Community.last_member_number)) == 1
        assert db.session.scalar(sa.select(Member).where(Member.number == 1)).holds(season_two)


def test_reminders_go_by_wechat_template_to_linked_members(app, thirty_day_tier, apis, monkeypatch):
    monkeypatch.setitem(app.config, "WECHAT_TEMPLATE_REMINDER", "tmpl-reminder-1")
    app.extensions.pop("qunmen.wechat_client", None)
    join_with_phone(app.test_client())
    join_with_phone(app.test_client(), phone="13900139000")
    with app.app_context():
        linked = db.session.scalar(sa.select(Member).where(Member.number == 1))
        linked.wechat_openid = fake_apis.WECHAT_OPENID
        end = db.session.scalar(sa.select(Membership.ends_at))
        send_reminders(now=end - timedelta(days=6))
        db.session.commit()
        outbox.drain_outbox(now=end - timedelta(days=6))
        channels = [(m.channel, m.recipient) for m in messages_besides_codes()]
    # WeChat for the linked member; the other has only a phone (no SMS here: the log).
    assert channels == [("wechat", fake_apis.WECHAT_OPENID), ("log", "13900139000")]
    sent = apis.last("/cgi-bin/message/template/send")
    assert sent.data["touser"] == fake_apis.WECHAT_OPENID
    assert sent.data["template_id"] == "tmpl-reminder-1"
    assert "即将到期" in sent.data["data"]["first"]["value"]
    app.extensions.pop("qunmen.wechat_client", None)


def test_without_a_sender_a_code_is_never_logged(app, demo, monkeypatch, caplog):
    monkeypatch.setitem(app.config, "OUTBOX_TO_LOG", False)
    join_with_phone(app.test_client())
    response = submit_form(
        app.test_client(), "/join/demo/login", {"contact_kind": "phone", "contact_value": PHONE}
    )
    assert response.status_code == 302
    with app.app_context():
        codes = [
            re.search(r"\d{6}", m.body).group(0)
            for m in db.session.scalars(sa.select(OutboxMessage))  # the join's, the login's
        ]
        outbox.drain_outbox()
        messages = db.session.scalars(sa.select(OutboxMessage)).all()
        assert [(m.status, m.attempts) for m in messages] == [("failed", 1)] * 2  # no retry helps
        assert all("no configured channel" in m.last_error for m in messages)
        kept = " ".join(f"{m.body} {m.params}" for m in messages)
        assert not [code for code in codes if code in kept]
    assert not [code for code in codes if code in caplog.text]


def test_no_transaction_is_open_while_a_message_is_sent(app, demo, monkeypatch):
    seen = []
    original = outbox._Senders.deliver

    def watching(senders, envelope):
        seen.append(db.session().in_transaction())
        return original(senders, envelope)

    monkeypatch.setattr(outbox._Senders, "deliver", watching)
    join_with_phone(app.test_client())
    log_in_member(app, app.test_client())
    assert seen == []  # nothing is sent inside a web request
    with app.app_context():
        assert outbox.drain_outbox() == 2  # the join's code, the login's
        assert db.session.scalars(sa.select(OutboxMessage.status)).all() == ["sent", "sent"]
        assert outbox.drain_outbox() == 0
    assert seen == [False, False]  # each sent once, with no transaction open
