"""One-time codes sent to a contact: members logging in to their page (and proving that
contact theirs by doing so), applicants proving the channel they joined with (the join's
code step), and members proving a new channel from their page.

The code is six digits, lives ten minutes, is stored only as an HMAC under the app's
secret key, and allows five checks, each claimed (one conditional UPDATE) before the code
is compared, so parallel guesses cannot exceed it. Codes are also limited per contact, per
client, per community (requests) and for the whole install (checks): see
:data:`CODE_REQUESTS` and :data:`CODE_CHECKS`.
Whether a contact belongs to a member is never told: a code is "sent" either way, and one
for a stranger can never succeed.

Every code message goes through :func:`send_code`.

A login code that comes back proves the contact: the member's sessions and links made from the
unproven claim end (their credential version moves on) and a WeChat bound before the proof
is unbound, since whoever held the claim may have bound their own.
"""

from __future__ import annotations

import hmac
import secrets
from contextlib import nullcontext
from datetime import datetime, timedelta

import sqlalchemy as sa
from flask import current_app
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_babel import pgettext
from sqlalchemy.orm.attributes import set_committed_value

from core import audit, outbox
from core.clock import utcnow
from core.db import db
from core.limits import Limit, TooManyTries, claim
from core.outbox import MessageKind
from core.security import new_token, same_secret
from membership.models import (
    SENDABLE_CONTACTS,
    Application,
    ApplicationStatus,
    Community,
    ContactKind,
    LoginCode,
    Member,
)
from membership.services import (
    Proof,
    contact_routes,
    find_member,
    normalise_contact,
    prove_application,
    prove_contact,
    speaking_to,
)

CODE_LIFETIME = timedelta(minutes=10)
MAX_ATTEMPTS = 5
#: Code requests: per contact, per client, per community (one community's flash join of a
#: thousand people does not stop the codes of another's).
CODE_REQUESTS = (
    Limit("code-request:contact", 3, timedelta(minutes=15)),
    Limit("code-request:client", 10, timedelta(minutes=15)),
    Limit("code-request:community", 1000, timedelta(minutes=15)),
)
#: Code checks, besides each code's own five: per client, for the whole install.
CODE_CHECKS = (
    Limit("code-check:client", 30, timedelta(minutes=15)),
    Limit("code-check:all", 3000, timedelta(minutes=15)),
)
#: The join's code step counts per community with the logins, per client as many as join
#: forms (:data:`membership.services.JOIN_SUBMISSIONS`: a flash re-entry brings about a
#: hundred people within minutes, many behind one carrier's address), and per contact
#: apart from the logins: anyone may type a member's phone into join forms, and that must
#: not use up the member's own login codes.
JOIN_CODE_REQUESTS = (
    Limit("code-request:join-contact", 3, timedelta(minutes=15)),
    Limit("code-request:join-client", 60, timedelta(minutes=15)),
    CODE_REQUESTS[2],
)
JOIN_CODE_CHECKS = (
    Limit("code-check:join-client", 180, timedelta(minutes=15)),
    CODE_CHECKS[1],
)
#: Contacts a code can be sent to (a WeChat ID cannot receive one).
SENDABLE = SENDABLE_CONTACTS
NOT_SENDABLE = _l("Codes go to a phone number or an e-mail address")

TOO_MANY = _l("Too many tries: try again in 15 minutes")


class LoginRefused(Exception):
    """The message says why, in the reader's language; nothing was granted."""


def _digest(code: str) -> str:
    """The HMAC-SHA256 a code is kept as. The digest is named, not passed as hashlib's
    function: given a function, :mod:`hmac` pads the key in Python before OpenSSL runs;
    named, OpenSSL does it all in one call (the same digest, in 0.08 ms, not 0.2, in
    cProfile)."""
    key = current_app.config["SECRET_KEY"].encode()
    return hmac.digest(key, b"qunmen.login-code." + code.encode(), "sha256").hex()


def code_request_checks(
    kind: ContactKind,
    value: str,
    *,
    community_id: int,
    client: str,
    limits: tuple[Limit, Limit, Limit] = CODE_REQUESTS,
) -> list[tuple[Limit, str]]:
    """The ``(limit, subject)`` pairs a code request for the contact from ``client`` to
    ``community_id`` claims (see :func:`core.limits.claim`): per contact, per client, per
    community, under ``limits`` (:data:`CODE_REQUESTS`, or :data:`JOIN_CODE_REQUESTS` for
    the join's code step). A page that claims other limits too claims them all at once."""
    contact = f"{kind.value}:{normalise_contact(kind, value)}"
    per_contact, per_client, per_community = limits
    return [(per_contact, contact), (per_client, client), (per_community, str(community_id))]


