"""Perks for members: eligibility shown with its reasons, redeeming, stock and per-member
limits (also under 50 concurrent redeemers), courses bought at the member's offer price,
launch announcements, and the admin pages."""

from __future__ import annotations

import csv
import io
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from core.clock import utcnow
from core.db import db
from core.outbox import OutboxMessage
from core.sms import TEMPLATE_PARAMETERS
from membership.cli import seed_demo_community
from membership.exports import community_revenue
from membership.models import Community, Member, Membership, Tier
from payments.models import LedgerEntry, Order, Payment
from payments.services import request_refund, send_refund
from perks.coupons import issue_to_eligible
from perks.courses import launch
from perks.eligibility import conditions, standing_of
from perks.models import (
    Coupon,
    CouponGrant,
    Course,
    CourseNotice,
    Enrolment,
    EnrolmentStatus,
    Offer,
    Perk,
    PerkKind,
    Redemption,
)
from perks.services import PerkRefused, redeem
from tests.conftest import fresh_database
from tests.helpers import (
    cashier_action,
    count,
    csrf_token,
    join_and_pay,
    log_in_member,
    new_phone,
    statements,
    submit_form,
)


def member_client(app):
    """A new member, paid and logged in with a code on their own client; returns (client,
    member id)."""
    client = app.test_client()
    phone = new_phone()
    join_and_pay(client, "main", contact_kind="phone", contact_value=phone)
    log_in_member(app, client, phone)
    with app.app_context():
        member_id = db.session.scalar(sa.select(sa.func.max(Member.id)))
    return client, member_id


def add(app, *rows) -> list[int]:
    with app.app_context():
        community = db.session.scalar(sa.select(Community))
        for row in rows:
            row.community_id = community.id
            row.created_at = utcnow()
        db.session.add_all(rows)
        db.session.commit()
        return [row.id for row in rows]


def redeem_url(perk_id: int) -> str:
    return f"/me/perks/{perk_id}/redeem"


def post_redeem(client, perk_id: int):
    return client.post(redeem_url(perk_id), data={"csrf_token": csrf_token(client, "/me")})


def test_the_member_page_shows_each_perk_with_why_and_redeems_once(app, demo):
    client, member_id = member_client(app)
    with app.app_context():
        main = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
        main_id = main.id
    book, founders = add(
        app,
        Perk(
            name="读书券", kind=PerkKind.ITEM, stock=5, tier_id=main_id, link_url="https://x.cn/b"
        ),
        Perk(name="元老礼", kind=PerkKind.LINK, link_url="https://x.cn/f", min_tenure_days=365),
    )
    page = client.get("/me").get_data(as_text=True)
    assert "读书券" in page and "持有" in page and "剩余 5" in page
    assert "入群满365天（你已0天）" in page  # why not, in the member's words
    assert post_redeem(client, book).status_code == 303
    again = post_redeem(client, book)
    assert again.status_code == 303
    page = client.get("/me").get_data(as_text=True)
    assert "你已领取过该福利" in page and "https://x.cn/b" in page
    refused = post_redeem(client, founders)
    assert "你暂不符合条件" in client.get("/me").get_data(as_text=True)
    assert refused.status_code == 303
    with app.app_context():
        assert count(Redemption) == 1
        assert db.session.get(Perk, book).redeemed_count == 1
        assert db.session.get(Perk, founders).redeemed_count == 0
        # A year on, the veteran qualifies.
        membership = db.session.scalar(
            sa.select(Membership).where(
                Membership.member_id == member_id, Membership.tier_id == main_id
            )
        )
        membership.starts_at -= timedelta(days=400)
        for other in db.session.scalars(
            sa.select(Membership).where(Membership.member_id == member_id)
        ):
            other.starts_at = min(other.starts_at, membership.starts_at)
        db.session.commit()
    assert post_redeem(client, founders).status_code == 303
    with app.app_context():
        assert count(Redemption) == 2


