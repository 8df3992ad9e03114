"""Who a member is: a typed contact is a claim until a code proves it; sessions and member
links carry the member's credential version; WeChat's OAuth round trip works once, in the
browser that started it; the status page logs in once, only its own browser; code
checks and requests hold their limits under parallel requests on PostgreSQL."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import sqlalchemy as sa

import membership.login
from core.audit import AuditEntry
from core.clock import utcnow
from core.db import db
from core.limits import Limit
from membership import figures, views
from membership.cli import seed_demo_community
from membership.models import Application, LoginCode, Member
from payments.models import Payment
from tests import fake_apis
from tests.conftest import fresh_database
from tests.helpers import (
    cashier_action,
    csrf_token,
    hidden_value,
    join_and_pay,
    latest_code,
    log_in_member,
    new_phone,
    prove_join,
    submit_join,
    wechat_paid,
)
from tests.test_concurrency import _serve
from tests.test_wechat_login import in_wechat, oauth_round_trip, pay_in_wechat

VICTIM = "13800138000"


def later(hours: float):
    """Move the clock itsdangerous reads (signed links and states) ``hours`` on."""
    real = time.time
    return mock.patch("itsdangerous.timed.time.time", lambda: real() + hours * 3600)


def test_a_lobby_join_with_someone_elses_phone_never_opens_their_page(app, demo):
    attacker = app.test_client()
    joined = submit_join(attacker, "lobby", provider=None, prove=False, contact_value=VICTIM)
    assert "/verify/" in joined.location  # the code went to the victim's phone
    guessed = prove_join(attacker, joined.location, code="000000")
    assert guessed.status_code == 422 and "验证码不正确" in guessed.text
    assert attacker.get("/me").status_code == 401

    victim = app.test_client()
    response = submit_join(victim, "main", contact_value=VICTIM)  # the code comes back
    assert response.status_code == 302
    cashier_action(victim, response.location)
    assert log_in_member(app, victim, VICTIM).location == "/me"
    assert 'id="member-number">0001<' in victim.get("/me").text

    for path in ("/me", "/join/demo", joined.location, "/join/demo/main"):
        assert "0001" not in attacker.get(path).text
    assert attacker.get("/me").status_code == 401
    with app.app_context():
        member = db.session.scalar(sa.select(Member))  # the attacker's join made nobody
        assert member.contact_proven_at is not None
        actions = db.session.scalars(sa.select(AuditEntry.action)).all()
        assert "application.channel_proven" in actions


def test_a_wechat_callback_sent_to_another_browser_binds_nothing(app, demo, apis):
    victim = in_wechat(app)
    submit_join(app.test_client(), "lobby", provider=None, contact_value=VICTIM)  # no WeChat
    log_in_member(app, victim, VICTIM)

    attacker = in_wechat(app)
    phone = new_phone()
    submit_join(app.test_client(), "lobby", provider=None, contact_value=phone)
    log_in_member(app, attacker, phone)
    to_wechat = attacker.get("/join/demo/login/wechat?bind=1")
    query = parse_qs(urlsplit(to_wechat.location).query)
    callback = urlsplit(query["redirect_uri"][0]).path
    stolen = {"code": "good-code", "state": query["state"][0]}

    assert victim.get(callback, query_string=stolen).status_code == 400
    victim.post("/me/wechat", data={"csrf_token": csrf_token(victim, "/me")})
    with app.app_context():
        assert db.session.scalars(sa.select(Member.wechat_openid)).all() == [None, None]
    # A login callback is no better: it logs nobody in anywhere but where it started.
    to_wechat = attacker.get("/join/demo/login/wechat")
    state = parse_qs(urlsplit(to_wechat.location).query)["state"][0]
    fresh = in_wechat(app)
    login = fresh.get(callback, query_string={"code": "good-code", "state": state})
    assert login.status_code == 400


def test_a_wechat_state_works_once_and_for_ten_minutes(app, demo, apis):
    pay_in_wechat(app, in_wechat(app))
    browser = in_wechat(app)
    to_wechat = browser.get("/join/demo/login/wechat")
    query = parse_qs(urlsplit(to_wechat.location).query)
    callback = urlsplit(query["redirect_uri"][0]).path
    with later(0.2):  # 12 minutes
        late = browser.get(callback, query_string={"code": "good-code", "state": query["state"][0]})
    assert late.status_code == 400
    assert browser.get("/me").status_code == 401

    to_wechat = browser.get("/join/demo/login/wechat")
    state = parse_qs(urlsplit(to_wechat.location).query)["state"][0]
    first = browser.get(callback, query_string={"code": "good-code", "state": state})
    assert first.location == "/me"
    browser.post("/me/logout", data={"csrf_token": csrf_token(browser, "/me")})
    replay = browser.get(callback, query_string={"code": "good-code", "state": state})
    assert replay.status_code == 400
    assert browser.get("/me").status_code == 401


def test_the_status_page_shows_the_number_only_in_its_browser_and_logs_in_once(app, demo):
    payer = app.test_client()
    status = join_and_pay(payer, "main")
    assert 'id="member-number">0001<' in payer.get(status).text
    assert payer.get(status).headers["Cache-Control"] == "no-store"

    elsewhere = app.test_client()
    page = elsewhere.get(status).text
    assert "0001" not in page and 'id="made-elsewhere"' in page
    assert "/invitations/" not in page
    assert "0001" not in elsewhere.get("/join/demo").text

    assert "欢迎回来" in payer.get("/join/demo").text  # the join pages know them
    assert payer.get("/me").status_code == 401  # but their page needs proof
    payer.post("/me/logout", data={"csrf_token": csrf_token(payer, "/join/demo/login")})
    payer.get(status)
    assert "欢迎回来" not in payer.get("/join/demo").text  # once, not after a log out
    with app.app_context():
        assert db.session.scalar(sa.select(Application.status_login_at)) is not None


def test_a_stranger_with_the_status_url_cannot_make_the_application_theirs(app, demo):
    """The status URL goes to payment providers and browser history. Sending its "pay
    again" form from another browser once made the application that browser's: it saw
    the member's number and invitation, and took their one status-page login."""
    payer = app.test_client()
    status = join_and_pay(payer, "main", display_name="原主")
    stranger = app.test_client()
    token = csrf_token(stranger, "/join/demo/main")
    taken = stranger.post(f"{status}/pay", data={"csrf_token": token, "provider": "fake"})
    assert taken.status_code == 404
    page = stranger.get(status).text
    assert "0001" not in page and "/invitations/" not in page and "原主" not in page
    assert "原主" not in stranger.get("/join/demo").text  # not logged in as them
    assert 'id="member-number">0001<' in payer.get(status).text
    assert "原主" in payer.get("/join/demo").text  # their one status-page login is theirs


