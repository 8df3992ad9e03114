"""The outbox: messages to people (login codes, reminders, announcements), written in the
transaction that decided to send them and delivered after it commits, each once.

Channels: ``email`` goes through SMTP when ``MAIL_SERVER`` is set; every other case (the
demo, SMS and WeChat until their senders exist) is written to the log, so a demo user can
read their code in the console.
"""

from __future__ import annotations

import logging
import smtplib
from datetime import datetime
from email.message import EmailMessage
from enum import StrEnum

import sqlalchemy as sa
from flask import current_app
from sqlalchemy.orm import Mapped, mapped_column

from core.clock import utcnow
from core.db import UTCDateTime, db, enum_column

log = logging.getLogger(__name__)


class OutboxStatus(StrEnum):
    PENDING = "pending"
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


def deliver(message_id: int, *, now: datetime | None = None) -> OutboxStatus:
    """Send one committed message, once; record the outcome and commit."""
    message = db.session.scalar(
        sa.select(OutboxMessage).where(OutboxMessage.id == message_id).with_for_update()
    )
    if message is None or message.status is OutboxStatus.SENT:
        db.session.commit()
        return OutboxStatus.SENT
    message.attempts += 1
    try:
        _send(message)
    except (OSError, smtplib.SMTPException) as error:
        message.status = OutboxStatus.FAILED
        message.last_error = str(error)[:500]
        log.warning("outbox message %s to %s failed: %s", message.id, message.channel, error)
    else:
        message.status = OutboxStatus.SENT
        message.sent_at = now or utcnow()
    db.session.commit()
    return message.status


def _send(message: OutboxMessage) -> None:
    config = current_app.config
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
    # No sender for this channel (the demo, SMS, WeChat): the message goes to the log.
    log.info(
        "outbox %s to %s %s: %s | %s",
        message.id,
        message.channel,
        message.recipient,
        message.subject,
        message.body,
    )
