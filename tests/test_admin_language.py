"""The admin says things like a person: labels for statuses, kinds, providers and audit
actions in the reader's language; times in the community's zone; the community's zone and
language chosen from lists; one applicant approved or rejected from their own card."""

from __future__ import annotations

import re
from enum import StrEnum
from pathlib import Path

import pytest
import sqlalchemy as sa

from core import audit
from core.audit import AuditEntry
from core.clock import local_time
from core.db import db
from core.labels import enum_labels
from membership.models import (
    Application,
    ApplicationStatus,
    Community,
    InvitationStatus,
    Member,
    MembershipStatus,
    Tier,
)
from payments.models import DisputeStatus, Order, Payment, PaymentStatus
from perks.models import EnrolmentStatus
from tests.helpers import join_and_pay, submit_form
from tests.test_screening import apply, pending_ids, screened  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
ENGLISH = {"Accept-Language": "en"}


def community_id(app) -> int:
    with app.app_context():
        return db.session.scalar(sa.select(Community.id))


def visible(html: str) -> str:
    """The text a reader sees (links' addresses aside)."""
    return re.sub(r"<[^>]+>", " ", html)


def set_zone(app, zone: str) -> None:
    with app.app_context():
        db.session.scalar(sa.select(Community)).time_zone = zone
        db.session.commit()


def test_a_label_table_must_name_every_member():
    class Colour(StrEnum):
        RED = "red"
        BLUE = "blue"

    with pytest.raises(ValueError, match="blue"):
        enum_labels(Colour, {Colour.RED: "red"})


def recorded_actions() -> set[str]:
    """Every action the code records: the literal ones, and those made from a status."""
    literal = re.compile(r'(?:audit\.record|\brecord)\(\s*"([a-z_]+\.[a-z_]+)"')
    found = set()
    for package in ("core", "membership", "payments", "perks", "api"):
        for path in (ROOT / package).rglob("*.py"):
            found |= set(literal.findall(path.read_text()))
    made = {
        "dispute": DisputeStatus,
        "enrolment": EnrolmentStatus,
        "membership": MembershipStatus,
        "payment": PaymentStatus,
        "invitation": InvitationStatus,
    }
    for noun, statuses in made.items():
        found |= {f"{noun}.{status}" for status in statuses}
    found |= {"staff.enabled", "staff.disabled", "webhook_endpoint.enabled"}
    return found


def test_every_action_recorded_has_a_label(app):
    actions = recorded_actions()
    assert len(actions) > 80  # the scan found the code's actions
    with app.test_request_context():
        unlabelled = {action for action in actions if audit.action_label(action) == action}
    # The statuses no action is made from: a payment starts as payment.started, a course
    # purchase as enrolment.started.
    assert unlabelled == {"payment.created", "enrolment.awaiting_payment"}


