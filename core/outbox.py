"""The outbox: messages to people (login codes, reminders, announcements), written in the
transaction that decided to send them and delivered after it commits, each once.

Channels: ``email`` goes through SMTP when ``MAIL_SERVER`` is set; ``wechat_template``
(to a member's openid) through wechatpy's official-account client when the account and
``WECHAT_REMINDER_TEMPLATE_ID`` are configured; every other case (the demo, SMS, WeChat IDs)
fails (admins see it) — except in the demo (``OUTBOX_TO_LOG``), where it is written to the
log so a demo user can read their code in the console.
"""

from __future__ import annotations

import logging
import smtplib
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from enum import StrEnum

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.orm import Mapped, mapped_column
from wechatpy import WeChatClient
from wechatpy.exceptions import WeChatException

from core.clock import utcnow
from core.db import UTCDateTime, db, enum_column

log = logging.getLogger(__name__)


class OutboxStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"  #: claimed by a delivery that has not finished
    SENT = "sent"
    FAILED = "failed"


class OutboxMessage(db.Model):
    __tablename__ = "outbox_messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: ``email``, ``phone`` or ``wechat``: how the recipient is reached.
    channel: Mapped[str] = mapped_column(sa.String(16))
    recipient: Mapped[str] = mapped_column(sa.String(254))
    subject: Mapped[str] = mapped_column(sa.String(200))
    body: Mapped[str] = mapped_column(sa.Text)
    status: Mapped[OutboxStatus] = mapped_column(enum_column(OutboxStatus))
    attempts: Mapped[int] = mapped_column(default=0)
    last_error: Mapped[str | None] = mapped_column(sa.String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (sa.Index(None, "status", "id"),)


def enqueue(
    channel: str, recipient: str, subject: str, body: str, *, now: datetime | None = None
) -> OutboxMessage:
    """Queue a message (flushed, not committed): it leaves only if the transaction commits."""
    message = OutboxMessage(
        channel=channel,
        recipient=recipient,
        subject=subject,
        body=body,
        status=OutboxStatus.PENDING,
        created_at=now or utcnow(),
    )
    db.session.add(message)
    db.session.flush()
    return message


@dataclass(frozen=True, slots=True)
class _Envelope:
    """What sending needs, copied out of the row so no transaction stays open meanwhile."""

    id: int
    channel: str
    recipient: str
    subject: str
    body: str


def deliver(message_id: int, *, now: datetime | None = None) -> OutboxStatus:
    """Send one committed message, once. The message is claimed (its status set to
    sending) and committed before the sender is called, so no lock is held while a mail or
    WeChat server answers and two deliveries never send it twice; the outcome is recorded
    after. Commits."""
    claimed = db.session.execute(
        sa.update(OutboxMessage)
        .where(
            OutboxMessage.id == message_id,
            OutboxMessage.status.in_([OutboxStatus.PENDING, OutboxStatus.FAILED]),
        )
        .values(status=OutboxStatus.SENDING, attempts=OutboxMessage.attempts + 1)
    ).rowcount
    message = db.session.get(OutboxMessage, message_id)
    if not claimed or message is None:
        db.session.commit()
        return message.status if message is not None else OutboxStatus.SENT
    envelope = _Envelope(
        message.id, message.channel, message.recipient, message.subject, message.body
    )
    db.session.commit()
    try:
        _send(envelope)
    except (OSError, smtplib.SMTPException) as error:
        status, error_text = OutboxStatus.FAILED, str(error)[:500]
        log.warning("outbox message %s to %s failed: %s", envelope.id, envelope.channel, error)
    else:
        status, error_text = OutboxStatus.SENT, None
    message = db.session.get(OutboxMessage, message_id)
    message.status, message.last_error = status, error_text
    if status is OutboxStatus.SENT:
        message.sent_at = now or utcnow()
    db.session.commit()
    return status


class _OfficialAccount(WeChatClient):
    """wechatpy's official-account client, with its token call at the configured API
    address too (wechatpy hard-codes api.weixin.qq.com there)."""

    def fetch_access_token(self):
        return self._fetch_access_token(
            url=self.API_BASE_URL + "token",
            params={"grant_type": "client_credential", "appid": self.appid, "secret": self.secret},
        )


def _official_account() -> _OfficialAccount:
    """One client per app, so its access token is fetched once and reused until it ends."""
    extensions = current_app.extensions
    if "qunmen.wechat_client" not in extensions:
        config = current_app.config
        client = _OfficialAccount(
            config["WECHATPAY_APP_ID"], config["WECHATPAY_APP_SECRET"], timeout=10
        )
        if config.get("WECHAT_API_BASE"):
            client.API_BASE_URL = config["WECHAT_API_BASE"].rstrip("/") + "/cgi-bin/"
        extensions["qunmen.wechat_client"] = client
    return extensions["qunmen.wechat_client"]


def wechat_templates_enabled() -> bool:
    config = current_app.config
    return bool(
        config.get("WECHAT_REMINDER_TEMPLATE_ID")
        and config.get("WECHATPAY_APP_ID")
        and config.get("WECHATPAY_APP_SECRET")
    )


def _send(message: _Envelope) -> None:
    config = current_app.config
    if message.channel == "wechat_template" and wechat_templates_enabled():
        try:
            _official_account().message.send_template(
                message.recipient,
                config["WECHAT_REMINDER_TEMPLATE_ID"],
                {"first": {"value": message.subject}, "remark": {"value": message.body}},
            )
        except WeChatException as error:
            raise OSError(f"WeChat template message: {error}") from error
        return
    if message.channel == "email" and config.get("MAIL_SERVER"):
        email = EmailMessage()
        email["From"] = config["MAIL_FROM"]
        email["To"] = message.recipient
        email["Subject"] = message.subject
        email.set_content(message.body)
        with smtplib.SMTP(config["MAIL_SERVER"], config["MAIL_PORT"], timeout=10) as smtp:
            if config.get("MAIL_USE_TLS"):
                smtp.starttls()
            if config.get("MAIL_USERNAME"):
                smtp.login(config["MAIL_USERNAME"], config["MAIL_PASSWORD"])
            smtp.send_message(email)
        return
    if not config.get("OUTBOX_TO_LOG"):
        # Never write a message (a login code …) where log readers would see it, unless
        # this is the demo: without a sender the message fails, visibly.
        raise OSError(f"no sender for {message.channel} messages")
    log.info(
        "outbox %s to %s %s: %s | %s",
        message.id,
        message.channel,
        message.recipient,
        message.subject,
        message.body,
    )