def claim_code_request(
    kind: ContactKind,
    value: str,
    *,
    community_id: int,
    client: str,
    now: datetime,
    limits: tuple[Limit, Limit, Limit] = CODE_REQUESTS,
) -> None:
    """Count a code request for the contact from ``client`` to ``community_id`` against
    ``limits`` (see :func:`code_request_checks`), flushed; the caller commits it whatever
    comes next. Raises :class:`LoginRefused` when one is reached."""
    checks = code_request_checks(
        kind, value, community_id=community_id, client=client, limits=limits
    )
    try:
        claim(checks, now=now)
    except TooManyTries as refusal:
        raise LoginRefused(TOO_MANY) from refusal


def send_code(
    community: Community,
    kind: ContactKind,
    value: str,
    code: str,
    *,
    member_id: int | None = None,
    now: datetime,
) -> int:
    """Queue the message carrying ``code`` to the contact (written by one statement; the
    worker sends it, and blanks it once sent); its outbox id. Every code message goes
    through here."""
    member = db.session.get(Member, member_id) if member_id is not None else None
    # To a member in their language; to someone not yet one, in the page's they asked on.
    with speaking_to(member) if member is not None else nullcontext():
        subject = _("%(community)s: your code", community=community.name)
        body = _("Your code is %(code)s; it works for 10 minutes.", code=code)
    return outbox.enqueue_row(
        MessageKind.LOGIN_CODE,
        contact_routes(kind, value),
        subject,
        body,
        params={"code": code},
        secret=True,
        member_id=member_id,
        now=now,
    )


#: Built once: every join form sent writes its code with it.
_INSERT_CODE = LoginCode.__table__.insert()


def _code_row(
    community_id: int,
    kind: ContactKind,
    value: str,
    *,
    member_id: int | None = None,
    application_id: int | None = None,
    now: datetime,
) -> tuple[dict, str]:
    """A new code for the contact: the row that keeps it (its HMAC only), and the code
    itself, to send."""
    code = f"{secrets.randbelow(10**6):06d}"
    row = {
        "public_id": new_token(16),
        "community_id": community_id,
        "member_id": member_id,
        "application_id": application_id,
        "contact_kind": kind,
        "contact_value": value,
        "code_hash": _digest(code),
        "created_at": now,
        "expires_at": now + CODE_LIFETIME,
        "attempts": 0,
    }
    return row, code


def _pending_code(
    community: Community, kind: ContactKind, value: str, *, member: Member | None, now: datetime
) -> tuple[LoginCode, str]:
    """A new code for the contact (added) and the code itself, to send."""
    row, code = _code_row(
        community.id, kind, value, member_id=member.id if member else None, now=now
    )
    pending = LoginCode(**row)
    db.session.add(pending)
    return pending, code


def request_code(
    community: Community, kind: ContactKind, value: str, *, now: datetime | None = None
) -> tuple[LoginCode, int | None]:
    """A pending login for the contact, and the outbox message carrying its code (None
    when the contact is nobody's: nothing is sent then). Flushed, not committed. The
    request was counted by :func:`claim_code_request` first."""
    now = now or utcnow()
    if kind not in SENDABLE:
        raise LoginRefused(NOT_SENDABLE)
    value = normalise_contact(kind, value)
    member = find_member(community.id, kind, value)
    login, code = _pending_code(community, kind, value, member=member, now=now)
    message_id = None
    if member is not None:
        message_id = send_code(community, kind, value, code, member_id=member.id, now=now)
        audit.record("member.login_code_sent", member, actor="prospect", now=now)
    return login, message_id


def request_application_code(application: Application, *, now: datetime | None = None) -> int:
    """A code proving the channel ``application`` was made with (the join's code step),
    and the outbox message carrying it: sent whoever the contact belongs to, so the page
    answers a member's contact like anyone's. Both written by statements built once (every
    join form runs them; nothing here needs the code as an object), not committed; the id
    of the message. The request was counted by :func:`claim_code_request` first."""
    now = now or utcnow()
    kind, value = application.contact_kind, application.contact_value
    if kind not in SENDABLE:
        raise LoginRefused(NOT_SENDABLE)
    row, code = _code_row(
        application.community_id, kind, value, application_id=application.id, now=now
    )
    db.session.connection().execute(_INSERT_CODE, row)
    return send_code(application.community, kind, value, code, now=now)


def request_channel_code(
    member: Member, kind: ContactKind, value: str, *, now: datetime | None = None
) -> tuple[LoginCode, int]:
    """A code proving a new channel for ``member`` (logged in, from their page), and the
    outbox message carrying it. Flushed, not committed; counted by
    :func:`claim_code_request` first."""
    now = now or utcnow()
    if kind not in SENDABLE:
        raise LoginRefused(NOT_SENDABLE)
    value = normalise_contact(kind, value)
    pending, code = _pending_code(member.community, kind, value, member=member, now=now)
    return pending, send_code(member.community, kind, value, code, now=now)