def test_the_audit_log_names_who_and_what_with_readable_details(app, demo, admin, logged_in):
    join_and_pay(app.test_client())
    with app.app_context():
        order = db.session.scalar(sa.select(Order))
        order_id = order.id
        audit.record(
            "community.saved",
            db.session.scalar(sa.select(Community)),
            actor=admin.actor,  # staff:<id>: not 1 on PostgreSQL, whose ids outlive rollbacks
            data={"name": "群门读书会", "groups": [1, 2]},
        )
        db.session.commit()
        member = db.session.scalar(sa.select(Member))
        audit.record("member.logged_in", member, actor=f"member:{member.id}", data={"by": "code"})
        audit.record("order.paid", order, actor="webhook:fake")
        tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
        # A flag kept as a flag, and one an edit kept as text before flags were flags.
        data = {"requires_screening": True, "is_lobby": "False", "audience": "returning"}
        audit.record("tier.saved", tier, actor=admin.actor, data=data)
        ends = {"ends_at": "2027-02-01T08:20:45.090089+00:00"}
        audit.record("membership.renewed", member, actor="system", data=ends)
        db.session.commit()
    page = logged_in.get("/admin/audit").text
    seen = visible(page)
    assert admin.actor not in seen and "member:" not in seen and "webhook:" not in seen
    assert "\\u" not in page  # no JSON escapes
    assert ">班长</a>" in page  # the staff member's name
    assert ">成员 0001</a>" in page
    assert ">测试支付</a>" in page
    assert "保存社群" in page and "创建订单" in page
    assert 'data-action="order.created"' in page
    # Details in words: the keys' labels, and codes, flags and lists read.
    assert "<dt>名称</dt><dd>群门读书会</dd>" in page
    assert "<dt>群</dt><dd>1, 2</dd>" in page
    assert "<dt>方式</dt><dd>登录验证码</dd>" in page
    assert "<dt>需回答问题并审核</dt><dd>是</dd>" in page
    assert "<dd>否</dd>" in page and ">False<" not in page
    assert "<dt>面向</dt><dd>回归老成员</dd>" in page
    assert "<dt>到期</dt><dd>2027-02-01 16:20</dd>" in page  # in the zone the page names
    assert f"订单 #{order_id}" in page
    assert "时间为 Asia/Shanghai 时区" in page  # the audit spans communities: zone named
    logged_in.get("/lang/en")
    english = logged_in.get("/admin/audit").text
    assert "Community saved" in english and "Order created" in english
    assert "<dt>Through</dt><dd>Login code</dd>" in english
    assert "<dt>Applicants are screened</dt><dd>Yes</dd>" in english
    assert ">member 0001</a>" in english


def test_money_and_member_pages_show_labels_not_codes(app, demo, logged_in):
    join_and_pay(app.test_client())
    cid = community_id(app)
    orders = logged_in.get("/admin/payments/orders").text
    assert 'data-status="paid">已付款<' in orders
    assert ">paid<" not in orders
    payments = logged_in.get("/admin/payments/payments").text
    assert 'data-status="confirmed">已到账<' in payments
    assert "测试支付" in payments and ">fake<" not in payments
    members = logged_in.get(f"/admin/communities/{cid}/members").text
    assert 'data-status="issued">已邀请' in members
    assert ">issued" not in members and "wechat:" not in members and "phone:" not in members
    assert re.search(r'data-label="联系方式">手机: 1[3-9]\d{9}', members)
    with app.app_context():
        member_id = db.session.scalar(sa.select(Member.id))
    member = logged_in.get(f"/admin/members/{member_id}").text
    assert ">正式成员 · 有效</option>" in member and "· active" not in member
    logged_in.get("/lang/en")
    assert 'data-status="paid">Paid<' in logged_in.get("/admin/payments/orders").text
    english = logged_in.get(f"/admin/communities/{cid}/members").text
    assert re.search(r'data-label="Contact">Phone: 1[3-9]\d{9}', english)


def test_money_pages_show_times_in_the_community_zone(app, demo, logged_in):
    set_zone(app, "America/New_York")
    join_and_pay(app.test_client())
    with app.app_context():
        order = db.session.scalar(sa.select(Order))
        payment = db.session.scalar(sa.select(Payment))
        created = local_time(order.created_at, "America/New_York")
        utc = local_time(order.created_at, "UTC")
        confirmed = local_time(payment.confirmed_at, "America/New_York")
    assert created != utc
    orders = logged_in.get("/admin/payments/orders").text
    assert f">{created}</time>" in orders and f">{utc}</time>" not in orders
    assert "时间为 America/New_York 时区" in orders
    payments = logged_in.get("/admin/payments/payments").text
    assert f">{confirmed}</time>" in payments
    refund = logged_in.get(f"/admin/payments/payments/{payment.id}/refund")
    assert "时间为 America/New_York 时区" in refund.text
    # A refund made now shows in the community's zone too.
    submit_form(
        logged_in,
        f"/admin/payments/payments/{payment.id}/refund",
        {"amount": "10.00", "reason": "测试"},
    )
    with app.app_context():
        entry = db.session.scalar(sa.select(AuditEntry).where(AuditEntry.action.like("refund.%")))
        refunded = local_time(entry.created_at, "America/New_York")
    assert (
        f">{refunded}</time>" in logged_in.get(f"/admin/payments/payments/{payment.id}/refund").text
    )
    # The audit log and the inbox span communities: the install's zone, named.
    with app.app_context():
        shanghai = local_time(entry.created_at, "Asia/Shanghai")
    audit_page = logged_in.get("/admin/audit").text
    assert f">{shanghai}</time>" in audit_page and "时间为 Asia/Shanghai 时区" in audit_page
    assert "时间为 Asia/Shanghai 时区" in logged_in.get("/admin/payments/inbox").text
    assert "时间为 Asia/Shanghai 时区" in logged_in.get("/admin/payments/reconcile").text


