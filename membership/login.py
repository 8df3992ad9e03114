"""Members logging in to their page with a one-time code sent to their contact.

The code is six digits, lives ten minutes, is stored only as an HMAC under the app's
secret key, and allows five tries. A contact may ask for three codes per quarter hour.
Whether a contact belongs to a member is never told: a code is "sent" either way, and one
for a stranger can never succeed.
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
from core.security import new_token, same_secret
from membership.models import Community, ContactKind, LoginCode, Member
from membership.services import find_member, normalise_contact

CODE_LIFETIME = timedelta(minutes=10)
MAX_ATTEMPTS = 5
RATE_WINDOW = timedelta(minutes=15)
MAX_CODES_PER_WINDOW = 3
#: Contacts a code can be sent to (a WeChat ID cannot receive one).
SENDABLE = (ContactKind.PHONE, ContactKind.EMAIL)


class LoginRefused(Exception):
    """The message says why, Chinese first; nothing was granted."""


def _digest(code: str) -> str:
    key = current_app.config["SECRET_KEY"].encode()
    return hmac.new(key, b"qunmen.login-code." + code.encode(), hashlib.sha256).hexdigest()


def request_code(
    community: Community, kind: ContactKind, value: str, *, now: datetime | None = None
) -> tuple[LoginCode, int | None]:
    """A pending login for the contact, and the outbox message carrying its code (None
    when the contact is nobody's: nothing is sent then). Flushed, not committed."""
    now = now or utcnow()
    if kind not in SENDABLE:
        raise LoginRefused(
            "验证码只能发到手机号或邮箱 · Codes go to a phone number or an e-mail address"
        )
    value = normalise_contact(kind, value)
    recent = db.session.scalar(
        sa.select(sa.func.count(LoginCode.id)).where(
            LoginCode.contact_kind == kind,
            LoginCode.contact_value == value,
            LoginCode.created_at > now - RATE_WINDOW,
        )
    )
    if recent >= MAX_CODES_PER_WINDOW:
        raise LoginRefused("请求过于频繁，请15分钟后再试 · Too many codes: try again later")
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
            kind.value,
            value,
            f"{community.name} 登录验证码 · Login code",
            f"你的验证码是 {code}，10分钟内有效。Your code is {code}; it works for 10 minutes.",
            now=now,
        ).id
        audit.record("member.login_code_sent", member, actor="prospect", now=now)
    return login, message_id


def verify_code(login: LoginCode, code: str, *, now: datetime | None = None) -> Member:
    """The member behind a pending login, if ``code`` is its code. Every wrong try counts
    (the caller commits it); a used, expired or exhausted code never works."""
    now = now or utcnow()
    if login.used_at is not None:
        raise LoginRefused("验证码已使用，请重新获取 · This code was used: ask for a new one")
    if login.expires_at <= now:
        raise LoginRefused("验证码已过期，请重新获取 · This code has expired: ask for a new one")
    if login.attempts >= MAX_ATTEMPTS:
        raise LoginRefused("尝试次数过多，请重新获取 · Too many tries: ask for a new code")
    login.attempts += 1
    if login.member_id is None or not same_secret(_digest(code.strip()), login.code_hash):
        raise LoginRefused("验证码不正确 · Wrong code")
    login.used_at = now
    member = db.session.get(Member, login.member_id)
    audit.record("member.logged_in", member, actor=f"member:{member.id}", now=now)
    return member
