"""API tokens: made and revoked by a community's owner, checked on every API request.

A token reads ``qm_`` and 43 URL-safe characters (32 random bytes); it is shown once, when
made, and kept only as its SHA-256. Each request claims one try of the token's per-minute
limit (:mod:`core.limits`) and commits it at once, with the token's last use when that is a
minute old or more (so reads write at most once a minute each).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

import sqlalchemy as sa
from flask import current_app
from flask_babel import gettext as _

from api.models import SCOPES, ApiToken
from core import audit
from core.db import db, take_write_lock
from core.limits import Limit, claim
from core.security import new_token

TOKEN_PREFIX = "qm_"  # noqa: S105 (a prefix, not a secret)
#: Last use is written when the one stored is older than this.
LAST_USED_PRECISION = timedelta(minutes=1)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    community_id: int, name: str, scopes: list[str], *, actor: str, now: datetime
) -> tuple[ApiToken, str]:
    """Make a token; returns it and its secret, which is not kept. Raises ValueError for
    an unknown scope or an empty name."""
    unknown = set(scopes) - SCOPES.keys()
    if unknown or not scopes:
        raise ValueError(_("Unknown scopes: %(scopes)s", scopes=", ".join(sorted(unknown))))
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


def authenticate(header: str | None, *, now: datetime) -> ApiToken | None:
    """The live token an ``Authorization: Bearer qm_…`` header carries, or None. Claims
    one try of its rate limit (raising :class:`core.limits.TooManyTries`) and commits."""
    take_write_lock()  # in a GET too: the claim and the last use are written
    scheme, _, secret = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not secret.startswith(TOKEN_PREFIX):
        return None
    token = db.session.scalar(
        sa.select(ApiToken).where(ApiToken.hash == token_hash(secret.strip()))
    )
    if token is None or token.revoked_at is not None:
        return None
    limit = Limit("api", current_app.config["API_REQUESTS_PER_MINUTE"], timedelta(minutes=1))
    try:
        claim([(limit, str(token.id))], now=now)
    finally:
        if token.last_used_at is None or now - token.last_used_at >= LAST_USED_PRECISION:
            token.last_used_at = now
        db.session.commit()
    return token
