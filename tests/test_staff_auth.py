"""Staff accounts belong to their holder: sessions end when they should, passwords are
chosen by their holder, an optional TOTP second factor, and login limits that hold under
a parallel burst on PostgreSQL."""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pyotp
import pytest
import requests
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.serving import make_server

import core.auth
from core.audit import AuditEntry
from core.auth import (
    LOGIN_WINDOW,
    LOGINS_PER_CLIENT,
    LOGINS_PER_CLIENT_AND_ACCOUNT,
    StaffUser,
)
from core.clock import utcnow
from core.db import db
from core.limits import Limit
from tests.conftest import fresh_database
from tests.helpers import ADMIN_EMAIL, ADMIN_PASSWORD, csrf_token, log_in, submit_form

STRANGER = {"REMOTE_ADDR": "203.0.113.9"}
AT_HOME = {"REMOTE_ADDR": "198.51.100.7"}


def copy_session(app: Flask, client: FlaskClient) -> FlaskClient:
    """Another browser holding a copy of ``client``'s session cookie."""
    cookie = client.get_cookie("session", domain="qunmen.test")
    assert cookie is not None
    other = app.test_client()
    other.set_cookie("session", cookie.value, domain="qunmen.test")
    return other


def logged_in_now(client: FlaskClient) -> bool:
    return client.get("/admin/").status_code == 200


def audit_actions(app: Flask, action_prefix: str = "staff.") -> list[AuditEntry]:
    with app.app_context():
        entries = db.session.scalars(
            sa.select(AuditEntry)
            .where(AuditEntry.action.startswith(action_prefix))
            .order_by(AuditEntry.id)
        ).all()
        db.session.expunge_all()
        return list(entries)


def add_staff(app: Flask, email: str, role: str = "finance", **fields) -> int:
    with app.app_context():
        user = core.auth.create_staff_user(
            email, role, "first password", actor="test", role=role, **fields
        )
        db.session.commit()
        return user.id


@pytest.fixture
def password_checks(monkeypatch) -> list[str]:
    """The password hashes checked at login, counted."""
    checked: list[str] = []
    real = core.auth.check_password_hash

    def counting(password_hash: str, password: str) -> bool:
        checked.append(password_hash)
        return real(password_hash, password)

    monkeypatch.setattr(core.auth, "check_password_hash", counting)
    return checked


# --- sessions ------------------------------------------------------------------------


def test_a_copied_session_ends_at_logout(app, client, admin):
    assert log_in(client).status_code == 302
    copy = copy_session(app, client)
    assert logged_in_now(copy)
    token = csrf_token(client, "/admin/")
    assert client.post("/admin/logout", data={"csrf_token": token}).status_code == 302
    assert not logged_in_now(client)
    assert not logged_in_now(copy)
    assert [e.action for e in audit_actions(app)][-1] == "staff.logged_out"


@pytest.mark.parametrize("action", ["role", "disable"])
def test_the_owners_change_ends_the_accounts_sessions(app, client, demo, admin, action):
    user_id = add_staff(app, "money@example.com")
    staff = app.test_client()
    assert log_in(staff, email="money@example.com", password="first password").status_code == 302
    copy = copy_session(app, staff)
    assert logged_in_now(staff)
    log_in(client)
    token = csrf_token(client, "/admin/staff")
    client.post(
        f"/admin/staff/{user_id}",
        data={"csrf_token": token, "action": action, "community": demo.id, "role": "admin"},
    )
    assert not logged_in_now(staff)
    assert not logged_in_now(copy)
    if action == "role":  # the account still works: a new login gets the new role
        assert log_in(staff, email="money@example.com", password="first password").status_code
        assert logged_in_now(staff)


def test_a_session_from_before_the_epoch_is_refused(app, client, admin):
    """A cookie holding only the account's id (as sessions did before epochs) is not a
    session."""
    with client.session_transaction() as session:
        session["_user_id"] = str(admin.id)
        session["_fresh"] = True
    assert not logged_in_now(client)


# --- passwords -----------------------------------------------------------------------


