"""Outgoing webhooks: events written with the change that causes them, delivered by the
worker to a local receiver, signed by the Standard Webhooks scheme (checked here with the
``standardwebhooks`` package), retried on its schedule with the same ``webhook-id``,
given up after three days, the endpoint then disabled; replays; private addresses
refused outside the tests."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from core import webhooks_out
from core.audit import AuditEntry
from core.clock import utcnow
from core.db import db
from core.events import (
    DeliveryStatus,
    Event,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
    record_event,
)
from core.outbox import OutboxMessage
from core.webhooks_out import UnsafeURL, create_endpoint, drain_webhooks, replay_event
from membership.models import Community, Member
from tests import fake_receiver
from tests.conftest import SECRET_KEY, fresh_database
from tests.helpers import join_and_pay, log_in

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def receiver():
    state, server, url = fake_receiver.start()
    yield state, url
    server.shutdown()
    server.server_close()


@pytest.fixture
def private_urls(app, monkeypatch):
    """The receiver is on 127.0.0.1: allowed, as in the demo."""
    monkeypatch.setitem(app.config, "WEBHOOKS_ALLOW_PRIVATE_URLS", True)


def add_endpoint(app, url: str, types=("member.admitted",)) -> tuple[int, str]:
    with app.app_context():
        community = db.session.scalar(sa.select(Community))
        endpoint = create_endpoint(community.id, url, list(types), actor="test", now=utcnow())
        db.session.commit()
        return endpoint.id, endpoint.secret


def verified(secret: str, request) -> dict:
    headers, body = request
    return Webhook(secret).verify(body, headers)


def deliveries(app) -> list[WebhookDelivery]:
    with app.app_context():
        rows = db.session.scalars(sa.select(WebhookDelivery).order_by(WebhookDelivery.id)).all()
        db.session.expunge_all()
        return rows


def test_fails_five_times_then_delivered_once_with_the_same_id(app, demo, receiver, private_urls):
    state, url = receiver
    state.fail_first = 5
    _endpoint_id, secret = add_endpoint(app, url)
    join_and_pay(app.test_client(), "main")
    now = utcnow()
    with app.app_context():
        for _ in range(10):  # each round at the time the delivery is due
            drain_webhooks(now=now)
            now = db.session.scalar(sa.select(WebhookDelivery.next_at)) + timedelta(seconds=1)
        member = db.session.scalar(sa.select(Member))
        attempts = db.session.scalars(
            sa.select(WebhookAttempt.status).order_by(WebhookAttempt.id)
        ).all()
    assert len(state.requests) == 6
    assert len(set(state.ids)) == 1
    payloads = [verified(secret, request) for request in state.requests]
    assert payloads[-1]["type"] == "member.admitted"
    assert payloads[-1]["data"]["member"] == member.id
    assert payloads[-1]["id"] == state.ids[0]
    assert attempts == [500] * 5 + [200]
    (delivery,) = deliveries(app)
    assert (delivery.status, delivery.attempts, delivery.last_status) == (
        DeliveryStatus.DELIVERED,
        6,
        200,
    )
    assert delivery.last_answer == "thanks"


def test_the_waits_follow_the_schedule_and_the_endpoint_is_disabled_after_three_days(
    app, demo, admin, receiver, private_urls
):
    state, url = receiver
    state.fail_first = 10_000
    endpoint_id, _secret = add_endpoint(app, url)
    join_and_pay(app.test_client(), "main")
    start = now = utcnow()
    waits = []
    with app.app_context():
        while drain_webhooks(now=now):
            delivery = db.session.scalar(sa.select(WebhookDelivery))
            if delivery.status is DeliveryStatus.FAILED:
                break
            waits.append(delivery.next_at - now)
            now = delivery.next_at
        endpoint = db.session.get(WebhookEndpoint, endpoint_id)
        assert (delivery.status, endpoint.enabled) == (DeliveryStatus.FAILED, False)
        assert now - start > timedelta(days=3)
        actions = db.session.scalars(
            sa.select(AuditEntry.action).where(AuditEntry.target_type == "webhook_endpoints")
        ).all()
        told = db.session.scalar(
            sa.select(OutboxMessage).where(OutboxMessage.subject.contains("Webhook"))
        )
    assert waits[:6] == [
        timedelta(seconds=5),
        timedelta(minutes=5),
        timedelta(minutes=30),
        timedelta(hours=2),
        timedelta(hours=5),
        timedelta(hours=10),
    ]
    assert set(waits[6:]) == {timedelta(hours=10)}
    assert "webhook_endpoint.disabled" in actions
    assert told is not None and told.routes == [["email", admin.email]]
    # A disabled endpoint gets nothing more, and its new events are not queued for it.
    sent = len(state.requests)
    join_and_pay(app.test_client(), "main")
    with app.app_context():
        drain_webhooks(now=now + timedelta(days=1))
    assert len(state.requests) == sent
    assert len(deliveries(app)) == 1


def test_a_replay_sends_the_event_again_with_the_same_id(app, demo, receiver, private_urls):
    state, url = receiver
    _endpoint_id, secret = add_endpoint(app, url)
    join_and_pay(app.test_client(), "main")
    with app.app_context():
        drain_webhooks()
        event = db.session.scalar(sa.select(Event).where(Event.type == "member.admitted"))
        public_id = event.public_id
        assert replay_event(event, actor="test", now=utcnow()) == 1
        db.session.commit()
        drain_webhooks()
    assert len(state.requests) == 2
    assert state.ids[0] == state.ids[1] == public_id
    assert [verified(secret, r)["id"] for r in state.requests] == [public_id] * 2


def test_a_forged_or_altered_delivery_does_not_verify(app, demo, receiver, private_urls):
    state, url = receiver
    _endpoint_id, secret = add_endpoint(app, url)
    join_and_pay(app.test_client(), "main")
    with app.app_context():
        drain_webhooks()
    headers, body = state.requests[0]
    assert verified(secret, (headers, body))["type"] == "member.admitted"
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"member.admitted", b"member.purged__"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(webhooks_out.new_secret()).verify(body, headers)


def test_a_redirect_is_a_failure_and_is_not_followed(app, demo, receiver, private_urls):
    state, url = receiver
    state.status = 302
    add_endpoint(app, url)
    join_and_pay(app.test_client(), "main")
    with app.app_context():
        drain_webhooks()
    assert len(state.requests) == 1  # /moved was never asked for
    (delivery,) = deliveries(app)
    assert (delivery.status, delivery.last_status) == (DeliveryStatus.PENDING, 302)


def test_private_addresses_are_refused_unless_allowed(
    app, demo, receiver, private_urls, monkeypatch
):
    state, url = receiver
    endpoint_id, _secret = add_endpoint(app, url)
    monkeypatch.setitem(app.config, "WEBHOOKS_ALLOW_PRIVATE_URLS", False)
    with app.app_context():
        community_id = db.session.scalar(sa.select(Community.id))
        for address in (url, "http://10.0.0.8/hook", "http://169.254.169.254/", "ftp://x.org/"):
            with pytest.raises(UnsafeURL):
                create_endpoint(community_id, address, ["member.admitted"], actor="t", now=utcnow())
    # One made while it was allowed is refused at sending too: nothing reaches it.
    join_and_pay(app.test_client(), "main")
    with app.app_context():
        drain_webhooks()
        delivery = db.session.scalar(
            sa.select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)
        )
        assert delivery.status is DeliveryStatus.PENDING
        assert "内网" in delivery.last_answer
    assert state.requests == []


def test_an_address_that_resolves_to_nothing_is_named_in_the_reader_s_language(
    app, demo, monkeypatch
):
    def not_found(*_args, **_kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", not_found)
    with app.test_request_context():
        with pytest.raises(UnsafeURL) as refused:
            create_endpoint(
                demo.id, "https://hooks.example.cn/q", ["member.admitted"], actor="t", now=utcnow()
            )
        assert str(refused.value) == "找不到 hooks.example.cn，请检查地址"


def test_an_event_goes_with_its_transaction(app, demo, receiver, private_urls):
    _state, url = receiver
    add_endpoint(app, url, types=("perk.redeemed",))
    with app.app_context():
        community_id = db.session.scalar(sa.select(Community.id))
        record_event(community_id, "perk.redeemed", {"perk": 1}, now=utcnow())
        db.session.rollback()
        assert db.session.scalar(sa.select(sa.func.count(Event.id))) == 0
        assert db.session.scalar(sa.select(sa.func.count(WebhookDelivery.id))) == 0
        record_event(community_id, "perk.redeemed", {"perk": 1}, now=utcnow())
        record_event(community_id, "member.admitted", {"member": 1}, now=utcnow())
        db.session.commit()
        # Only the type it subscribes to is queued for the endpoint.
        assert db.session.scalar(sa.select(sa.func.count(WebhookDelivery.id))) == 1


@pytest.mark.committing
def test_a_worker_killed_mid_delivery_delivers_again_with_the_same_id(tmp_path, _api_server):
    state, server, url = fake_receiver.start()
    state.delay = 30  # the worker is killed while it waits for the answer
    try:
        with fresh_database(tmp_path, _api_server, WEBHOOKS_ALLOW_PRIVATE_URLS=True) as app:
            with app.app_context():
                from membership.cli import seed_demo_community

                community = seed_demo_community()
                db.session.commit()
                endpoint = create_endpoint(
                    community.id, url, ["perk.redeemed"], actor="test", now=utcnow()
                )
                secret = endpoint.secret
                record_event(community.id, "perk.redeemed", {"perk": 1}, now=utcnow())
                db.session.commit()
                database_url = db.engine.url.render_as_string(hide_password=False)
            env = {
                **os.environ,
                "FLASK_APP": "app",
                "QUNMEN_DEMO": "1",
                "SECRET_KEY": SECRET_KEY,
                "DATABASE_URL": database_url,
                "WEBHOOKS_ALLOW_PRIVATE_URLS": "1",
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
            while not state.requests and time.monotonic() < deadline:
                time.sleep(0.01)
            worker.send_signal(signal.SIGKILL)
            worker.wait()
            assert len(state.requests) == 1
            state.delay = 0
            with app.app_context():
                delivery = db.session.scalar(sa.select(WebhookDelivery))
                assert delivery.status is DeliveryStatus.SENDING  # claimed, never answered
                assert drain_webhooks() == 0  # its lease holds it
                drain_webhooks(now=utcnow() + webhooks_out.LEASE + timedelta(seconds=1))
                delivery = db.session.scalar(sa.select(WebhookDelivery))
                assert delivery.status is DeliveryStatus.DELIVERED
            assert len(state.requests) == 2
            assert state.ids[0] == state.ids[1]
            assert [verified(secret, r)["type"] for r in state.requests] == ["perk.redeemed"] * 2
    finally:
        server.shutdown()
        server.server_close()


def test_the_owner_adds_an_endpoint_sees_its_attempts_and_replays(
    app, demo, admin, receiver, private_urls
):
    state, url = receiver
    state.fail_first = 1
    staff = app.test_client()
    log_in(staff)
    with app.app_context():
        community_id = db.session.scalar(sa.select(Community.id))
    page_url = f"/admin/communities/{community_id}/webhooks"
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', staff.get(page_url).text).group(1)
    page = staff.post(
        page_url, data={"csrf_token": csrf, "url": url, "event_types": ["member.admitted"]}
    ).text
    secret = re.search(r'id="new-secret">(whsec_[^<]+)<', page).group(1)
    assert secret not in staff.get(page_url).text  # shown once
    refused = staff.post(
        page_url, data={"csrf_token": csrf, "url": url, "event_types": ["member.sneezed"]}
    )
    assert "未知的事件类型" in refused.text
    join_and_pay(app.test_client(), "main")
    with app.app_context():
        drain_webhooks()
        delivery_id = db.session.scalar(sa.select(WebhookDelivery.id))
        event_id = db.session.scalar(sa.select(WebhookDelivery.event_id))
    attempts = staff.get(f"/admin/webhook-deliveries/{delivery_id}").text
    assert "500" in attempts and "down for now" in attempts
    assert (
        staff.post(f"/admin/events/{event_id}/replay", data={"csrf_token": csrf}).status_code == 302
    )
    with app.app_context():
        drain_webhooks()
        assert db.session.get(WebhookDelivery, delivery_id).status is DeliveryStatus.DELIVERED
        assert db.session.scalar(sa.select(sa.func.count(WebhookEndpoint.id))) == 1
    assert [verified(secret, r)["type"] for r in state.requests[1:]] == ["member.admitted"]
