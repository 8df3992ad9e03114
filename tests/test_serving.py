"""Serving for real: health check, request ids in logs, a database that is down, proxies."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from app import create_app
from bench.webhook_ingest import free_port
from core.observability import JSONFormatter
from tests import fake_apis
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


# bin/serve: the production command -------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def _production_settings(tmp_path: Path, apis) -> dict[str, str]:
    """What production needs (a real provider: Stripe, on the local fake), and no more."""
    port = free_port()
    return {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'serve.sqlite3'}",
        "SECRET_KEY": "serve-test-secret-key",
        "PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "PAYMENT_PROVIDERS": "stripe",
        "STRIPE_SECRET_KEY": fake_apis.STRIPE_SECRET_KEY,
        "STRIPE_WEBHOOK_SECRET": fake_apis.STRIPE_WEBHOOK_SECRET,
        "STRIPE_API_BASE": apis.base_url,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WEB_CONCURRENCY": "1",
    }


def _serve(tmp_path: Path, args: list[str], settings: dict[str, str]) -> subprocess.Popen:
    """bin/serve with only ``settings`` (and PATH) in its environment; what it prints goes
    to ``tmp_path / "serve.log"``."""
    with (tmp_path / "serve.log").open("w") as log:
        return subprocess.Popen(  # noqa: S603 (our script, our arguments)
            [str(ROOT / "bin" / "serve"), *args],
            env={"PATH": os.environ["PATH"], **settings},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


@pytest.mark.committing
@pytest.mark.parametrize("missing", ["SECRET_KEY", "PUBLIC_BASE_URL"])
def test_serve_refuses_to_start_without_its_settings(tmp_path, apis, missing):
    settings = _production_settings(tmp_path, apis)
    del settings[missing]
    process = _serve(tmp_path, [], settings)
    assert process.wait(timeout=60) != 0
    assert f"{missing} is not set" in (tmp_path / "serve.log").read_text()
    assert not (tmp_path / "serve.sqlite3").exists(), "it migrated a database anyway"
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{settings['PORT']}/healthz", timeout=2)


@pytest.mark.committing
def test_serve_refuses_the_demo_flag(tmp_path, apis):
    process = _serve(tmp_path, [], _production_settings(tmp_path, apis) | {"QUNMEN_DEMO": "1"})
    assert process.wait(timeout=60) == 2
    assert "bin/demo" in (tmp_path / "serve.log").read_text()


@pytest.mark.committing
def test_serve_migrates_serves_and_stops_on_sigterm(tmp_path, apis):
    """From an env file: the migrations, then gunicorn and the worker as two processes;
    /healthz answers; SIGTERM stops both and the command exits 0."""
    settings = _production_settings(tmp_path, apis)
    env_file = tmp_path / "qunmen.env"
    env_file.write_text("".join(f"{name}={value}\n" for name, value in settings.items()))
    process = _serve(tmp_path, ["--env-file", str(env_file)], {})
    log = tmp_path / "serve.log"
    health = f"http://127.0.0.1:{settings['PORT']}/healthz"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, log.read_text()
            try:
                response = requests.get(health, timeout=10)
                break
            except (requests.ConnectionError, requests.Timeout):
                assert time.monotonic() < deadline, "bin/serve never answered /healthz"
                time.sleep(0.2)
        assert response.status_code == 200
        assert response.json() == {"ok": True, "database": "ok"}
        children = _children(process.pid)
        commands = [Path(f"/proc/{child}/cmdline").read_bytes() for child in children]
        assert len(children) == 2
        assert any(b"gunicorn" in command for command in commands)
        assert any(b"worker" in command for command in commands)
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 0, log.read_text()
    assert not any(Path(f"/proc/{child}").exists() for child in children)
    with pytest.raises(requests.ConnectionError):
        requests.get(health, timeout=2)