def test_rules_combine_founders_seasons_and_staff(app, demo):
    _, first = member_client(app)
    _, second = member_client(app)
    rule = Perk(name="x", kind=PerkKind.ITEM, max_member_number=1, min_seasons_paid=1)
    staff_rule = Perk(name="y", kind=PerkKind.ITEM, staff_only=True)
    add(app, rule, staff_rule)
    with app.app_context():
        rule, staff_rule = db.session.merge(rule), db.session.merge(staff_rule)
        now = utcnow()
        founder = standing_of(db.session.get(Member, first), now=now)
        later = standing_of(db.session.get(Member, second), now=now)
        assert founder.seasons_paid == 1
        assert [c.met for c in conditions(rule, founder)] == [True, True, True]
        with pytest.raises(PerkRefused, match="成员编号不大于1"):
            redeem(rule, later, now=now)
        with pytest.raises(PerkRefused, match="工作人员"):
            redeem(staff_rule, founder, now=now)
        redeem(rule, founder, now=now)
        with pytest.raises(PerkRefused, match="你已领取过"):
            redeem(rule, founder, now=now)


def test_a_coupon_perk_issues_the_coupon_for_the_members_own_use(app, demo):
    client, member_id = member_client(app)
    (coupon_id,) = add(
        app, Coupon(code="VETERAN", percent_off=30, currency="CNY", issued_only=True)
    )
    (perk_id,) = add(app, Perk(name="老成员券", kind=PerkKind.COUPON, coupon_id=coupon_id))
    post_redeem(client, perk_id)
    page = client.get("/me").get_data(as_text=True)
    assert "VETERAN" in page and "减30%" in page
    with app.app_context():
        grant = db.session.scalar(sa.select(CouponGrant))
        assert (grant.member_id, grant.source) == (member_id, f"perk:{perk_id}")


PARALLEL = 50
STOCK = 10


@pytest.mark.committing
def test_fifty_parallel_redeemers_and_a_stock_of_ten(tmp_path, _api_server):
    with fresh_database(tmp_path, _api_server) as app:
        with app.app_context():
            community = seed_demo_community()
            now = utcnow()
            perk = Perk(
                community=community, name="书", kind=PerkKind.ITEM, stock=STOCK, created_at=now
            )
            main = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
            members = []
            for i in range(PARALLEL):
                member = Member(
                    community=community,
                    display_name=f"m{i}",
                    contact_kind="wechat",
                    contact_value=f"wx_member_{i}",
                    number=i + 1,
                    number_label=str(i + 1),
                    created_at=now,
                )
                db.session.add(Membership(member=member, tier=main, status="active", starts_at=now))
                members.append(member)
            db.session.add(perk)
            db.session.commit()
            perk_id, member_ids = perk.id, [m.id for m in members]
        start = threading.Barrier(PARALLEL)

        def attempt(member_id: int) -> str:
            start.wait()
            with app.app_context():
                try:
                    member = db.session.get(Member, member_id)
                    redeem(
                        db.session.get(Perk, perk_id),
                        standing_of(member, now=utcnow()),
                        now=utcnow(),
                    )
                    db.session.commit()
                    return "redeemed"
                except PerkRefused as refusal:
                    db.session.rollback()
                    return str(refusal)

        with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
            results = list(pool.map(attempt, member_ids))

        assert results.count("redeemed") == STOCK
        assert results.count("已被领完") == PARALLEL - STOCK
        with app.app_context():
            assert count(Redemption) == STOCK
            assert db.session.get(Perk, perk_id).redeemed_count == STOCK
            redeemers = db.session.scalars(sa.select(Redemption.member_id)).all()
            assert len(set(redeemers)) == STOCK


def make_course(app, **rule) -> int:
    (course_id,) = add(
        app,
        Course(
            code="writing",
            title="写作课",
            price=19900,
            currency="CNY",
            access_url="https://course.example.cn/writing",
            launched_at=utcnow(),
            **rule,
        ),
    )
    return course_id