def test_changing_the_password_needs_the_current_one_and_ends_other_sessions(app, client, admin):
    log_in(client)
    copy = copy_session(app, client)
    url = "/admin/account/password"
    new = "a brand new passphrase"
    wrong = submit_form(client, url, {"current": "nope", "password": new, "confirm": new})
    assert "密码不正确" in wrong.text
    short = submit_form(
        client, url, {"current": ADMIN_PASSWORD, "password": "short7!", "confirm": "short7!"}
    )
    assert "新密码（" in short.text and short.status_code == 200
    long = "long " * 13  # 65 characters: long passphrases are welcome
    changed = submit_form(
        client, url, {"current": ADMIN_PASSWORD, "password": long, "confirm": long}
    )
    assert changed.status_code == 302
    assert logged_in_now(client)  # this session goes on with the new epoch
    assert not logged_in_now(copy)  # the others end
    other = app.test_client()
    assert "不正确" in log_in(other, environ_base=AT_HOME).text
    assert log_in(other, password=long, environ_base=AT_HOME).status_code == 302
    entries = audit_actions(app, "staff.password")
    assert [e.action for e in entries] == ["staff.password_changed"]
    assert long not in str(entries[0].data)


def test_an_owners_reset_shows_a_temporary_password_once_and_forces_a_change(
    app, client, demo, admin
):
    user_id = add_staff(app, "money@example.com")
    staff = app.test_client()
    log_in(staff, email="money@example.com", password="first password")
    log_in(client)
    token = csrf_token(client, "/admin/staff")
    page = client.post(
        f"/admin/staff/{user_id}", data={"csrf_token": token, "action": "reset_password"}
    )
    assert page.headers["Cache-Control"] == "no-store"
    temporary = re.search(r'id="temporary-password">([^<]+)</code>', page.text).group(1)
    assert len(temporary) >= 16
    assert staff.get("/admin/").location.startswith("/admin/login")  # their session ended
    assert "不正确" in log_in(staff, email="money@example.com", password="first password").text
    assert log_in(staff, email="money@example.com", password=temporary).status_code == 302
    forced = staff.get("/admin/")
    assert forced.location.endswith("/admin/account/password")
    assert staff.get("/admin/orders").location.endswith("/admin/account/password")
    mine = "only I know this one"
    submit_form(
        staff,
        "/admin/account/password",
        {"current": temporary, "password": mine, "confirm": mine},
    )
    assert logged_in_now(staff)
    actions = [e.action for e in audit_actions(app, "staff.password")]
    assert actions == ["staff.password_reset", "staff.password_changed"]
    assert temporary not in str([e.data for e in audit_actions(app)])


def test_staff_added_by_the_owner_choose_their_password_at_first_login(app, client, demo, admin):
    log_in(client)
    submit_form(
        client,
        "/admin/staff",
        {
            "email": "mod@example.com",
            "name": "组织委员",
            "community": demo.id,
            "role": "moderator",
            "password": "given by the owner",
        },
    )
    staff = app.test_client()
    assert log_in(staff, email="mod@example.com", password="given by the owner").status_code
    assert staff.get("/admin/").location.endswith("/admin/account/password")


def test_create_admin_with_a_temporary_password(app, runner):
    result = runner.invoke(
        args=["create-admin", "--email", "boss@example.com", "--name", "班长", "--temporary"],
        input="temporary pass\ntemporary pass\n",
    )
    assert result.exit_code == 0, result.output
    client = app.test_client()
    log_in(client, email="boss@example.com", password="temporary pass")
    assert client.get("/admin/").location.endswith("/admin/account/password")


# --- TOTP ----------------------------------------------------------------------------


def enrol(client: FlaskClient) -> pyotp.TOTP:
    """Turn TOTP on for the logged-in member of staff; their authenticator app."""
    url = "/admin/account/two-step"
    page = client.post(url, data={"csrf_token": csrf_token(client, url), "action": "start"})
    secret = re.search(r'id="totp-key">([A-Z2-7]+)</code>', page.text).group(1)
    assert "otpauth://totp/" in page.text
    assert secret not in client.get(url).text  # shown once
    app_ = pyotp.TOTP(secret)
    wrong = submit_form(client, url, {"action": "confirm", "code": "000000"})
    assert "动态码不正确" in wrong.text
    confirmed = submit_form(client, url, {"action": "confirm", "code": app_.now()})
    assert confirmed.status_code == 302
    return app_


