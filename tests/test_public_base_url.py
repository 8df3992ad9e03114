"""Every link we send out is on PUBLIC_BASE_URL, whatever Host header the request had:
payment callbacks and return URLs given to providers, links in messages, and links built
where there is no request at all (CLI, worker)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa
from flask import url_for
from flask.testing import FlaskClient

from core.db import db
from membership.models import Tier
from tests.helpers import log_in, messages_besides_codes, submit_join
from tests.test_screening import apply, pending_ids, review
from tests.test_wechatpay import DESKTOP, PHONE

PUBLIC = "https://join.example.com/qm"


class ForgedHostClient(FlaskClient):
    """A client whose every request says ``Host: evil.example``."""

    def open(self, *args, **kwargs):
        kwargs.setdefault("base_url", "http://evil.example")
        return super().open(*args, **kwargs)


@pytest.fixture
def client(app, monkeypatch) -> FlaskClient:
    """As in production: no SERVER_NAME, a public base with a path prefix; and a client
    that forges its Host header."""
    monkeypatch.setitem(app.config, "SERVER_NAME", None)
    monkeypatch.setitem(app.config, "PUBLIC_BASE_URL", PUBLIC)
    return ForgedHostClient(app, app.response_class, use_cookies=True)


def join(client, provider: str, user_agent: str = DESKTOP):
    client.environ_base["HTTP_USER_AGENT"] = user_agent
    return submit_join(client, "main", provider=provider)


def test_stripe_return_urls_are_on_the_public_base(client, demo, apis):
    assert join(client, "stripe").status_code == 302
    sent = apis.last("/v1/checkout/sessions").data
    assert sent["success_url"].startswith(f"{PUBLIC}/join/demo/status/")
    assert sent["cancel_url"].startswith(f"{PUBLIC}/join/demo/status/")


def test_wechat_pay_notify_url_is_on_the_public_base(client, demo, apis):
    assert join(client, "wechatpay").status_code == 302
    notify_url = apis.last("/pay/unifiedorder").data["notify_url"]
    assert notify_url == f"{PUBLIC}/webhooks/wechatpay/{demo.id}"


def test_h5_redirect_url_is_on_the_public_base(client, demo, apis):
    response = join(client, "wechatpay", PHONE)
    redirect_url = parse_qs(urlsplit(response.location).query)["redirect_url"][0]
    assert redirect_url.startswith(f"{PUBLIC}/join/demo/status/")


def test_links_in_messages_are_on_the_public_base(app, client, demo, admin):
    with app.app_context():
        db.session.scalar(sa.select(Tier).where(Tier.code == "main")).requires_screening = True
        db.session.commit()
    screened = {"community": demo.id}
    assert apply(client, screened, answers={}).status_code == 302
    staff = ForgedHostClient(app, app.response_class, use_cookies=True)
    assert log_in(staff).status_code == 302
    assert review(app, staff, screened, "approve", pending_ids(app)).status_code == 302
    with app.app_context():
        (message,) = messages_besides_codes()
        body = message.body
    assert f"{PUBLIC}/join/demo/pay/" in body
    assert "evil.example" not in body


def test_without_a_request_links_are_on_the_public_base(app, client):
    with app.app_context():
        assert url_for("webhooks.receive", provider_name="stripe") == f"{PUBLIC}/webhooks/stripe"
        assert url_for("membership.me", _external=False) == "/qm/me"