def community_form(logged_in, cid, **changes):
    url = f"/admin/communities/{cid}/edit"
    page = logged_in.get(url).text
    fields = {
        "name": "群门读书会",
        "slug": "demo",
        "currency": "CNY",
        "time_zone": "Asia/Shanghai",
        "locale": "zh_CN",
        "member_number_pattern": "####",
        "staff_number_pattern": "LS-##",
        "pay_link_days": "7",
        "reminder_days": "7",
    }
    assert page  # the form is there to be filled
    return submit_form(logged_in, url, {**fields, **changes})


def test_the_zone_is_chosen_from_a_list_and_an_unknown_one_is_refused(app, demo, logged_in):
    cid = community_id(app)
    page = logged_in.get(f"/admin/communities/{cid}/edit").text
    select = re.search(r'<select[^>]*id="time_zone".*?</select>', page, re.S).group(0)
    zones = re.findall(r'<option[^>]*value="([^"]+)"', select)
    assert zones[:3] == ["Asia/Shanghai", "Asia/Hong_Kong", "Asia/Taipei"]
    assert "Europe/London" in zones[:14] and "Pacific/Auckland" in zones
    assert len(zones) == len(set(zones)) > 400
    refused = community_form(logged_in, cid, time_zone="Mars/Olympus_Mons")
    assert refused.status_code == 200 and "未知时区" in refused.text
    with app.app_context():
        assert db.session.get(Community, cid).time_zone == "Asia/Shanghai"
    assert community_form(logged_in, cid, time_zone="Asia/Tokyo").status_code == 302
    with app.app_context():
        assert db.session.get(Community, cid).time_zone == "Asia/Tokyo"


def test_the_community_language_can_be_left_to_the_browser(app, demo, logged_in):
    cid = community_id(app)
    assert community_form(logged_in, cid, locale="").status_code == 302
    with app.app_context():
        assert db.session.get(Community, cid).locale is None
    assert 'lang="en"' in app.test_client().get("/join/demo", headers=ENGLISH).text
    assert community_form(logged_in, cid, locale="en").status_code == 302
    assert 'lang="en"' in app.test_client().get("/join/demo").text
    refused = community_form(logged_in, cid, locale="fr")
    assert refused.status_code == 200
    with app.app_context():
        assert db.session.get(Community, cid).locale == "en"


def test_one_applicant_decided_from_their_card(app, client, screened, logged_in):  # noqa: F811
    apply(client, screened, phone="13800138001")
    apply(app.test_client(), screened, phone="13800138002")
    apply(app.test_client(), screened, phone="13800138003")
    first, second, third = pending_ids(app)
    url = f"/admin/communities/{screened['community']}/applications"
    queue = logged_in.get(url).text
    assert f'value="approve:{first}"' in queue and f'value="reject:{third}"' in queue
    # A card's button decides for that card only, even with other cards ticked.
    answer = submit_form(
        logged_in, url, {"decide": f"approve:{first}", "application": [str(second)]}
    )
    assert answer.status_code == 302
    answer = submit_form(logged_in, url, {"decide": f"reject:{third}", "reason": "名额已满"})
    assert answer.status_code == 302
    with app.app_context():
        status = dict(
            db.session.execute(
                sa.select(Application.id, Application.status).where(
                    Application.id.in_([first, second, third])
                )
            ).all()
        )
    assert status == {
        first: ApplicationStatus.APPROVED,
        second: ApplicationStatus.PENDING_REVIEW,
        third: ApplicationStatus.REJECTED,
    }
    assert f"application-{second}" in logged_in.get(url).text
