"""The outbox as a queue: the worker sends each message by the best configured channel,
retries with backoff, gives up visibly, sends again what a killed worker left in flight
(with the same id), one SMTP connection per batch, and never keeps a login code once it
was sent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from core import outbox
from core.audit import AuditEntry
from core.clock import utcnow
from core.db import db
from core.outbox import MAX_ATTEMPTS, MessageKind, OutboxMessage, OutboxStatus
from membership.models import Member
from membership.services import message_member
from tests import fake_apis, fake_smtp
from tests.conftest import SECRET_KEY, fresh_database
from tests.helpers import csrf_token, join_and_pay, latest_code, submit_form
from tests.test_sms import sender_for

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def mailbox(app, monkeypatch):
    """A local SMTP server, configured as the app's mail server."""
    box, server = fake_smtp.start()
    monkeypatch.setitem(app.config, "MAIL_SERVER", "127.0.0.1")
    monkeypatch.setitem(app.config, "MAIL_PORT", server.server_address[1])
    monkeypatch.setitem(app.config, "MAIL_USE_TLS", False)
    yield box
    server.shutdown()
    server.server_close()


def queue_emails(count: int, *, now=None) -> None:
    outbox.enqueue_many(
        [
            {
                "kind": MessageKind.NOTICE,
                "routes": [["email", f"member{i}@example.com"]],
                "subject": f"通知 {i}",
                "body": f"message {i}",
                "params": {},
                "member_id": None,
                "dedupe_key": f"test:{i}",
            }
            for i in range(count)
        ],
        now=now or utcnow(),
    )
    db.session.commit()


def test_a_batch_of_emails_goes_over_one_connection(app, mailbox):
    with app.app_context():
        queue_emails(3)
        queue_emails(3)  # the same keys again: nothing new
        assert outbox.drain_outbox() == 3
        sent = db.session.execute(
            sa.select(OutboxMessage.status, OutboxMessage.channel, OutboxMessage.recipient)
        ).all()
    assert sent == [("sent", "email", f"member{i}@example.com") for i in range(3)]
    assert [m["To"] for m in mailbox.messages] == [f"member{i}@example.com" for i in range(3)]
    assert mailbox.connections == 1


def test_three_errors_then_success_is_one_message_and_four_tries(app, mailbox):
    mailbox.refuse_next = 3
    now = utcnow()
    with app.app_context():
        queue_emails(1, now=now)
        for minute in (0, 5, 15, 60):  # past each backoff
            outbox.drain_outbox(now=now + timedelta(minutes=minute))
        message = db.session.scalars(sa.select(OutboxMessage)).one()
        assert (message.status, message.attempts, message.last_error) == ("sent", 4, None)
    assert len(mailbox.messages) == 1


def test_an_outage_longer_than_the_retries_fails_visibly_and_is_retried_by_hand(
    app, mailbox, logged_in
):
    mailbox.refuse_next = MAX_ATTEMPTS
    now = utcnow()
    with app.app_context():
        queue_emails(1, now=now)
        for hour in range(MAX_ATTEMPTS):
            outbox.drain_outbox(now=now + timedelta(hours=hour))
        message = db.session.scalars(sa.select(OutboxMessage)).one()
        assert (message.status, message.attempts) == ("failed", MAX_ATTEMPTS)
        assert "451" in message.last_error
        assert db.session.scalar(
            sa.select(AuditEntry.action).where(AuditEntry.action == "message.failed")
        )
        message_id = message.id
    page = logged_in.get("/admin/messages").text
    assert "通知 0" in page and "451" in page
    token = csrf_token(logged_in, "/admin/messages")
    logged_in.post("/admin/messages", data={"csrf_token": token, "message": message_id})
    with app.app_context():
        assert outbox.drain_outbox() == 1
        assert db.session.get(OutboxMessage, message_id).status == "sent"
    assert len(mailbox.messages) == 1


def test_a_login_code_is_kept_only_until_it_is_sent(app, demo, mailbox, caplog):
    caplog.set_level("DEBUG")
    email = "reader@example.com"
    join_and_pay(app.test_client(), "main", contact_kind="email", contact_value=email)
    browser = app.test_client()
    response = submit_form(
        browser, "/join/demo/login", {"contact_kind": "email", "contact_value": email}
    )
    code = latest_code(app)
    with app.app_context():
        assert outbox.drain_outbox() == 2  # the join's code, the login's
        rows = db.session.execute(sa.select(OutboxMessage.__table__)).all()
        assert rows and code not in repr(rows)
        assert db.session.scalars(sa.select(OutboxMessage.channel)).all() == ["email"] * 2
    assert code in mailbox.messages[-1].get_payload(decode=True).decode()  # by e-mail
    assert code not in caplog.text
    assert submit_form(browser, response.location, {"code": code}).location == "/me"


def test_a_message_no_channel_can_take_fails_at_once(app, demo, monkeypatch):
    monkeypatch.setitem(app.config, "OUTBOX_TO_LOG", False)
    with app.app_context():
        outbox.enqueue(MessageKind.NOTICE, [["wechat", "someone"]], "s", "b")
        db.session.commit()
        assert outbox.drain_outbox() == 1  # no WeChat template configured for notices
        message = db.session.scalars(sa.select(OutboxMessage)).one()
        assert (message.status, message.attempts) == ("failed", 1)


