"""API tokens: made and revoked by a community's owner, checked on every API request.

A token reads ``qm_`` and 43 URL-safe characters (32 random bytes); it is shown once, when
made, and kept only as its SHA-256. Each request takes one try of the token's per-minute
limit. The tries are claimed from the database (:mod:`core.limits`, committed at once, so
every process and parallel request sees them) a block at a time: a sixtieth of the
minute's (at most :data:`MAX_BLOCK`; one for limits under 120 a minute, so those hold to
the request). A process uses its block's tries itself, within :data:`BLOCK_LIFETIME`, then
claims the next: most requests write nothing, where a claim each (a commit, a disk sync
on SQLite) cost a third of an API read. The blocks granted in a minute never add up to
more than the limit; a process's unused tries are lost (a busy token may be refused up to
a block per process early), and a block claimed at a minute's end may be used a second
into the next. The token's last use is written when it is a minute old or more.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta
from threading import Lock

import sqlalchemy as sa
from flask import current_app
from flask_babel import gettext as _

from api.models import SCOPES, ApiToken
from core import audit
from core.db import db, take_write_lock
from core.limits import Limit, TooManyTries, claim
from core.security import new_token

TOKEN_PREFIX = "qm_"  # noqa: S105 (a prefix, not a secret)
#: Last use is written when the one stored is older than this.
LAST_USED_PRECISION = timedelta(minutes=1)
#: The most tries a process claims at once, and how long it may use them.
MAX_BLOCK = 50
BLOCK_LIFETIME = timedelta(seconds=1)
RATE_WINDOW = timedelta(minutes=1)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    community_id: int, name: str, scopes: list[str], *, actor: str, now: datetime
) -> tuple[ApiToken, str]:
    """Make a token; returns it and its secret, which is not kept. Raises ValueError for
    an unknown scope or an empty name."""
    unknown = set(scopes) - SCOPES.keys()
    if unknown:
        raise ValueError(_("Unknown scopes: %(scopes)s", scopes=", ".join(sorted(unknown))))
    if not scopes:
        raise ValueError(_("Tick at least one scope"))
    if not name.strip():
        raise ValueError(_("A name is needed"))
    secret = TOKEN_PREFIX + new_token(32)
    token = ApiToken(
        community_id=community_id,
        name=name.strip(),
        prefix=secret[:10],
        hash=token_hash(secret),
        scopes=sorted(scopes),
        created_by=actor,
        created_at=now,
    )
    db.session.add(token)
    audit.record(
        "api_token.created",
        token,
        actor=actor,
        data={"name": token.name, "scopes": token.scopes},
        now=now,
    )
    return token, secret


def revoke_token(token: ApiToken, *, actor: str, now: datetime) -> None:
    """The token stops working at its next request."""
    if token.revoked_at is None:
        token.revoked_at = now
        audit.record("api_token.revoked", token, actor=actor, data={"name": token.name}, now=now)


def _take_try(token: ApiToken, *, now: datetime) -> bool:
    """Take one try of ``token``'s rate limit: from this process's block, or by claiming
    the next block (see the module's docstring). Raises
    :class:`core.limits.TooManyTries`. Whether it wrote to the session (a claim, to
    commit)."""
    per_minute = current_app.config["API_REQUESTS_PER_MINUTE"]
    block = min(MAX_BLOCK, max(1, per_minute // 60))
    # Per app (each test's tokens apart), by the token's hash (unique for ever, unlike ids).
    held = current_app.extensions.setdefault("qunmen.api_tries", {"lock": Lock(), "left": {}})
    with held["lock"]:
        left, until = held["left"].get(token.hash, (0, now))
        if left > 0 and now < until:
            held["left"][token.hash] = (left - 1, until)
            return False
    limit = Limit(f"api:{block}", per_minute // block, RATE_WINDOW)
    take_write_lock()  # in a GET too: the claim is written
    claim([(limit, str(token.id))], now=now)
    with held["lock"]:
        held["left"][token.hash] = (block - 1, now + BLOCK_LIFETIME)
    return True


def authenticate(header: str | None, *, now: datetime) -> ApiToken | None:
    """The live token an ``Authorization: Bearer qm_…`` header carries, or None. Takes
    one try of its rate limit (raising :class:`core.limits.TooManyTries`); commits what
    that and its last use wrote (a refused claim too: it counts)."""
    scheme, _, secret = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not secret.startswith(TOKEN_PREFIX):
        return None
    token = db.session.scalar(
        sa.select(ApiToken).where(ApiToken.hash == token_hash(secret.strip()))
    )
    if token is None or token.revoked_at is not None:
        return None
    try:
        wrote = _take_try(token, now=now)
    except TooManyTries:
        db.session.commit()
        raise
    if token.last_used_at is None or now - token.last_used_at >= LAST_USED_PRECISION:
        take_write_lock()  # in a GET too
        token.last_used_at = now
        wrote = True
    if wrote:
        db.session.commit()
    return token
