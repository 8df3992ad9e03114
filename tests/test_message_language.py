"""What is sent to a person is written in their language: a member's (chosen with the
switch), else their community's, else zh_CN; a staff member's account's, else zh_CN. It is
composed where it is queued — a request in another language, a command, the worker — and
the text made outside a request (command output) is in QUNMEN_LOCALE's language."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from flask_babel import lazy_gettext

from config import SettingError, complete
from core.auth import create_staff_user
from core.clock import utcnow
from core.db import db
from core.outbox import OutboxMessage
from membership.lifecycle import send_reminders
from membership.live_codes import GroupWarning, tell_admins
from membership.login import send_code
from membership.models import Community, ContactKind, Member, Membership, Tier
from tests.helpers import join_and_pay

PHONE = "13800138000"


@pytest.fixture
def member_with_a_term(app, demo) -> int:
    """A member of the main tier for 30 days (renewal ¥50.00); their id."""
    with app.app_context():
        tier = db.session.scalar(sa.select(Tier).where(Tier.code == "main"))
        tier.duration_days, tier.renewal_price = 30, 5000
        db.session.commit()
    join_and_pay(app.test_client(), "main", contact_kind="phone", contact_value=PHONE)
    with app.app_context():
        return db.session.scalars(sa.select(Member.id)).one()


def _remind(app, member_id: int, member_locale: str | None, community_locale: str | None):
    """Send the member's renewal reminder (from a command's app context, no request) with
    the languages given; the message."""
    with app.app_context():
        member = db.session.get(Member, member_id)
        member.locale, member.community.locale = member_locale, community_locale
        membership = db.session.scalars(sa.select(Membership)).one()
        (message_id,) = send_reminders(now=membership.ends_at - timedelta(days=1))
        message = db.session.get(OutboxMessage, message_id)
        return message.subject, message.body


def test_a_renewal_reminder_is_in_the_members_language(app, member_with_a_term):
    subject, body = _remind(app, member_with_a_term, "en", "zh_CN")
    assert subject == "群门读书会: your membership ends soon"
    assert body.startswith("Your 正式成员 membership ends on ")
    assert body.endswith(". Renewing now costs CN¥50.00.")  # money in their locale too


def test_a_renewal_reminder_is_in_the_communitys_language_unless_the_member_chose(
    app, member_with_a_term
):
    subject, body = _remind(app, member_with_a_term, None, "zh_CN")
    assert subject == "群门读书会：会员即将到期"
    assert body.startswith("你的正式成员将于 ") and body.endswith("到期，现在续费价 ¥50.00。")
    # A community that leaves the language to each visitor's browser: zh_CN for messages.
    assert _remind(app, member_with_a_term, None, None)[0] == "群门读书会：会员即将到期"


def test_a_login_code_is_in_the_language_of_the_page_or_of_the_member(
    app, demo, member_with_a_term
):
    def sent(headers: dict, member_id: int | None = None) -> OutboxMessage:
        with app.test_request_context("/join/demo/login", headers=headers):
            community = db.session.scalar(sa.select(Community))
            message_id = send_code(
                community, ContactKind.PHONE, PHONE, "246810", member_id=member_id, now=utcnow()
            )
            return db.session.get(OutboxMessage, message_id)

    english = sent({"Accept-Language": "en"})
    assert english.subject == "群门读书会: your code"
    assert english.body == "Your code is 246810; it works for 10 minutes."
    chinese = sent({})
    assert chinese.subject == "群门读书会 验证码"
    assert chinese.body == "你的验证码是 246810，10分钟内有效。"
    with app.app_context():
        db.session.get(Member, member_with_a_term).locale = "en"
        db.session.commit()
    # A member who chose English gets it, whatever page asked.
    to_member = sent({"Accept-Language": "zh-CN"}, member_id=member_with_a_term)
    assert to_member.body == "Your code is 246810; it works for 10 minutes."


def test_staff_are_warned_in_the_language_of_their_account(app, demo):
    with app.app_context():
        create_staff_user("zh@example.cn", "班长", "a-long-password-1", actor="test")
        english = create_staff_user("en@example.com", "Ann", "a-long-password-2", actor="test")
        english.locale = "en"
        community = db.session.scalar(sa.select(Community))
        group = community.groups[0]
        warning = GroupWarning(
            "qr-expired:test",
            # made as the watcher makes it: lazily, translated for each reader
            lazy_gettext(
                "The QR code of %(group)s has expired: upload a new one", group=group.name
            ),
        )
        assert tell_admins(community, [warning], now=utcnow()) == 2
        sent = {
            m.recipient or m.routes[0][1]: (m.subject, m.body)
            for m in db.session.scalars(sa.select(OutboxMessage))
        }
    assert sent["en@example.com"] == (
        "群门读书会: a group needs attention",
        "The QR code of 大厅群 has expired: upload a new one",
    )
    assert sent["zh@example.cn"] == (
        "群门读书会：群需要处理",
        "大厅群 的群二维码已过期，请上传新的",
    )


def test_commands_speak_qunmen_locale(app, demo, runner, monkeypatch):
    assert runner.invoke(args=["seed-demo"]).output == "演示社群已就绪：/join/demo\n"
    monkeypatch.setitem(app.config, "QUNMEN_LOCALE", "en")
    assert runner.invoke(args=["seed-demo"]).output == "Demo community ready: /join/demo\n"
    result = runner.invoke(args=["payments", "replay"])
    assert result.exit_code != 0 and "Give inbox ids, or --all" in result.output


def test_an_unknown_qunmen_locale_stops_the_start(tmp_path):
    config = {"QUNMEN_DEMO": True, "QUNMEN_LOCALE": "fr", "SQLALCHEMY_DATABASE_URI": "sqlite://"}
    with pytest.raises(SettingError, match="QUNMEN_LOCALE"):
        complete(config, tmp_path)