def test_nothing_is_sent_inside_a_web_request(app, demo, mailbox):
    email = "reader2@example.com"
    join_and_pay(app.test_client(), "main", contact_kind="email", contact_value=email)
    log_in_member_by_email = submit_form(
        app.test_client(), "/join/demo/login", {"contact_kind": "email", "contact_value": email}
    )
    assert log_in_member_by_email.status_code == 302
    assert mailbox.connections == 0
    with app.app_context():
        assert db.session.scalars(sa.select(OutboxMessage.status)).all() == ["pending"] * 2


@pytest.mark.committing
def test_a_worker_killed_mid_batch_loses_nothing_and_sends_at_most_once_more(tmp_path, _api_server):
    box, server = fake_smtp.start()
    box.ack_delay = 0.05  # the worker is killed while it waits for the 30th message's answer
    settings = {
        "MAIL_SERVER": "127.0.0.1",
        "MAIL_PORT": server.server_address[1],
        "MAIL_USE_TLS": False,
        "OUTBOX_TO_LOG": False,
    }
    try:
        with fresh_database(tmp_path, _api_server, **settings) as app:
            with app.app_context():
                queue_emails(100)
                url = db.engine.url.render_as_string(hide_password=False)
            env = {
                **os.environ,
                "FLASK_APP": "app",
                "QUNMEN_DEMO": "1",
                "SECRET_KEY": SECRET_KEY,
                "DATABASE_URL": url,
                "MAIL_SERVER": "127.0.0.1",
                "MAIL_PORT": str(server.server_address[1]),
                "MAIL_USE_TLS": "0",
                "PYTHONPATH": str(ROOT),
            }
            worker = subprocess.Popen(
                [sys.executable, "-m", "flask", "worker", "--interval", "0.1"],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + 60
            while len(box.messages) < 30 and time.monotonic() < deadline:
                time.sleep(0.01)
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            killed_at = len(box.messages)
            assert 30 <= killed_at < 100, killed_at
            with app.app_context():
                in_flight = db.session.scalars(
                    sa.select(OutboxMessage.id).where(OutboxMessage.status == OutboxStatus.SENDING)
                ).all()
                assert 1 <= len(in_flight) <= outbox.BATCH  # claimed, the first one sending
                # Its lease run out, the message it was sending is due again.
                while outbox.drain_outbox(now=utcnow() + outbox.LEASE + timedelta(seconds=1)):
                    pass
                statuses = Counter(db.session.scalars(sa.select(OutboxMessage.status)))
            assert statuses == {OutboxStatus.SENT: 100}
            sent = Counter(m["Message-ID"] for m in box.messages)
            assert len(sent) == 100
            assert max(sent.values()) <= 2
            assert sum(sent.values()) == 101  # the one in flight, sent again once
            (again,) = [message_id for message_id, times in sent.items() if times == 2]
            assert again == f"<outbox-{min(in_flight)}@qunmen>"
    finally:
        server.shutdown()
        server.server_close()


def test_each_member_is_reached_by_the_right_channel(app, demo, apis, mailbox, monkeypatch):
    """One with WeChat linked, one with only a phone, one with only an e-mail: WeChat's
    template message, the SMS provider, SMTP — each through its local fake."""
    monkeypatch.setitem(app.config, "WECHAT_TEMPLATE_REMINDER", "tmpl-reminder-1")
    monkeypatch.setitem(app.extensions, "qunmen.sms", sender_for("aliyun", apis))
    app.extensions.pop("qunmen.wechat_client", None)
    join_and_pay(app.test_client(), "main", contact_kind="phone", contact_value="13800138000")
    join_and_pay(app.test_client(), "main", contact_kind="phone", contact_value="13900139000")
    join_and_pay(app.test_client(), "main", contact_kind="email", contact_value="c@example.com")
    with app.app_context():
        members = db.session.scalars(sa.select(Member).order_by(Member.id)).all()
        members[0].wechat_openid = fake_apis.WECHAT_OPENID
        for member in members:
            message_member(
                member,
                MessageKind.REMINDER,
                "即将到期 · Ends soon",
                "续费 · Renew",
                params={"community": "群门读书会", "date": "2027-01-01"},
                now=utcnow(),
            )
        db.session.commit()
        outbox.drain_outbox()  # the join's codes too
        went = db.session.execute(
            sa.select(OutboxMessage.channel, OutboxMessage.recipient)
            .where(OutboxMessage.kind == MessageKind.REMINDER)
            .order_by(OutboxMessage.id)
        ).all()
        codes = {
            str(i)
            for i in db.session.scalars(
                sa.select(OutboxMessage.id).where(OutboxMessage.kind == MessageKind.LOGIN_CODE)
            )
        }
    assert went == [
        ("wechat", fake_apis.WECHAT_OPENID),
        ("sms", "13900139000"),
        ("email", "c@example.com"),
    ]
    assert apis.last("/cgi-bin/message/template/send").data["touser"] == fake_apis.WECHAT_OPENID
    reminders = [m for m in apis.sms_messages if m["out_id"] not in codes]
    assert [m["phone"] for m in reminders] == ["13900139000"]
    assert [m["To"] for m in mailbox.messages][-1] == "c@example.com"
    app.extensions.pop("qunmen.wechat_client", None)
