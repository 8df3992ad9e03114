"""Plain WeChat groups' QR codes never go stale: a new member is seated in a group whose QR
works and that has room; a member's invitation page shows the group's QR only while it is
valid (and the new one as soon as it is uploaded); admins are told a day before a QR
expires, when members wait on an expired one, and when a tier's groups are nearly full."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
import sqlalchemy as sa

from core.clock import utcnow
from core.db import db
from core.outbox import OutboxMessage
from membership.access import drain
from membership.cli import _qr_png
from membership.models import Group, Invitation, PlatformTask, TaskAction, TaskStatus, Tier
from tests.helpers import ADMIN_EMAIL, csrf_token, join_and_pay, log_in_member, new_phone

EXPIRED_NOTICE = "群二维码已过期，已通知管理员"


@pytest.fixture
def two_groups(app, demo) -> list[int]:
    """The main tier's groups: "Main 1" (the demo's) and a second WeChat group."""
    with app.app_context():
        tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
        second = Group(
            community_id=tier.community_id,
            name="正式二群 · Main 2",
            platform="wechat",
            capacity=500,
            qr_image=_qr_png("main 2"),
            qr_mime="image/png",
            qr_expires_at=utcnow() + timedelta(days=6),
            created_at=utcnow(),
        )
        tier.groups.append(second)
        db.session.commit()
        return [g.id for g in tier.groups]


def set_group(app, group_id: int, **fields) -> None:
    with app.app_context():
        group = db.session.get(Group, group_id)
        for name, value in fields.items():
            setattr(group, name, value)
        db.session.commit()


def seated(app) -> list[int]:
    with app.app_context():
        return db.session.scalars(sa.select(Invitation.group_id).order_by(Invitation.id)).all()


def invitation_token(app, position: int = -1) -> str:
    with app.app_context():
        return db.session.scalars(sa.select(Invitation.token).order_by(Invitation.id)).all()[
            position
        ]


def admin_notices() -> list[OutboxMessage]:
    return list(
        db.session.scalars(
            sa.select(OutboxMessage)
            .where(OutboxMessage.dedupe_key.is_not(None))
            .order_by(OutboxMessage.id)
        )
    )


def test_an_expired_qr_is_never_shown_to_a_new_member(app, two_groups):
    first, second = two_groups
    set_group(app, first, qr_expires_at=utcnow() + timedelta(days=1))
    join_and_pay(app.test_client())  # seated in Main 1 while its QR worked
    set_group(app, first, qr_expires_at=utcnow() - timedelta(minutes=1))

    browser = app.test_client()
    status = join_and_pay(browser)
    assert seated(app) == [first, second]  # the newcomer goes where the QR works
    token = invitation_token(app)
    assert f"/invitations/{token}/qr" in browser.get(status).text
    assert browser.get(f"/invitations/{token}/qr").status_code == 200

    old = invitation_token(app, 0)
    page = app.test_client().get(f"/invitations/{old}")
    assert f"/invitations/{old}/qr" not in page.text and EXPIRED_NOTICE in page.text
    assert app.test_client().get(f"/invitations/{old}/qr").status_code == 404


def test_a_full_group_is_skipped(app, two_groups):
    first, second = two_groups
    set_group(app, first, capacity=1)
    join_and_pay(app.test_client())
    join_and_pay(app.test_client())
    assert seated(app) == [first, second]


def test_with_no_valid_qr_the_member_waits_on_a_live_code_and_admins_are_told(
    app, two_groups, admin
):
    first, _second = two_groups
    for group_id in two_groups:
        set_group(app, group_id, qr_expires_at=utcnow() - timedelta(hours=1))
    browser = app.test_client()
    status = join_and_pay(browser)
    join_and_pay(app.test_client())
    assert seated(app) == [first, first]  # a seat is kept; the QR is what is missing
    token = invitation_token(app, 0)
    assert EXPIRED_NOTICE in browser.get(status).text
    assert f"/invitations/{token}/qr" not in browser.get(f"/invitations/{token}").text
    with app.app_context():
        [notice] = admin_notices()  # told once, however many wait
        assert notice.routes == [["email", ADMIN_EMAIL]]
        assert "正式一群 的群二维码已过期" in notice.body

    set_group(app, first, qr_expires_at=utcnow() + timedelta(days=7))  # a new QR uploaded
    page = browser.get(f"/invitations/{token}").text
    assert f"/invitations/{token}/qr" in page and EXPIRED_NOTICE not in page


def test_admins_are_warned_a_day_before_a_qr_expires(app, two_groups, logged_in, runner):
    first, _second = two_groups
    set_group(app, first, qr_expires_at=utcnow() + timedelta(hours=20))
    dashboard = logged_in.get("/admin/").text
    assert "正式一群 的群二维码将在一天内过期" in dashboard
    assert "正式二群 · Main 2" not in re.sub(r"(?s)<table.*", "", dashboard)

    assert "已发送提醒：1；" in runner.invoke(args=["watch-groups"]).output
    assert "已发送提醒：0；" in runner.invoke(args=["watch-groups"]).output  # once
    with app.app_context():
        [notice] = admin_notices()
        assert notice.routes == [["email", ADMIN_EMAIL]]


def test_admins_are_warned_when_a_tiers_groups_are_within_20_seats_of_full(
    app, two_groups, logged_in, runner
):
    first, second = two_groups
    set_group(app, first, capacity=10)
    set_group(app, second, capacity=12)  # 22 seats
    with app.app_context():
        main = db.session.scalar(sa.select(Tier.name).where(Tier.code == "main"))
        others = db.session.scalars(sa.select(Tier).where(Tier.code != "main")).all()
        for tier in others:
            tier.groups = []  # the demo's re-entry tier shares Main 1: only main is watched
        db.session.commit()
    join_and_pay(app.test_client())
    assert "seats left" not in logged_in.get("/admin/").text  # 21 left
    join_and_pay(app.test_client())
    assert f"{main} 的群只剩 20 个空位" in logged_in.get("/admin/").text
    assert "已发送提醒：1；" in runner.invoke(args=["watch-groups"]).output
    assert "已发送提醒：0；" in runner.invoke(args=["watch-groups"]).output


def test_an_expired_telegram_link_is_made_anew_from_me(app, demo, apis):
    with app.app_context():
        group = db.session.scalar(sa.select(Group).where(Group.name == "正式一群"))
        group.platform, group.telegram_chat_id = "telegram", "-1001234567890"
        db.session.commit()
    phone, browser = new_phone(), app.test_client()
    join_and_pay(browser, contact_value=phone)
    with app.app_context():
        assert drain() == 1
        invitation = db.session.scalars(sa.select(Invitation)).one()
        token, first_link = invitation.token, invitation.join_link
        assert invitation.join_link_expires_at > utcnow() + timedelta(days=6)
    log_in_member(app, browser, phone)
    renew = f"/me/invitations/{token}/new-link"
    page = browser.get("/me").text
    assert first_link in page and renew not in page

    with app.app_context():  # a week later, nobody used it
        db.session.get(Invitation, invitation.id).join_link_expires_at = utcnow()
        db.session.commit()
    page = browser.get("/me").text
    assert "你的专属入群链接已过期" in page and renew in page
    stranger, other_phone = app.test_client(), new_phone()
    join_and_pay(stranger, contact_value=other_phone)
    log_in_member(app, stranger, other_phone)
    assert stranger.post(renew, data={"csrf_token": csrf_token(stranger, "/me")}).status_code == 404
    form = {"csrf_token": csrf_token(browser, "/me")}
    assert [browser.post(renew, data=form).status_code for _ in range(2)] == [302, 302]
    with app.app_context():
        grants = db.session.scalars(
            sa.select(PlatformTask.status)
            .where(
                PlatformTask.invitation_id == invitation.id, PlatformTask.action == TaskAction.GRANT
            )
            .order_by(PlatformTask.id)
        ).all()
        assert grants == [TaskStatus.DONE, TaskStatus.PENDING]  # the double click made one
        drain()
        new_link = db.session.get(Invitation, invitation.id).join_link
    assert new_link and new_link != first_link
    page = browser.get("/me").text
    assert new_link in page and "已过期" not in page