def test_totp_once_enabled_is_needed_at_login_and_each_code_counts_once(app, client, admin):
    log_in(client)
    authenticator = enrol(client)
    with app.app_context():
        # The confirmation used up the current code; log in with the next one.
        assert db.session.get(StaffUser, admin.id).uses_totp
    code = authenticator.at(utcnow() + timedelta(seconds=30))
    fresh = app.test_client()
    assert "动态码无效" in log_in(fresh, environ_base=AT_HOME).text  # password alone
    assert "动态码无效" in log_in(fresh, code="123456", environ_base=AT_HOME).text
    assert log_in(fresh, code=code, environ_base=AT_HOME).status_code == 302
    again = app.test_client()
    assert "动态码无效" in log_in(again, code=code, environ_base=AT_HOME).text  # replayed
    actions = [e.action for e in audit_actions(app, "staff.totp")]
    assert actions == ["staff.totp_enrolment_started", "staff.totp_enabled"]


def test_turning_totp_off_needs_the_password(app, client, admin):
    log_in(client)
    enrol(client)
    url = "/admin/account/two-step"
    assert "密码不正确" in submit_form(client, url, {"action": "disable", "current": "x"}).text
    off = submit_form(client, url, {"action": "disable", "current": ADMIN_PASSWORD})
    assert off.status_code == 302
    assert "staff.totp_disabled" in [e.action for e in audit_actions(app)]
    assert log_in(app.test_client(), environ_base=AT_HOME).status_code == 302


def test_owners_and_finance_are_offered_totp(app, client, admin):
    response = log_in(client, follow_redirects=True)
    assert "建议开启两步验证" in response.text
    add_staff(app, "mod@example.com", role="moderator")
    moderator = app.test_client()
    page = log_in(moderator, email="mod@example.com", password="first password")
    assert "建议" not in moderator.get(page.location).text


# --- limits and the audit of logins ----------------------------------------------------


def test_a_stranger_cannot_lock_the_owner_out_from_elsewhere(app, client, admin, password_checks):
    tries = LOGINS_PER_CLIENT_AND_ACCOUNT.tries
    for _ in range(tries):
        failed = log_in(client, password="guess", environ_base=STRANGER)
        assert "邮箱或密码不正确" in failed.text
    refused = log_in(client, environ_base=STRANGER)  # even the right password
    assert "尝试次数过多" in refused.text
    assert not logged_in_now(client)
    assert len(password_checks) == tries
    assert log_in(app.test_client(), environ_base=AT_HOME).status_code == 302
    entries = audit_actions(app)
    failed = [e for e in entries if e.action == "staff.login_failed"]
    assert len(failed) == tries
    assert {(e.data["email"], e.ip, e.target_id) for e in failed} == {
        (ADMIN_EMAIL, STRANGER["REMOTE_ADDR"], admin.id)
    }
    limited = [e for e in entries if e.action == "staff.login_limited"]
    assert [e.data["limit"] for e in limited] == [LOGINS_PER_CLIENT_AND_ACCOUNT.name]
    log_in(client, environ_base=STRANGER)  # a further refusal is not audited again
    assert len([e for e in audit_actions(app) if e.action == "staff.login_limited"]) == 1


def test_one_client_is_limited_across_accounts(app, client, admin, password_checks):
    for i in range(LOGINS_PER_CLIENT.tries):
        log_in(client, email=f"guess{i}@example.com", password="guess", environ_base=STRANGER)
    assert "尝试次数过多" in log_in(client, environ_base=STRANGER).text
    assert len(password_checks) == LOGINS_PER_CLIENT.tries


