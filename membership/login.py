"""Members logging in to their page with a one-time code sent to their contact, and
proving that contact theirs by doing so.

The code is six digits, lives ten minutes, is stored only as an HMAC under the app's
secret key, and allows five checks, each claimed (one conditional UPDATE) before the code
is compared, so parallel guesses cannot exceed it. Codes are also limited per contact, per
client and for the whole install (see :data:`CODE_REQUESTS` and :data:`CODE_CHECKS`).
Whether a contact belongs to a member is never told: a code is "sent" either way, and one
for a stranger can never succeed.

A code that comes back proves the contact: the member's sessions and links made from the
unproven claim end (their credential version moves on) and a WeChat bound before the proof
is unbound, since whoever held the claim may have bound their own.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime, timedelta

import sqlalchemy as sa
from flask import current_app

from core import audit, outbox
from core.clock import utcnow
from core.db import db
from core.limits import Limit, TooManyTries, claim
from core.outbox import MessageKind
from core.security import new_token, same_secret
from membership.models import Community, ContactKind, LoginCode, Member
from membership.services import contact_routes, find_member, normalise_contact

CODE_LIFETIME = timedelta(minutes=10)
MAX_ATTEMPTS = 5
#: Code requests: per contact, per client, for the whole install.
CODE_REQUESTS = (
    Limit("code-request:contact", 3, timedelta(minutes=15)),
    Limit("code-request:client", 10, timedelta(minutes=15)),
    Limit("code-request:all", 1000, timedelta(minutes=15)),
)
#: Code checks, besides each code's own five: per client, for the whole install.
CODE_CHECKS = (
    Limit("code-check:client", 30, timedelta(minutes=15)),
    Limit("code-check:all", 3000, timedelta(minutes=15)),
)
#: Contacts a code can be sent to (a WeChat ID cannot receive one).
SENDABLE = (ContactKind.PHONE, ContactKind.EMAIL)

TOO_MANY = "请求过于频繁，请15分钟后再试 · Too many tries: try again in 15 minutes"


class LoginRefused(Exception):
    """The message says why, Chinese first; nothing was granted."""


def _digest(code: str) -> str:
    key = current_app.config["SECRET_KEY"].encode()
    return hmac.new(key, b"qunmen.login-code." + code.encode(), hashlib.sha256).hexdigest()


def claim_code_request(kind: ContactKind, value: str, *, client: str, now: datetime) -> None:
    """Count a code request for the contact from ``client`` against :data:`CODE_REQUESTS`
    (flushed; the caller commits it whatever comes next). Raises :class:`LoginRefused`
    when one is reached."""
    contact = f"{kind.value}:{normalise_contact(kind, value)}"
    per_contact, per_client, overall = CODE_REQUESTS
    try:
        claim([(per_contact, contact), (per_client, client), (overall, "")], now=now)
    except TooManyTries as refusal:
        raise LoginRefused(TOO_MANY) from refusal


def request_code(
    community: Community, kind: ContactKind, value: str, *, now: datetime | None = None
) -> tuple[LoginCode, int | None]:
    """A pending login for the contact, and the outbox message carrying its code (None
    when the contact is nobody's: nothing is sent then). Flushed, not committed. The
    request was counted by :func:`claim_code_request` first."""
    now = now or utcnow()
    if kind not in SENDABLE:
        raise LoginRefused(
            "验证码只能发到手机号或邮箱 · Codes go to a phone number or an e-mail address"
        )
    value = normalise_contact(kind, value)
    member = find_member(community.id, kind, value)
    code = f"{secrets.randbelow(10**6):06d}"
    login = LoginCode(
        public_id=new_token(16),
        community_id=community.id,
        member_id=member.id if member else None,
        contact_kind=kind,
        contact_value=value,
        code_hash=_digest(code),
        created_at=now,
        expires_at=now + CODE_LIFETIME,
        attempts=0,
    )
    db.session.add(login)
    message_id = None
    if member is not None:
        message_id = outbox.enqueue(
            MessageKind.LOGIN_CODE,
            contact_routes(kind, value),
            f"{community.name} 登录验证码 · Login code",
            f"你的验证码是 {code}，10分钟内有效。Your code is {code}; it works for 10 minutes.",
            params={"code": code},
            secret=True,
            member_id=member.id,
            now=now,
        ).id
        audit.record("member.login_code_sent", member, actor="prospect", now=now)
    return login, message_id


def claim_code_check(login: LoginCode, *, client: str, now: datetime) -> None:
    """Count one check of ``login``'s code before it is compared: against the code's own
    :data:`MAX_ATTEMPTS` with one conditional UPDATE (parallel checks queue on the row, so
    no more than five are ever compared) and against :data:`CODE_CHECKS`. Flushed; the
    caller commits it whatever comes next. Raises :class:`LoginRefused`."""
    if login.used_at is not None:
        raise LoginRefused("验证码已使用，请重新获取 · This code was used: ask for a new one")
    if login.expires_at <= now:
        raise LoginRefused("验证码已过期，请重新获取 · This code has expired: ask for a new one")
    per_client, overall = CODE_CHECKS
    try:
        claim([(per_client, client), (overall, "")], now=now)
    except TooManyTries as refusal:
        raise LoginRefused(TOO_MANY) from refusal
    attempts = db.session.execute(
        sa.update(LoginCode)
        .where(LoginCode.id == login.id, LoginCode.attempts < MAX_ATTEMPTS)
        .values(attempts=LoginCode.attempts + 1)
        .returning(LoginCode.attempts)
    ).scalar_one_or_none()
    if attempts is None:
        raise LoginRefused("尝试次数过多，请重新获取 · Too many tries: ask for a new code")


def verify_code(login: LoginCode, code: str, *, now: datetime | None = None) -> Member:
    """The member behind a pending login, if ``code`` is its code; the check was claimed
    by :func:`claim_code_check`. The first success proves the member's contact (see the
    module's docstring). A used code never works again: its use is one conditional
    UPDATE, so two parallel right answers log in once."""
    now = now or utcnow()
    if login.member_id is None or not same_secret(_digest(code.strip()), login.code_hash):
        raise LoginRefused("验证码不正确 · Wrong code")
    used = db.session.execute(
        sa.update(LoginCode)
        .where(LoginCode.id == login.id, LoginCode.used_at.is_(None))
        .values(used_at=now)
    ).rowcount
    if not used:
        raise LoginRefused("验证码已使用，请重新获取 · This code was used: ask for a new one")
    member = db.session.get(Member, login.member_id)
    if member.contact_proven_at is None and (member.contact_kind, member.contact_value) == (
        login.contact_kind,
        login.contact_value,
    ):
        prove_contact(member, now=now)
    return member


def prove_contact(member: Member, *, now: datetime) -> None:
    """The member's contact came back with a code: it is theirs from now on. Everything
    made from the claim before ends: sessions and links (a new credential version) and a
    WeChat bound meanwhile (whoever held the claim may have bound their own)."""
    member.contact_proven_at = now
    member.credential_version += 1
    data = {"contact": member.contact_kind.value}
    if member.wechat_openid:
        member.wechat_openid = None
        data["wechat_unbound"] = True
    audit.record("member.contact_proven", member, actor=f"member:{member.id}", data=data, now=now)
