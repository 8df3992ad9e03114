"""Serving for real: health check, request ids in logs, a database that is down, proxies."""

from __future__ import annotations

import json
import logging

import pytest

from app import create_app
from core.observability import JSONFormatter
from tests.conftest import app_config


def test_healthz_checks_the_database(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json == {"ok": True, "database": "ok"}


def test_every_response_carries_a_request_id(app, client, monkeypatch):
    first = client.get("/healthz").headers["X-Request-ID"]
    second = client.get("/healthz").headers["X-Request-ID"]
    assert first != second
    assert len(first) >= 16
    offered = {"X-Request-ID": "proxy-req-12345678"}
    assert (
        client.get("/healthz", headers=offered).headers["X-Request-ID"] != offered["X-Request-ID"]
    )
    monkeypatch.setitem(app.config, "TRUSTED_PROXIES", 1)  # behind a proxy that sets it
    assert (
        client.get("/healthz", headers=offered).headers["X-Request-ID"] == offered["X-Request-ID"]
    )
    junk = client.get("/healthz", headers={"X-Request-ID": "<script>"})
    assert junk.headers["X-Request-ID"] != "<script>"


def test_log_lines_are_json_with_the_request_id(app, client, demo, caplog):
    caplog.set_level(logging.INFO)
    response = client.post("/webhooks/fake", data=b"{}")
    assert response.status_code == 400
    request_id = response.headers["X-Request-ID"]
    records = [r for r in caplog.records if getattr(r, "request_id", "-") == request_id]
    assert records, "the request logged nothing with its id"
    line = json.loads(JSONFormatter().format(records[0]))
    assert line["request_id"] == request_id
    assert {"time", "level", "logger", "message"} <= line.keys()


@pytest.fixture
def app_without_database(tmp_path, _api_server):
    """The app pointed at a database that cannot be opened."""
    url = f"sqlite:///{tmp_path / 'no-such-folder' / 'db.sqlite3'}"
    return create_app(app_config(url, *_api_server))


@pytest.mark.committing
def test_database_down_webhooks_answer_503_and_pages_apologise(app_without_database):
    client = app_without_database.test_client()
    webhook = client.post("/webhooks/wechatpay", data=b"<xml></xml>")
    assert webhook.status_code == 503
    assert b"<return_code><![CDATA[FAIL]]></return_code>" in webhook.data
    assert client.post("/webhooks/stripe", data=b"{}").status_code == 503
    page = client.get("/join/demo")
    assert page.status_code == 503
    assert "服务暂时不可用" in page.get_data(as_text=True)
    health = client.get("/healthz")
    assert health.status_code == 503
    assert health.json == {"ok": False, "database": "unreachable"}


@pytest.mark.committing
def test_forwarded_headers_are_trusted_only_when_configured(tmp_path, _api_server):
    """The client's address and scheme come from the proxy's headers only behind
    TRUSTED_PROXIES; external URLs are on PUBLIC_BASE_URL either way."""
    url = f"sqlite:///{tmp_path / 'proxy.sqlite3'}"
    forwarded = {
        "X-Forwarded-For": "203.0.113.9",
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "evil.example",
    }
    public = "https://join.example.com/me"
    for proxies, expected in ((0, f"127.0.0.1 http {public}"), (1, f"203.0.113.9 https {public}")):
        app = create_app(
            app_config(url, *_api_server)
            | {"TRUSTED_PROXIES": proxies, "SERVER_NAME": None, "PUBLIC_BASE_URL": public[:-3]}
        )

        @app.get("/_where")
        def where():
            from flask import request, url_for

            external = url_for("membership.me", _external=True)
            return f"{request.remote_addr} {request.scheme} {external}"

        assert app.test_client().get("/_where", headers=forwarded).text == expected
