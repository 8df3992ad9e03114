"""Lobby screening: questions, the review queue, personal pay links."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import sqlalchemy as sa

from core.db import db
from core.limits import AttemptCounter
from membership.models import (
    Application,
    ApplicationStatus,
    Community,
    Invitation,
    InvitationStatus,
    Member,
    QuestionKind,
    ScreeningQuestion,
    Tier,
)
from payments.models import LedgerEntry, Order
from tests.helpers import (
    add_coupon,
    cashier_action,
    count,
    messages_besides_codes,
    open_join_form,
    prove_join,
    submit_form,
)

ANSWERS = {"why": "想和大家一起读书", "where": "朋友推荐"}


@pytest.fixture
def screened(app, demo) -> dict[str, int]:
    """The ¥99 tier requires screening; two questions."""
    with app.app_context():
        community = db.session.scalar(sa.select(Community))
        db.session.scalar(sa.select(Tier).where(Tier.code == "main")).requires_screening = True
        why = ScreeningQuestion(
            community=community, position=0, prompt="为什么想加入？", kind=QuestionKind.TEXT
        )
        where = ScreeningQuestion(
            community=community,
            position=1,
            prompt="从哪里知道我们？",
            kind=QuestionKind.SINGLE,
            choices="朋友推荐\n公众号\n其他",
        )
        db.session.add_all([why, where])
        db.session.commit()
        return {"why": why.id, "where": where.id, "community": community.id}


def apply(client, screened, answers=ANSWERS, phone="13800138000"):
    data = {
        **open_join_form(client),
        "display_name": "申请人",
        "contact_kind": "phone",
        "contact_value": phone,
        "accept_rules": "y",
        "provider": "fake",
    }
    for key, value in answers.items():
        data[f"q_{screened[key]}"] = value
    response = client.post("/join/demo/main", data=data)
    if response.status_code == 302 and "/verify/" in response.location:
        response = prove_join(client, response.location)  # the code sent to the phone
    if response.status_code == 302:
        client.get(response.location)  # as a browser does: the status page
    return response


def review(app, logged_in, screened, action, ids, reason=""):
    url = f"/admin/communities/{screened['community']}/applications"
    return submit_form(
        logged_in, url, {"action": action, "application": [str(i) for i in ids], "reason": reason}
    )


def pending_ids(app) -> list[int]:
    with app.app_context():
        return db.session.scalars(
            sa.select(Application.id).where(Application.status == ApplicationStatus.PENDING_REVIEW)
        ).all()


def pay_link(app) -> str:
    with app.app_context():
        body = messages_besides_codes()[-1].body
    return re.search(r"http://qunmen\.test(/join/demo/pay/\S+)", body).group(1)


def test_the_form_asks_the_questions_and_requires_answers(app, client, screened):
    html = client.get("/join/demo/main").get_data(as_text=True)
    assert "为什么想加入？" in html
    assert "公众号" in html
    response = apply(client, screened, answers={"where": "朋友推荐"})
    assert response.status_code == 422
    assert "必填" in response.get_data(as_text=True)
    response = apply(client, screened, answers={"why": "x", "where": "不在选项里"})
    assert response.status_code == 422
    with app.app_context():
        assert count(Application) == 0


def test_applicant_waits_in_the_lobby_then_is_approved_and_pays(app, client, screened, logged_in):
    response = apply(client, screened)
    assert response.status_code == 302
    status_page = client.get(response.location).get_data(as_text=True)
    assert "等待管理员审核" in status_page
    assert "大厅群" in status_page  # the lobby invitation, at once
    with app.app_context():
        member = db.session.scalars(sa.select(Member)).one()
        assert member.number is None
    queue = logged_in.get(f"/admin/communities/{screened['community']}/applications").text
    assert "想和大家一起读书" in queue
    assert "从哪里知道我们？" in queue

    ids = pending_ids(app)
    assert review(app, logged_in, screened, "approve", ids).status_code == 302
    link = pay_link(app)
    page = client.get(link)
    assert page.status_code == 200
    assert "¥99.00" in page.text
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page.text).group(1)
    to_cashier = client.post(link, data={"csrf_token": token, "provider": "fake"})
    assert to_cashier.location.startswith("/fake-pay/")
    status = cashier_action(client, to_cashier.location, "pay").location
    assert 'id="member-number">0001<' in client.get(status).text
    with app.app_context():
        invitations = db.session.scalars(sa.select(Invitation).order_by(Invitation.id)).all()
        assert [i.group.name for i in invitations] == ["大厅群", "正式一群"]
        assert all(i.status is InvitationStatus.ISSUED for i in invitations)


def test_approving_twice_is_refused(app, client, screened, logged_in):
    apply(client, screened)
    ids = pending_ids(app)
    review(app, logged_in, screened, "approve", ids)
    again = review(app, logged_in, screened, "approve", ids)
    assert again.status_code == 302
    with app.app_context():
        assert len(messages_besides_codes()) == 1
        assert (
            db.session.scalars(sa.select(Application.status))
            .all()
            .count(ApplicationStatus.APPROVED)
            == 1
        )


def test_a_pay_link_takes_a_coupon_until_a_payment_is_tried(app, client, screened, logged_in):
    add_coupon(app, "LOBBY30", percent_off=30, tiers=["main"])
    apply(client, screened)
    review(app, logged_in, screened, "approve", pending_ids(app))
    link = pay_link(app)
    page = client.get(link).text
    assert "优惠码（选填）" in page
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    pay = {"csrf_token": token, "provider": "fake"}

    wrong = client.post(link, data={**pay, "coupon": "NOPE"})
    assert wrong.status_code == 422
    assert "优惠码不存在" in wrong.text
    with app.app_context():
        assert count(Order) == 0
        assert db.session.get(AttemptCounter, "coupon-try:client:127.0.0.1").count == 1

    to_cashier = client.post(link, data={**pay, "coupon": "lobby30"})
    assert to_cashier.location.startswith("/fake-pay/")
    with app.app_context():
        order = db.session.scalars(sa.select(Order)).one()
        assert (order.list_amount, order.amount, order.coupon_code) == (9900, 6930, "LOBBY30")
    assert 'name="coupon"' not in client.get(link).text  # a payment was tried: price settled
    status = cashier_action(client, to_cashier.location, "pay").location
    assert 'id="member-number">0001<' in client.get(status).text
    with app.app_context():
        assert db.session.scalar(sa.select(LedgerEntry.discount)) == 2970


def test_a_pay_link_with_a_free_coupon_admits_at_once(app, client, screened, logged_in):
    add_coupon(app, "WELCOMEALL", percent_off=100, tiers=["main"])
    apply(client, screened)
    review(app, logged_in, screened, "approve", pending_ids(app))
    link = pay_link(app)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', client.get(link).text)
    answer = client.post(
        link, data={"csrf_token": token.group(1), "provider": "fake", "coupon": "WELCOMEALL"}
    )
    assert "/join/demo/status/" in answer.location  # nothing to pay: straight to the status
    assert 'id="member-number">0001<' in client.get(answer.location).text


def test_someone_elses_pay_link_is_refused(app, client, screened, logged_in):
    apply(client, screened)
    review(app, logged_in, screened, "approve", pending_ids(app))
    link = pay_link(app)
    stranger = app.test_client()
    refused = stranger.get(link)
    assert refused.status_code == 403
    assert "别人的付款链接" in refused.text
    other = app.test_client()
    apply(other, screened, phone="13900139000")  # another applicant, logged in as themselves
    assert other.get(link).status_code == 403
    with app.app_context():
        assert db.session.scalars(sa.select(Application.order_id)).all().count(None) == 4


def test_expired_pay_link_can_be_renewed_by_applying_again(app, client, screened, logged_in):
    apply(client, screened)
    review(app, logged_in, screened, "approve", pending_ids(app))
    link = pay_link(app)
    with app.app_context():
        approved = db.session.scalar(
            sa.select(Application).where(Application.status == ApplicationStatus.APPROVED)
        )
        approved.pay_link_expires_at = approved.reviewed_at - timedelta(seconds=1)
        db.session.commit()
    expired = client.get(link)
    assert expired.status_code == 403
    assert "付款链接已过期" in expired.text
    token = re.search(r'name="csrf_token" value="([^"]+)"', expired.text).group(1)
    again = client.post(f"{link}/again", data={"csrf_token": token})
    assert again.status_code == 302
    assert "等待管理员审核" in client.get(again.location).text
    with app.app_context():
        pending = db.session.scalar(
            sa.select(Application).where(Application.status == ApplicationStatus.PENDING_REVIEW)
        )
        assert pending.answers == {
            str(screened["why"]): ANSWERS["why"],
            str(screened["where"]): ANSWERS["where"],
        }
    assert client.get(link).status_code == 404  # the old link is dead


def test_rejection_needs_a_reason_and_is_told_politely(app, client, screened, logged_in):
    response = apply(client, screened)
    status_path = response.location
    ids = pending_ids(app)
    review(app, logged_in, screened, "reject", ids, reason="")
    assert pending_ids(app) == ids  # refused: no reason
    review(app, logged_in, screened, "reject", ids, reason="本期名额已满")
    assert "很遗憾，这次未能通过审核：本期名额已满" in client.get(status_path).text
    with app.app_context():
        (message,) = messages_besides_codes()
        assert "本期名额已满" in message.body


def test_bulk_approval(app, screened, logged_in):
    for phone in ("13800138001", "13800138002", "13800138003"):
        apply(app.test_client(), screened, phone=phone)
    ids = pending_ids(app)
    review(app, logged_in, screened, "approve", ids[:2])
    assert pending_ids(app) == ids[2:]
    with app.app_context():
        assert len(messages_besides_codes()) == 2


def test_auto_approve_rule_approves_matching_answers_at_once(app, screened):
    with app.app_context():
        question = db.session.get(ScreeningQuestion, screened["where"])
        question.auto_approve_answer = "朋友推荐"
        db.session.commit()
    matching = app.test_client()
    apply(matching, screened)
    other = app.test_client()
    apply(other, screened, answers={"why": "好奇", "where": "公众号"}, phone="13900139000")
    with app.app_context():
        statuses = db.session.scalars(sa.select(Application.status).order_by(Application.id))
        screened_statuses = [s for s in statuses if s != ApplicationStatus.ADMITTED]
        assert screened_statuses == [ApplicationStatus.APPROVED, ApplicationStatus.PENDING_REVIEW]
        approved = db.session.scalar(
            sa.select(Application).where(Application.status == ApplicationStatus.APPROVED)
        )
        assert approved.reviewed_by == "system:auto-approve"
    assert matching.get(pay_link(app)).status_code == 200


def test_auto_approve_answer_must_be_a_choice(app, screened, logged_in):
    url = f"/admin/communities/{screened['community']}/questions"
    response = submit_form(
        logged_in,
        url,
        {
            "prompt": "年龄段",
            "kind": "single",
            "choices": "18-25\n26-35",
            "required": "y",
            "auto_approve_answer": "36+",
        },
    )
    assert "须为选择题的一个选项" in response.text
    with app.app_context():
        assert count(ScreeningQuestion) == 2


def test_a_failed_payment_from_a_pay_link_says_so_and_offers_to_pay_again(
    app, client, screened, logged_in
):
    """The approved applicant is already a lobby member: their status page showed the
    lobby invitation and nothing of the payment that failed."""
    apply(client, screened)
    review(app, logged_in, screened, "approve", pending_ids(app))
    link = pay_link(app)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', client.get(link).text)
    to_cashier = client.post(link, data={"csrf_token": token.group(1), "provider": "fake"})
    status = cashier_action(client, to_cashier.location, "fail").location
    page = client.get(status).text
    assert "支付失败，未扣款，可以重试" in page
    assert "重新支付 ¥99.00" in page
    assert "大厅群" in page  # the lobby invitation still shows
    again = re.search(r'action="([^"]+/pay)"', page).group(1)
    form_token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page).group(1)
    retried = client.post(again, data={"csrf_token": form_token, "provider": "fake"})
    assert retried.location.startswith("/fake-pay/")
    status = cashier_action(client, retried.location, "pay").location
    assert 'id="member-number">0001<' in client.get(status).text
