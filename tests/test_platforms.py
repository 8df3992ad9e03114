"""Group platforms: grants and revokes queued and made after the commit, with retries;
Telegram through a local fake Bot API; removal tasks for QR-joined groups."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from core.clock import utcnow
from core.db import db
from membership.access import MAX_ATTEMPTS, drain
from membership.lifecycle import run_purge
from membership.models import (
    Community,
    Group,
    Invitation,
    InvitationStatus,
    PlatformTask,
    RemovalTask,
    TaskAction,
    TaskStatus,
)
from membership.platforms import PLATFORMS, TelegramAdapter
from tests import fake_apis
from tests.helpers import join_and_pay, submit_form

CHAT = "-1001234567890"


@pytest.fixture
def telegram_group(app, demo):
    with app.app_context():
        group = db.session.scalar(sa.select(Group).where(Group.name == "正式一群"))
        group.platform, group.telegram_chat_id = "telegram", CHAT
        db.session.commit()


def tasks(app) -> list[tuple]:
    with app.app_context():
        return db.session.execute(
            sa.select(PlatformTask.action, PlatformTask.status).order_by(PlatformTask.id)
        ).all()


def telegram_calls(apis) -> list[str]:
    return [r.path.rsplit("/", 1)[1] for r in apis.requests if r.path.startswith("/bot")]


def test_telegram_link_is_made_after_the_commit_not_in_the_webhook(app, telegram_group, apis):
    browser = app.test_client()
    status = join_and_pay(browser, "main")
    assert telegram_calls(apis) == []  # the payment's request made no platform call
    assert "正在生成你的专属入群链接" in browser.get(status).text
    assert tasks(app) == [(TaskAction.GRANT, TaskStatus.PENDING)]

    with app.app_context():
        assert drain() == 1
    assert telegram_calls(apis) == ["createChatInviteLink"]
    call = apis.last("/bot")
    assert (call.data["chat_id"], call.data["creates_join_request"]) == (CHAT, True)
    with app.app_context():
        link = db.session.scalar(sa.select(Invitation.join_link))
    assert link.startswith("https://t.me/+fake")
    assert link in browser.get(status).text
    assert tasks(app) == [(TaskAction.GRANT, TaskStatus.DONE)]


def test_failures_are_retried_with_backoff_then_shown_to_admins(
    app, telegram_group, apis, logged_in
):
    join_and_pay(app.test_client(), "main")
    apis.telegram_error = "Bad Request: not enough rights to manage chat invite links"
    now = utcnow()
    with app.app_context():
        assert drain(now=now) == 1
        task = db.session.scalars(sa.select(PlatformTask)).one()
        assert (task.status, task.attempts) == (TaskStatus.PENDING, 1)
        assert task.next_attempt_at > now
        assert drain(now=now) == 0  # not due yet
        moment = now
        for _ in range(MAX_ATTEMPTS - 1):
            moment += timedelta(hours=2)
            drain(now=moment)
        db.session.refresh(task)
        assert (task.status, task.attempts) == (TaskStatus.FAILED, MAX_ATTEMPTS)
        task_id = task.id
    page = logged_in.get("/admin/platform-tasks").text
    assert "not enough rights" in page
    apis.telegram_error = None
    assert (
        submit_form(logged_in, "/admin/platform-tasks", {"task": str(task_id)}).status_code == 302
    )
    with app.app_context():
        drain()
    assert tasks(app) == [(TaskAction.GRANT, TaskStatus.DONE)]


def _purge(app):
    with app.app_context():
        run_purge(db.session.scalar(sa.select(Community)), utcnow() + timedelta(days=1), actor="t")
        db.session.commit()


def join_request(client, link: str, user_id: int, secret: str = "telegram-webhook-secret"):
    """Telegram's update: someone asks to join through ``link``."""
    update = {
        "update_id": 1,
        "chat_join_request": {
            "chat": {"id": int(CHAT), "type": "supergroup"},
            "from": {"id": user_id, "is_bot": False, "first_name": "读者"},
            "date": 1764000000,
            "invite_link": {"invite_link": link, "creates_join_request": True},
        },
    }
    return client.post(
        "/webhooks/telegram",
        json=update,
        headers={"X-Telegram-Bot-Api-Secret-Token": secret},
    )