def test_only_the_applicants_browser_is_offered_to_pay_their_open_order(app, demo):
    applicant = app.test_client()
    cashier = submit_join(applicant, "main").location
    cashier_action(applicant, cashier, "cancel")
    with app.app_context():
        public_id = db.session.scalar(sa.select(Application.public_id))
    status = f"/join/demo/status/{public_id}"
    assert f"{status}/pay" in applicant.get(status).text
    stranger = app.test_client()
    page = stranger.get(status).text
    assert f"{status}/pay" not in page and 'id="made-elsewhere"' in page
    token = csrf_token(stranger, "/join/demo/main")
    refused = stranger.post(f"{status}/pay", data={"csrf_token": token, "provider": "fake"})
    assert refused.status_code == 404
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count()).select_from(Payment)) == 1
    again = applicant.post(
        f"{status}/pay", data={"csrf_token": csrf_token(applicant, status), "provider": "fake"}
    )
    assert again.location.startswith("/fake-pay/")


def test_a_late_status_page_logs_nobody_in(app, demo):
    payer = app.test_client()
    status = join_and_pay(payer, "main")
    with app.app_context():
        application = db.session.scalar(sa.select(Application))
        application.created_at = utcnow() - timedelta(hours=3)
        # Moved behind the daily figures' back (three hours ago may be yesterday in the
        # community's zone): recomputed, as after any bulk write.
        figures.rebuild(db.session, [application.community_id])
        db.session.commit()
    page = payer.get(status).text  # its own page still shows what it bought
    assert "/invitations/" in page and 'id="member-number"' not in page
    assert "欢迎回来" not in payer.get("/join/demo").text


def test_a_member_link_lasts_a_day_and_ends_with_log_out_everywhere(app, demo):
    owner = app.test_client()
    phone = new_phone()
    status = join_and_pay(owner, "main", contact_kind="phone", contact_value=phone)
    log_in_member(app, owner, phone)
    link = owner.get(status).text.split('id="member-link">', 1)[1].split("<", 1)[0]
    path = urlsplit(link).path
    assert owner.get(path).headers["Cache-Control"] == "no-store"

    with later(25):
        assert app.test_client().get(path).status_code == 404
    other = app.test_client()
    assert other.get(path).status_code == 302
    assert other.get("/me").status_code == 200

    response = owner.post("/me/logout-everywhere", data={"csrf_token": csrf_token(owner, "/me")})
    assert response.status_code == 302
    assert other.get("/me").status_code == 401
    assert owner.get("/me").status_code == 401
    assert app.test_client().get(path).status_code == 404