def test_a_veteran_buys_a_course_at_their_offer_price_and_a_refund_revokes_it(app, demo):
    client, member_id = member_client(app)
    course_id = make_course(app)
    add(app, Offer(course_id=course_id, name="老成员七折", percent_off=30, min_seasons_paid=1))
    status = client.get("/me").get_data(as_text=True)
    assert "老成员七折" in status and "¥139.30" in status and "省¥59.70" in status
    page = client.get("/courses/demo/writing")
    assert "¥139.30" in page.get_data(as_text=True)
    response = submit_form(
        client, "/courses/demo/writing", {"provider": "fake", "submission_key": "k" * 24}
    )
    assert response.status_code == 302
    again = submit_form(
        client, "/courses/demo/writing", {"provider": "fake", "submission_key": "k" * 24}
    )
    assert again.location == response.location  # a double click: the same order
    assert cashier_action(client, response.location).status_code == 302
    page = client.get("/courses/demo/writing").get_data(as_text=True)
    assert "https://course.example.cn/writing" in page
    assert "写作课" in client.get("/me").get_data(as_text=True)
    with app.app_context():
        order = db.session.scalar(sa.select(Order).where(Order.product == "写作课"))
        assert (order.amount, order.member_id) == (13930, member_id)
        enrolment = db.session.scalar(sa.select(Enrolment))
        assert enrolment.status is EnrolmentStatus.ACTIVE
        payment = db.session.scalar(sa.select(Payment).where(Payment.order_id == order.id))
        refund = request_refund(
            payment, payment.money, reason="不想学了", revoke_access=True, actor="staff:1"
        )
        db.session.commit()
        send_refund(refund, actor="staff:1")
        db.session.commit()
        assert db.session.get(Enrolment, enrolment.id).status is EnrolmentStatus.REVOKED
    page = client.get("/courses/demo/writing").get_data(as_text=True)
    assert "https://course.example.cn/writing" not in page


def test_a_course_coupon_and_a_refused_one(app, demo):
    client, _ = member_client(app)
    course_id = make_course(app)
    coupon = Coupon(code="WRITE50", percent_off=50, currency="CNY")
    add(app, coupon, Coupon(code="TIERONLY", percent_off=50, currency="CNY"))
    with app.app_context():
        db.session.merge(coupon).courses = [db.session.get(Course, course_id)]
        tier_only = db.session.scalar(sa.select(Coupon).where(Coupon.code == "TIERONLY"))
        tier_only.tiers = [db.session.scalar(sa.select(Tier).where(Tier.code == "main"))]
        db.session.commit()
    refused = submit_form(
        client,
        "/courses/demo/writing",
        {"provider": "fake", "coupon": "TIERONLY", "submission_key": "a" * 24},
    )
    assert refused.status_code == 422
    assert "不适用于此商品" in refused.get_data(as_text=True)
    with app.app_context():
        assert count(Enrolment) == 0
    response = submit_form(
        client,
        "/courses/demo/writing",
        {"provider": "fake", "coupon": "write50", "submission_key": "b" * 24},
    )
    assert response.status_code == 302
    cashier_action(client, response.location)
    with app.app_context():
        entry = db.session.scalar(sa.select(LedgerEntry).order_by(LedgerEntry.id.desc()))
        assert (entry.amount, entry.discount, entry.coupon_code) == (9950, 9950, "WRITE50")
        # Finance sees the course sale with its coupon and discount.
        today = utcnow().astimezone(ZoneInfo("Asia/Shanghai")).date()
        rows, _ = community_revenue(db.session.scalar(sa.select(Community)), today, today)
        (sale,) = [r for r in rows.rows() if r[4] == "写作课"]  # read to the end: closes the cursor
        assert sale[7] == Decimal("99.50")  # gross
        assert sale[-2:] == ("WRITE50", Decimal("99.50"))


