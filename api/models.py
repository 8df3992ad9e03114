"""API tokens and the answers kept for ``Idempotency-Key``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from flask_babel import lazy_gettext as _l
from sqlalchemy.orm import Mapped, mapped_column

from core.db import UTCDateTime, db

#: What a token may be allowed to do.
SCOPES = {
    "members:read": _l("Read members, memberships, invitations"),
    "members:write": _l("Grant and end memberships"),
    "orders:read": _l("Read orders and payments"),
    "perks:read": _l("Read perks and redemptions"),
    "perks:write": _l("Redeem perks and issue coupons for members"),
    "events:read": _l("Read the event feed"),
}


class ApiToken(db.Model):
    """A community's key to the API. Only the SHA-256 of its secret is kept: the secret is
    32 random bytes, so a fast hash is as strong as a slow one (slow hashes protect
    guessable passwords) and checking it costs microseconds on every request."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    community_id: Mapped[int] = mapped_column(sa.ForeignKey("communities.id"), index=True)
    #: Shown in lists and in the audit log (``token:<name>``).
    name: Mapped[str] = mapped_column(sa.String(60))
    #: The token's first characters, for telling tokens apart on the admin page.
    prefix: Mapped[str] = mapped_column(sa.String(16))
    #: SHA-256 of the whole token, hex.
    hash: Mapped[str] = mapped_column(sa.String(64), unique=True)
    #: Keys of :data:`SCOPES`.
    scopes: Mapped[list[str]] = mapped_column(sa.JSON)
    #: ``staff:<id>`` of who made it.
    created_by: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: Updated at most once a minute, to keep reads cheap.
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    @property
    def actor(self) -> str:
        """How this token appears in the audit log."""
        return f"token:{self.name}"


class IdempotentAnswer(db.Model):
    """The answer given to a POST with an ``Idempotency-Key``, given again for 24 hours to
    the same token's same key with the same body."""

    __tablename__ = "api_idempotency_keys"

    token_id: Mapped[int] = mapped_column(sa.ForeignKey("api_tokens.id"), primary_key=True)
    key: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    #: SHA-256 of the method, path and body: the same key with another request is a 422.
    request_hash: Mapped[str] = mapped_column(sa.String(64))
    status: Mapped[int]
    body: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