def test_proving_the_phone_unbinds_a_wechat_bound_through_the_claim(app, demo, apis):
    payer = in_wechat(app)  # proven by WeChat's OAuth, not by the phone typed
    response = submit_join(payer, "main", provider="wechatpay", contact_value=VICTIM)
    with app.app_context():
        body = wechat_paid(db.session.scalars(sa.select(Payment)).one())
    assert payer.post("/webhooks/wechatpay", data=body).status_code == 200
    with app.app_context():
        assert db.session.scalar(sa.select(Member.wechat_openid)) == fake_apis.WECHAT_OPENID

    log_in_member(app, app.test_client(), VICTIM)
    with app.app_context():
        assert db.session.scalar(sa.select(Member.wechat_openid)) is None
    again = in_wechat(app)
    response = oauth_round_trip(again, "/join/demo/login/wechat")
    assert response.location.startswith("/join/demo/login")  # WeChat no longer logs in


def test_joins_past_the_client_limit_are_refused(app, demo, monkeypatch):
    monkeypatch.setattr(
        views,
        "JOIN_SUBMISSIONS",
        (Limit("join:client", 2, timedelta(minutes=15)), Limit("join:all", 99, timedelta(hours=1))),
    )
    client = app.test_client()
    assert [submit_join(client, "main").status_code for _ in range(3)] == [302, 302, 429]
    with app.app_context():
        assert db.session.scalar(sa.select(sa.func.count(Application.id))) == 2


@pytest.mark.committing
def test_parallel_guesses_at_one_code_compare_at_most_five(tmp_path, _api_server, monkeypatch):
    compared = []
    real_digest = membership.login._digest

    def counting(code: str) -> str:
        if len(code) == 6:
            compared.append(code)
        return real_digest(code)

    with fresh_database(tmp_path, _api_server, SERVER_NAME=None) as app:
        with app.app_context():
            seed_demo_community()
            db.session.commit()
        server, base = _serve(app)
        try:
            browser = requests.Session()
            page = browser.get(f"{base}/join/demo/login")
            # A member, then a pending login for their phone.
            phone = new_phone()
            client = app.test_client()
            join_and_pay(client, "main", contact_kind="phone", contact_value=phone)
            sent = browser.post(
                f"{base}/join/demo/login",
                data={
                    "csrf_token": hidden_value(page.text, "csrf_token"),
                    "contact_kind": "phone",
                    "contact_value": phone,
                },
                allow_redirects=False,
            )
            code_url = base + urlsplit(sent.headers["Location"]).path
            right = latest_code(app)
            wrong = f"{(int(right) + 1) % 10**6:06d}"
            token = hidden_value(browser.get(code_url).text, "csrf_token")
            monkeypatch.setattr(membership.login, "_digest", counting)
            start = threading.Barrier(30)

            def guess(_):
                start.wait()
                return browser.post(
                    code_url,
                    data={"csrf_token": token, "code": wrong},
                    allow_redirects=False,
                    timeout=60,
                ).status_code

            with ThreadPoolExecutor(max_workers=30) as pool:
                statuses = list(pool.map(guess, range(30)))
            last = browser.post(
                code_url, data={"csrf_token": token, "code": right}, allow_redirects=False
            )
        finally:
            server.shutdown()
        assert len(compared) <= membership.login.MAX_ATTEMPTS, len(compared)
        assert statuses.count(422) == 30
        assert last.status_code == 422  # the right code, after the limit: refused
        with app.app_context():
            attempts = sa.select(LoginCode.attempts).where(LoginCode.member_id.is_not(None))
            assert db.session.scalar(attempts) == membership.login.MAX_ATTEMPTS


@pytest.mark.committing
def test_parallel_code_requests_for_one_phone_send_at_most_three(tmp_path, _api_server):
    with fresh_database(tmp_path, _api_server, SERVER_NAME=None) as app:
        with app.app_context():
            seed_demo_community()
            db.session.commit()
        phone = new_phone()
        join_and_pay(app.test_client(), "main", contact_kind="phone", contact_value=phone)
        server, base = _serve(app)
        try:
            browser = requests.Session()
            token = hidden_value(
                browser.get(f"{base}/join/demo/login").text,
                "csrf_token",
            )
            start = threading.Barrier(30)

            def ask(_):
                start.wait()
                return browser.post(
                    f"{base}/join/demo/login",
                    data={"csrf_token": token, "contact_kind": "phone", "contact_value": phone},
                    allow_redirects=False,
                    timeout=60,
                ).status_code

            with ThreadPoolExecutor(max_workers=30) as pool:
                statuses = list(pool.map(ask, range(30)))
        finally:
            server.shutdown()
        # Three logins; the join's code to the phone counts apart (join forms anyone sends
        # with the phone must not use up its logins): four codes in all.
        assert statuses.count(302) == 3, statuses
        with app.app_context():
            assert db.session.scalar(sa.select(sa.func.count(LoginCode.id))) == 4