def test_a_launch_tells_each_eligible_member_once_and_not_those_who_unsubscribed(app, demo):
    client, first = member_client(app)
    _, second = member_client(app)
    course_id = make_course(app)
    with app.app_context():
        db.session.get(Course, course_id).launched_at = None
        db.session.commit()
        course = db.session.get(Course, course_id)
        before = db.session.scalar(sa.select(sa.func.max(OutboxMessage.id)))  # login codes
        with app.test_request_context():
            launch(course, actor="staff:1", now=utcnow())
        db.session.commit()
        messages = db.session.scalars(
            sa.select(OutboxMessage).where(OutboxMessage.id > before)
        ).all()
        assert sorted(m.routes[0][1] for m in messages) == sorted(
            db.session.get(Member, i).contact_value for i in (first, second)
        )
        assert "写作课" in messages[0].body and "/unsubscribe/" in messages[0].body
        link = messages[0].body.split("退订：")[1].strip()
        unsubscriber = messages[0].routes[0][1]
    path = (
        link.split("qunmen.test", 1)[1] if "qunmen.test" in link else link.split("localhost", 1)[1]
    )
    assert "退订" in client.get(path).get_data(as_text=True)
    response = client.post(path, data={"csrf_token": csrf_token(client, path)})
    assert response.status_code == 303  # post-redirect-get: "back" asks nothing again
    assert response.headers["Location"] == path
    done = client.get(path).get_data(as_text=True)
    # It stops the admins' announcements too, and says so; membership messages still come.
    assert "已退订通知（新课程和管理员的消息）" in done and "续费提醒" in done
    _, third = member_client(app)
    with app.app_context():
        with app.test_request_context():
            launch(db.session.get(Course, course_id), actor="staff:1", now=utcnow())
        db.session.commit()
        assert count(CourseNotice) == 3  # only the new member was told
        recipients = [
            routes[0][1]
            for routes in db.session.scalars(
                sa.select(OutboxMessage.routes).where(OutboxMessage.kind == "announcement")
            )
        ]
        assert recipients.count(unsubscriber) == 1
        assert db.session.get(Member, third).contact_value in recipients


def test_admins_create_perks_coupons_campaigns_courses_and_offers(app, demo, logged_in):
    client = logged_in
    with app.app_context():
        community_id = db.session.scalar(sa.select(Community.id))
    base = f"/admin/communities/{community_id}"
    assert (
        submit_form(
            client,
            f"{base}/courses/new",
            {
                "code": "writing",
                "title": "写作课",
                "price": "199",
                "access_url": "https://c.example.cn/w",
                "tier_id": "0",
                "active": "y",
            },
        ).status_code
        == 302
    )
    with app.app_context():
        course_id = db.session.scalar(sa.select(Course.id))
    assert (
        submit_form(
            client,
            f"{base}/perks/new",
            {
                "name": "读书券",
                "kind": "item",
                "stock": "10",
                "per_member_limit": "1",
                "tier_id": "0",
                "coupon_id": "0",
                "course_id": "0",
                "active": "y",
            },
        ).status_code
        == 302
    )
    bad = submit_form(
        client,
        f"{base}/coupons/new",
        {
            "code": "X",
            "kind": "amount",
            "amount_off": "abc",
            "per_member_limit": "1",
            "max_uses_per_buyer": "1",
            "tier_id": "0",
        },
    )
    assert bad.status_code == 200 and "金额格式不正确" in bad.get_data(as_text=True)
    assert (
        submit_form(
            client,
            f"{base}/coupons/new",
            {
                "code": "vip20",
                "kind": "percent",
                "percent_off": "20",
                "min_amount": "0",
                "max_uses_per_buyer": "1",
                "tier_id": "0",
                "active": "y",
                "courses": str(course_id),
            },
        ).status_code
        == 302
    )
    assert (
        submit_form(
            client,
            f"{base}/campaigns/new",
            {
                "campaign": "双十一",
                "prefix": "DS-",
                "count": "25",
                "kind": "amount",
                "amount_off": "10",
                "min_amount": "50",
                "max_uses": "1",
                "max_uses_per_buyer": "1",
                "tier_id": "0",
            },
        ).status_code
        == 302
    )
    assert (
        submit_form(
            client,
            f"{base}/offers/new",
            {
                "name": "老成员七折",
                "course_id": str(course_id),
                "percent_off": "30",
                "tier_id": "0",
                "active": "y",
            },
        ).status_code
        == 302
    )
    page = client.get(f"{base}/perks").get_data(as_text=True)
    assert "读书券" in page and "VIP20" in page and "双十一" in page and "¥139.30" in page
    exported = client.get(f"{base}/campaigns/双十一.csv").get_data(as_text=True).lstrip("\ufeff")
    rows = list(csv.reader(io.StringIO(exported)))[1:]
    assert len(rows) == 25 and len({r[0] for r in rows}) == 25
    assert all(r[0].startswith("DS-") and len(r[0]) == 11 for r in rows)
    with app.app_context():
        coupon = db.session.scalar(sa.select(Coupon).where(Coupon.code == "VIP20"))
        assert [c.id for c in coupon.courses] == [course_id]
        campaign = db.session.scalars(sa.select(Coupon).where(Coupon.campaign == "双十一")).all()
        assert {(c.amount_off, c.min_amount, c.max_uses) for c in campaign} == {(1000, 5000, 1)}