_LOGIN_CODES = LoginCode.__table__
#: Built once, on the table (no ORM statement handling; the loaded code is kept in step by
#: hand): every code checked runs them.
_COUNT_CHECK = (
    _LOGIN_CODES.update()
    .where(_LOGIN_CODES.c.id == sa.bindparam("login_id"), _LOGIN_CODES.c.attempts < MAX_ATTEMPTS)
    .values(attempts=_LOGIN_CODES.c.attempts + 1)
    .returning(_LOGIN_CODES.c.attempts)
)
_USE_CODE = (
    _LOGIN_CODES.update()
    .where(_LOGIN_CODES.c.id == sa.bindparam("login_id"), _LOGIN_CODES.c.used_at.is_(None))
    .values(used_at=sa.bindparam("now", type_=_LOGIN_CODES.c.used_at.type))
)


def claim_code_check(
    login: LoginCode,
    *,
    client: str,
    now: datetime,
    limits: tuple[Limit, Limit] = CODE_CHECKS,
) -> None:
    """Count one check of ``login``'s code before it is compared: against the code's own
    :data:`MAX_ATTEMPTS` with one conditional UPDATE (parallel checks queue on the row, so
    no more than five are ever compared) and against ``limits`` (:data:`CODE_CHECKS`, or
    :data:`JOIN_CODE_CHECKS`). Flushed; the caller commits it whatever comes next. Raises
    :class:`LoginRefused`."""
    if login.used_at is not None:
        raise LoginRefused(_("This code was used: ask for a new one"))
    if login.expires_at <= now:
        raise LoginRefused(_("This code has expired: ask for a new one"))
    per_client, overall = limits
    try:
        claim([(per_client, client), (overall, "")], now=now)
    except TooManyTries as refusal:
        raise LoginRefused(TOO_MANY) from refusal
    attempts = (
        db.session.connection().execute(_COUNT_CHECK, {"login_id": login.id}).scalar_one_or_none()
    )
    if attempts is None:
        raise LoginRefused(_("Too many tries: ask for a new code"))
    set_committed_value(login, "attempts", attempts)


def _use_code(login: LoginCode, code: str, *, now: datetime) -> None:
    """Use ``login`` if ``code`` is its code (the check was claimed by
    :func:`claim_code_check`). A used code never works again: its use is one conditional
    UPDATE, so two parallel right answers succeed once. Raises :class:`LoginRefused`."""
    if not same_secret(_digest(code.strip()), login.code_hash):
        raise LoginRefused(pgettext("login", "Wrong code"))
    used = db.session.connection().execute(_USE_CODE, {"login_id": login.id, "now": now}).rowcount
    if not used:
        raise LoginRefused(_("This code was used: ask for a new one"))
    set_committed_value(login, "used_at", now)


def verify_code(login: LoginCode, code: str, *, now: datetime | None = None) -> Member:
    """The member behind a pending login, if ``code`` is its code; the check was claimed
    by :func:`claim_code_check`. The first success proves the member's contact (see the
    module's docstring)."""
    now = now or utcnow()
    if login.member_id is None or login.application_id is not None:
        raise LoginRefused(pgettext("login", "Wrong code"))
    _use_code(login, code, now=now)
    member = db.session.get(Member, login.member_id)
    if member.contact_proven_at is None and (member.contact_kind, member.contact_value) == (
        login.contact_kind,
        login.contact_value,
    ):
        prove_contact(member, now=now)
    return member


def verify_application_code(login: LoginCode, code: str, *, now: datetime) -> Proof:
    """Prove the channel of the application ``code`` was sent for (the join's code step;
    the check was claimed by :func:`claim_code_check`): it goes on to payment, review or
    admission (see :func:`membership.services.prove_application`)."""
    application = db.session.get(Application, login.application_id or 0)
    if application is None:
        raise LoginRefused(pgettext("login", "Wrong code"))
    _use_code(login, code, now=now)
    if application.status is not ApplicationStatus.AWAITING_PROOF:
        return Proof(went_on=False)
    return prove_application(application, now=now)


def verify_channel_code(member: Member, login: LoginCode, code: str, *, now: datetime) -> None:
    """``member`` proves the new channel ``login`` was sent to (from their page): it becomes
    their contact, proven (see :func:`prove_contact`). A channel that is another member's
    stays theirs. Raises :class:`LoginRefused`."""
    if login.member_id != member.id or login.application_id is not None:
        raise LoginRefused(pgettext("login", "Wrong code"))
    _use_code(login, code, now=now)
    owner = find_member(member.community_id, login.contact_kind, login.contact_value)
    if owner is not None and owner.id != member.id:
        raise LoginRefused(_("This contact belongs to another member"))
    member.contact_kind, member.contact_value = login.contact_kind, login.contact_value
    prove_contact(member, now=now)
