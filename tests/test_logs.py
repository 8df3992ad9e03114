"""No secret in any log, at any level: the WeChat app secret in OAuth query strings, the
Telegram bot token in Bot API paths, configured secret values wherever they show up, and
tokens in our own URLs (the request line names the route, not the path)."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from core.db import db
from core.observability import REDACTED, redact
from membership.access import drain
from membership.models import Member
from membership.views import _member_link
from tests import fake_apis
from tests.helpers import join_and_pay
from tests.test_platforms import telegram_group  # noqa: F401 (a fixture)
from tests.test_wechat_login import in_wechat, oauth_round_trip

SECRETS = (
    fake_apis.WECHAT_APP_SECRET,
    fake_apis.WECHAT_API_KEY,
    fake_apis.TELEGRAM_BOT_TOKEN,
    fake_apis.STRIPE_SECRET_KEY,
)


def assert_no_secret_in(caplog) -> None:
    logged = caplog.text + "".join(r.getMessage() for r in caplog.records)
    for secret in SECRETS:
        assert secret not in logged


def test_wechat_oauth_at_debug_logs_no_secret(app, demo, apis, caplog):
    caplog.set_level(logging.DEBUG)
    oauth_round_trip(in_wechat(app), "/join/demo/login/wechat", code="one-time-oauth-code")
    assert apis.last("/sns/oauth2/access_token").data["secret"] == fake_apis.WECHAT_APP_SECRET
    assert "/sns/oauth2/access_token" in caplog.text  # urllib3 did log the call
    assert_no_secret_in(caplog)
    assert "one-time-oauth-code" not in caplog.text


def test_telegram_calls_at_debug_log_no_token(app, telegram_group, apis, caplog):  # noqa: F811
    join_and_pay(app.test_client(), "main")
    caplog.set_level(logging.DEBUG)
    with app.app_context():
        assert drain() == 1
    assert apis.last("/bot").path.endswith("/createChatInviteLink")
    assert "createChatInviteLink" in caplog.text  # urllib3 did log the call
    assert_no_secret_in(caplog)


def test_configured_secrets_are_redacted_in_messages_and_tracebacks(app, caplog):
    log = logging.getLogger("qunmen.test")
    caplog.set_level(logging.DEBUG)
    log.debug("calling Stripe with %s", fake_apis.STRIPE_SECRET_KEY)
    try:
        raise RuntimeError(f"refused: {fake_apis.WECHAT_API_KEY}")
    except RuntimeError:
        log.exception("a call failed")
    assert REDACTED in caplog.text
    assert "RuntimeError: refused: [redacted]" in caplog.text
    assert_no_secret_in(caplog)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (
            "GET /sns/oauth2/access_token?appid=wx1&secret=s3&code=c0&grant_type=x",
            "GET /sns/oauth2/access_token?appid=wx1&secret=[redacted]&code=[redacted]&grant_type=x",
        ),
        (
            "/cgi-bin/token?access_token=AT1&appsecret=S",
            "?access_token=[redacted]&appsecret=[redacted]",
        ),
        ("POST /bot123:AA-b_c/sendMessage", "POST /bot[redacted]/sendMessage"),
        ("https://x.test/pay?sign=ABC&key=K1", "https://x.test/pay?sign=[redacted]&key=[redacted]"),
    ],
)
def test_redaction_of_secrets_in_urls(line, expected):
    assert redact(line).endswith(expected)


def test_the_request_line_names_the_route_not_the_path(app, client, demo, caplog):
    join_and_pay(client, "main")
    with app.app_context():
        link = urlsplit(_member_link(db.session.scalars(sa.select(Member)).one())).path
    token = link.rsplit("/", 1)[1]
    caplog.set_level(logging.INFO)
    client.get(link)
    lines = [r.getMessage() for r in caplog.records if r.name == "qunmen.request"]
    assert any(line.startswith("GET /me/link/<token> 302 ") for line in lines), lines
    assert token not in caplog.text