def test_issuing_a_coupon_reaches_each_eligible_member_once(app, demo):
    _, staff = member_client(app)
    member_client(app)
    (coupon_id,) = add(
        app, Coupon(code="STAFF", percent_off=50, currency="CNY", issued_only=True, staff_only=True)
    )
    with app.app_context():
        db.session.get(Member, staff).staff_number = 1
        coupon = db.session.get(Coupon, coupon_id)
        assert issue_to_eligible(coupon, actor="staff:1", now=utcnow()) == 1
        assert issue_to_eligible(coupon, actor="staff:1", now=utcnow()) == 0
        assert db.session.scalars(sa.select(CouponGrant.member_id)).all() == [staff]


def selects_during(app, action) -> int:
    """How many SELECT statements ``action`` makes."""
    with statements(app) as seen:
        action()
    return len([s for s in seen if s.upper().startswith(("SELECT", "WITH"))])


def test_a_launch_reads_the_members_in_a_fixed_number_of_queries(app, demo):
    course_id = make_course(app)
    add(app, Offer(course_id=course_id, name="七折", percent_off=30))

    def launch_to_new_members(joining: int) -> int:
        for _ in range(joining):
            member_client(app)
        with app.app_context(), app.test_request_context():
            course = db.session.get(Course, course_id)
            return selects_during(app, lambda: launch(course, actor="staff:1", now=utcnow()))

    assert launch_to_new_members(2) == launch_to_new_members(6)


def test_a_launch_from_the_admin_page_queues_and_sends_nothing_in_the_request(app, demo, logged_in):
    _, member_id = member_client(app)
    course_id = make_course(app)
    with app.app_context():
        db.session.get(Course, course_id).launched_at = None
        community = db.session.scalar(sa.select(Community))
        community_id = community.id
        legacy = Member(  # joined before channels were proven: a WeChat ID alone
            community=community,
            display_name="老成员",
            contact_kind="wechat",
            contact_value="old_reader",
            created_at=utcnow(),
        )
        db.session.add(legacy)
        db.session.add(
            Membership(
                member=legacy,
                tier=db.session.scalar(sa.select(Tier).where(Tier.code == "main")),
                status="active",
                starts_at=utcnow(),
            )
        )
        db.session.commit()
    page = f"/admin/communities/{community_id}/perks"
    response = logged_in.post(
        f"/admin/courses/{course_id}/launch", data={"csrf_token": csrf_token(logged_in, page)}
    )
    assert "通知1位成员" in logged_in.get(response.location).text
    with app.app_context():
        (notice,) = db.session.scalars(sa.select(CourseNotice)).all()
        message = db.session.get(OutboxMessage, notice.outbox_message_id)
        assert (notice.member_id, message.member_id) == (member_id, member_id)
        assert message.dedupe_key == f"course:{course_id}:member:{member_id}"
        assert message.status == "pending"  # the worker sends it, not the admin's request
        assert "¥199.00" in message.body and "/unsubscribe/" in message.body
        assert set(TEMPLATE_PARAMETERS["announcement"]) <= set(message.params)  # SMS can go