def test_the_first_to_ask_is_let_in_and_removed_on_revoke(app, client, telegram_group, apis):
    join_and_pay(app.test_client(), "main")
    with app.app_context():
        drain()
        link = db.session.scalar(sa.select(Invitation.join_link))
    assert join_request(client, link, 111, secret="forged").status_code == 403
    assert join_request(client, link, 111).status_code == 200
    assert join_request(client, link, 222).status_code == 200  # the link was passed on
    with app.app_context():
        invitation = db.session.scalars(sa.select(Invitation)).one()
        assert (invitation.telegram_user_id, invitation.status) == (111, InvitationStatus.JOINED)
        drain()
    approve = apis.last("/bot")
    assert approve.path.endswith("approveChatJoinRequest")
    assert approve.data["user_id"] == 111
    _purge(app)
    with app.app_context():
        assert drain() == 1
    assert telegram_calls(apis)[-3:] == ["revokeChatInviteLink", "banChatMember", "unbanChatMember"]
    assert apis.last("/bot").data == {"chat_id": CHAT, "user_id": 111, "only_if_banned": True}
    assert join_request(client, "https://t.me/+unknown", 333).status_code == 200
    assert (
        client.post(
            "/webhooks/telegram",
            data=b"[",
            headers={"X-Telegram-Bot-Api-Secret-Token": "telegram-webhook-secret"},
        ).status_code
        == 400
    )


def test_revoking_a_wechat_invitation_asks_moderators(app, demo, logged_in):
    join_and_pay(app.test_client(), "main")
    _purge(app)
    with app.app_context():
        drain()
        task = db.session.scalars(sa.select(RemovalTask)).one()
        community_id = task.group.community_id
        assert task.invitation.status is InvitationStatus.REVOKED
    url = f"/admin/communities/{community_id}/removals"
    page = logged_in.get(url).text
    assert "0001" in page
    assert "读书人小王" in page
    assert "正式一群" in page
    submit_form(logged_in, url, {"task": str(task.id)})
    assert "没有待办" in logged_in.get(url).text
    with app.app_context():
        assert db.session.scalars(sa.select(RemovalTask.done_by)).one().startswith("staff:")


def test_a_wrong_bot_token_is_a_failure_not_a_crash(app, telegram_group, apis):
    join_and_pay(app.test_client(), "main")
    app.config["TELEGRAM_BOT_TOKEN"] = "999:wrong"
    try:
        with app.app_context():
            drain()
            task = db.session.scalars(sa.select(PlatformTask)).one()
            assert "Unauthorized" in task.last_error
    finally:
        app.config["TELEGRAM_BOT_TOKEN"] = fake_apis.TELEGRAM_BOT_TOKEN


def test_wechat_groups_take_no_more_than_200_by_qr(app, demo, client):
    assert PLATFORMS["wechat"].seats(500) == 200
    assert PLATFORMS["qq"].seats(2000) == 2000
    assert PLATFORMS["telegram"].seats(200_000) == 200_000
    join_and_pay(app.test_client(), "main")
    with app.app_context():
        first = db.session.scalars(sa.select(Invitation)).one()
        now = utcnow()
        db.session.execute(
            sa.insert(Invitation),
            [
                {
                    "token": f"seat-{i:03d}",
                    "member_id": first.member_id,
                    "membership_id": first.membership_id,
                    "group_id": first.group_id,
                    "status": InvitationStatus.ISSUED,
                    "created_at": now,
                    "issued_at": now,
                }
                for i in range(199)
            ],
        )
        # Rows inserted in bulk skip the ORM's flush, which keeps the seat counter.
        db.session.execute(
            sa.update(Group)
            .where(Group.id == first.group_id)
            .values(seats_taken=Group.seats_taken + 199)
        )
        db.session.commit()
    join_and_pay(app.test_client(), "main")  # the 201st: the QR code no longer works
    with app.app_context():
        last = db.session.scalars(sa.select(Invitation).order_by(Invitation.id.desc())).first()
        assert last.status is InvitationStatus.WAITING


def test_members_mark_themselves_joined(app, demo):
    browser = app.test_client()
    join_and_pay(browser, "main")
    with app.app_context():
        token = db.session.scalar(sa.select(Invitation.token))
    page = browser.get(f"/invitations/{token}").text
    assert "我已入群" in page
    csrf = page.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    assert (
        browser.post(f"/invitations/{token}/joined", data={"csrf_token": csrf}).status_code == 302
    )
    with app.app_context():
        assert db.session.scalar(sa.select(Invitation.status)) is InvitationStatus.JOINED
    assert (
        browser.post("/invitations/wrong-token/joined", data={"csrf_token": csrf}).status_code
        == 404
    )


def test_no_transaction_is_open_while_a_platform_answers(app, telegram_group, apis, monkeypatch):
    """On SQLite an open transaction holds the write lock: a slow platform must not."""
    seen = []
    original = TelegramAdapter._call

    def watching(self, method, **params):
        seen.append(db.session().in_transaction())
        return original(self, method, **params)

    monkeypatch.setattr(TelegramAdapter, "_call", watching)
    join_and_pay(app.test_client(), "main")
    with app.app_context():
        drain()
        assert db.session.scalar(sa.select(Invitation.join_link)).startswith("https://t.me/")
    assert seen == [False]
