"""The chat platforms a group can live on, what we know of each, and the adapters that
turn granting and revoking an invitation into what each platform needs: a removal task
for moderators of QR-joined groups (WeChat, QQ), Telegram's Bot API, WeCom's join ways
(:mod:`membership.wecom`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import requests
import sqlalchemy as sa
from flask import current_app
from flask_babel import LazyString
from flask_babel import lazy_gettext as _l

from core.db import db
from membership.models import Invitation, RemovalTask


@dataclass(frozen=True, slots=True)
class Platform:
    key: str
    label: LazyString  #: what people read, translated when shown
    #: Most members a group can hold.
    max_members: int
    #: Past this many members a group's QR code stops letting people in (WeChat: 200);
    #: None where joining does not depend on a QR code.
    qr_join_limit: int | None = None

    def seats(self, capacity: int) -> int:
        """How many invitations a group of this platform can really take."""
        return min(capacity, self.qr_join_limit) if self.qr_join_limit else capacity


PLATFORMS: dict[str, Platform] = {
    p.key: p
    for p in (
        Platform("wechat", _l("WeChat group"), 500, qr_join_limit=200),
        Platform("wecom", _l("WeCom group"), 500, qr_join_limit=200),
        Platform("qq", _l("QQ group"), 2000),
        Platform("telegram", _l("Telegram group"), 200_000),
    )
}


class PlatformError(Exception):
    """A platform refused a call or could not be reached; the worker retries."""


class PlatformAdapter(ABC):
    """Turns a grant or a revoke of an invitation into what the platform needs. Called by
    the worker after the commit, never inside a request that answers a payment provider."""

    @abstractmethod
    def grant(self, invitation: Invitation, *, now: datetime) -> None: ...

    @abstractmethod
    def revoke(self, invitation: Invitation, *, now: datetime) -> None: ...

    def admit(self, invitation: Invitation, *, now: datetime) -> None:  # noqa: B027
        """Let in the person who asked to join through the invitation (Telegram)."""

    def sync_chat(self, chat_id: str, *, now: datetime) -> None:
        """Read one group's members from the platform and apply them (WeCom)."""
        raise PlatformError(f"{type(self).__name__} cannot read a group's members")

    def reconcile(self, *, now: datetime) -> None:
        """Read every group the platform lists and apply their members (WeCom)."""
        raise PlatformError(f"{type(self).__name__} cannot list groups")


class ModeratedQrAdapter(PlatformAdapter):
    """WeChat and QQ groups (and WeCom's while the WeCom API is not configured): no API
    joins or removes anyone. Members join by the group's QR image or link; a revoke
    becomes a removal task for the moderators."""

    def grant(self, invitation: Invitation, *, now: datetime) -> None:
        """Nothing to call: the invitation shows the group's QR code."""

    def revoke(self, invitation: Invitation, *, now: datetime) -> None:
        if invitation.group_id is None:
            return
        exists = db.session.scalar(
            sa.select(RemovalTask.id).where(RemovalTask.invitation_id == invitation.id)
        )
        if exists is None:
            db.session.add(
                RemovalTask(invitation=invitation, group_id=invitation.group_id, created_at=now)
            )


class TelegramAdapter(PlatformAdapter):
    """Telegram groups through the Bot API. Each invitation gets its own invite link that
    asks to join; the first person to ask through it is let in (and remembered), so the
    link works once. On revoke the link is revoked and that person removed from the group
    (banned, then unbanned so they could come back later). The bot must be an
    administrator of the group and receive its updates at ``/webhooks/telegram``."""

    #: How long a one-use link stays valid.
    LINK_LIFETIME = timedelta(days=7)

    def __init__(self, token: str, api_base: str = "https://api.telegram.org") -> None:
        self._url = f"{api_base.rstrip('/')}/bot{token}/"

    def _call(self, method: str, **params) -> dict:
        try:
            answer = requests.post(self._url + method, json=params, timeout=10).json()
        except (requests.RequestException, ValueError) as error:
            raise PlatformError(f"Telegram {method}: {error}") from error
        if not answer.get("ok"):
            raise PlatformError(f"Telegram {method}: {answer.get('description')}")
        return answer["result"]

    def grant(self, invitation: Invitation, *, now: datetime) -> None:
        group = invitation.group
        if not group.telegram_chat_id:
            raise PlatformError(f"group {group.id} has no Telegram chat id")
        result = self._call(
            "createChatInviteLink",
            chat_id=group.telegram_chat_id,
            name=f"qunmen-{invitation.id}",
            creates_join_request=True,
            expire_date=int((now + self.LINK_LIFETIME).timestamp()),
        )
        invitation.join_link = result["invite_link"]
        invitation.join_link_expires_at = now + self.LINK_LIFETIME

    def admit(self, invitation: Invitation, *, now: datetime) -> None:
        self._call(
            "approveChatJoinRequest",
            chat_id=invitation.group.telegram_chat_id,
            user_id=invitation.telegram_user_id,
        )

    def revoke(self, invitation: Invitation, *, now: datetime) -> None:
        group = invitation.group
        if group is None or not group.telegram_chat_id:
            return
        if invitation.join_link:
            self._call(
                "revokeChatInviteLink",
                chat_id=group.telegram_chat_id,
                invite_link=invitation.join_link,
            )
        if invitation.telegram_user_id:
            self._call(
                "banChatMember", chat_id=group.telegram_chat_id, user_id=invitation.telegram_user_id
            )
            self._call(
                "unbanChatMember",
                chat_id=group.telegram_chat_id,
                user_id=invitation.telegram_user_id,
                only_if_banned=True,
            )


#: The key of WeCom customer groups, whose adapter lives in :mod:`membership.wecom`.
WECOM = "wecom"
#: Adapters defined in a platform's own module, by platform key: each made from the app's
#: settings, or None when the platform is not configured (registered by
#: :mod:`membership.wecom`, which needs this module).
ADAPTERS: dict[str, Callable[[Mapping[str, Any]], PlatformAdapter | None]] = {}


def adapter_for(platform: str) -> PlatformAdapter:
    """The adapter for a group's platform (Telegram needs TELEGRAM_BOT_TOKEN, WeCom its
    corp id and secret); without its settings, a QR code and removal tasks."""
    factory = ADAPTERS.get(platform)
    adapter = factory(current_app.config) if factory else None
    if adapter is not None:
        return adapter
    if platform == "telegram" and current_app.config.get("TELEGRAM_BOT_TOKEN"):
        return TelegramAdapter(
            current_app.config["TELEGRAM_BOT_TOKEN"],
            current_app.config.get("TELEGRAM_API_BASE") or "https://api.telegram.org",
        )
    return ModeratedQrAdapter()