def test_tries_refused_by_a_clients_limit_leave_the_shared_limit_alone(
    app, client, admin, monkeypatch
):
    monkeypatch.setattr(core.auth, "LOGINS_IN_ALL", Limit("staff-login:all", 8, LOGIN_WINDOW))
    for _ in range(LOGINS_PER_CLIENT.tries + 5):
        log_in(client, password="guess", environ_base=STRANGER)
    assert log_in(app.test_client(), environ_base=AT_HOME).status_code == 302


def test_the_shared_limit_holds_across_clients(app, admin, monkeypatch, password_checks):
    monkeypatch.setattr(core.auth, "LOGINS_IN_ALL", Limit("staff-login:all", 3, LOGIN_WINDOW))
    for i in range(3):
        log_in(app.test_client(), password="guess", environ_base={"REMOTE_ADDR": f"10.0.0.{i}"})
    assert "尝试次数过多" in log_in(app.test_client(), environ_base=AT_HOME).text
    assert len(password_checks) == 3
    limited = [e for e in audit_actions(app) if e.action == "staff.login_limited"]
    assert [e.data for e in limited] == [{"limit": "staff-login:all", "email": ADMIN_EMAIL}]


def test_unknown_and_known_emails_get_the_same_answer(app, client, admin, password_checks):
    unknown = log_in(client, email="nobody@example.com", password="guess")
    known = log_in(client, password="guess")
    assert "邮箱或密码不正确" in unknown.text and "邮箱或密码不正确" in known.text
    assert len(password_checks) == 2  # a stand-in hash is checked for the unknown e-mail
    assert password_checks[0].startswith("scrypt:")
    first, second = [e for e in audit_actions(app) if e.action == "staff.login_failed"]
    assert (first.target_id, first.data) == (None, {})  # the e-mail typed is not kept
    assert (second.target_id, second.data) == (admin.id, {"email": ADMIN_EMAIL})


def test_a_disabled_account_cannot_log_in(app, client, admin):
    user_id = add_staff(app, "gone@example.com")
    with app.app_context():
        db.session.get(StaffUser, user_id).active = False
        db.session.commit()
    assert "不正确" in log_in(client, email="gone@example.com", password="first password").text


def _serve(app: Flask):
    """The app on a real loopback HTTP server, one thread per connection."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


def _login_over_http(base: str, password: str, start: threading.Barrier | None = None) -> str:
    """One login on a connection of its own (a session of its own for the CSRF token);
    the page answered or where it redirected."""
    with requests.Session() as browser:
        headers = {"Host": "qunmen.test"}
        page = browser.get(f"{base}/admin/login", headers=headers, timeout=60)
        token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page.text)
        if start is not None:
            start.wait()  # all at once
        answer = browser.post(
            f"{base}/admin/login",
            data={"csrf_token": token.group(1), "email": ADMIN_EMAIL, "password": password},
            headers=headers,
            allow_redirects=False,
            timeout=60,
        )
        return answer.headers.get("Location") or answer.text


@pytest.mark.committing
def test_a_parallel_burst_checks_no_more_passwords_than_the_limit(
    tmp_path, _api_server, password_checks
):
    burst = 30
    with fresh_database(tmp_path, _api_server) as app:
        with app.app_context():
            core.auth.create_staff_user(ADMIN_EMAIL, "班长", ADMIN_PASSWORD, actor="test")
            db.session.commit()
        server, base = _serve(app)
        try:
            start = threading.Barrier(burst)
            with ThreadPoolExecutor(max_workers=burst) as pool:
                answers = list(
                    pool.map(lambda _: _login_over_http(base, "wrong guess", start), range(burst))
                )
            right = _login_over_http(base, ADMIN_PASSWORD)
        finally:
            server.shutdown()
            server.server_close()
        limit = LOGINS_PER_CLIENT_AND_ACCOUNT.tries
        checked = len(password_checks)
        print(f"burst of {burst} wrong passwords: {checked} checked, limit {limit}")
        assert checked <= limit
        assert sum("尝试次数过多" in answer for answer in answers) >= burst - limit
        assert "尝试次数过多" in right
        with app.app_context():
            failed = db.session.scalar(
                sa.select(sa.func.count()).where(AuditEntry.action == "staff.login_failed")
            )
            assert failed == checked
