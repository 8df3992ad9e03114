"""The outbox: every message to a person (login codes, pay links, reminders, announcements,
notices), written in the transaction that decided to send it and sent afterwards by the
worker (``flask worker``, or the web process's thread in the demo) — never inside a web
request.

A message carries its *routes*: the channels that can reach the person, each with its
recipient (a WeChat openid, a phone, an e-mail address). When it is sent, the first route
whose channel is configured, in the order its kind prefers (:data:`CHANNEL_ORDER`), is
used and recorded. Channels: ``wechat`` (a template message from the official account),
``sms`` (the configured provider's template, see :mod:`core.sms`), ``email`` (SMTP, one
connection per batch). In the demo (``OUTBOX_TO_LOG``) a message no channel can take is
written to the log instead.

Sending is at least once: a message is claimed — marked sending, with a lease — and
committed before the provider is called; a worker killed mid-send leaves the lease to run
out, and the message is sent again, with the same idempotency id (its own id) for the
provider. Failures are retried with exponential backoff up to :data:`MAX_ATTEMPTS`, then
the message is FAILED, shown to admins, who can queue it again. A message marked
``secret`` (a login code) has its body and parameters blanked once it is sent or given up.
"""

from __future__ import annotations

import logging
import smtplib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from flask import current_app
from flask_babel import force_locale, lazy_pgettext
from flask_babel import lazy_gettext as _l
from sqlalchemy.orm import Mapped, mapped_column
from wechatpy import WeChatClient
from wechatpy.exceptions import WeChatException

from core import audit
from core.clock import utcnow
from core.db import UTCDateTime, db, enum_column, insert_for, session_dialect
from core.i18n import DEFAULT_LOCALE, LOCALES
from core.labels import enum_labels
from core.sms import sms_sender

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 8
#: How long a claimed message may take before another worker sends it again.
LEASE = timedelta(minutes=2)


class OutboxStatus(StrEnum):
    PENDING = "pending"
    SENDING = "sending"  #: claimed; sent again if its lease runs out first
    SENT = "sent"
    FAILED = "failed"


OUTBOX_STATUS_LABELS = enum_labels(
    OutboxStatus,
    {
        OutboxStatus.PENDING: lazy_pgettext("status", "Pending"),
        OutboxStatus.SENDING: lazy_pgettext("status", "Sending"),
        OutboxStatus.SENT: lazy_pgettext("status", "Sent"),
        OutboxStatus.FAILED: lazy_pgettext("status", "Failed"),
    },
)


class MessageKind(StrEnum):
    LOGIN_CODE = "login_code"
    PAY_LINK = "pay_link"
    REMINDER = "reminder"
    ANNOUNCEMENT = "announcement"
    NOTICE = "notice"


MESSAGE_KIND_LABELS = enum_labels(
    MessageKind,
    {
        MessageKind.LOGIN_CODE: _l("Login code"),
        MessageKind.PAY_LINK: _l("Pay link"),
        MessageKind.REMINDER: _l("Renewal reminder"),
        MessageKind.ANNOUNCEMENT: _l("Announcement"),
        MessageKind.NOTICE: _l("Notice"),
    },
)


class Channel(StrEnum):
    WECHAT = "wechat"
    SMS = "sms"
    EMAIL = "email"


CHANNEL_LABELS = enum_labels(
    Channel,
    {
        Channel.WECHAT: _l("WeChat"),
        Channel.SMS: _l("SMS"),
        Channel.EMAIL: _l("E-mail"),
    },
)

#: The channels each kind of message may take, best first. A login code never goes by
#: WeChat: it is what lets someone in who is not in WeChat.
CHANNEL_ORDER: dict[MessageKind, tuple[Channel, ...]] = {
    MessageKind.LOGIN_CODE: (Channel.SMS, Channel.EMAIL),
    MessageKind.PAY_LINK: (Channel.WECHAT, Channel.SMS, Channel.EMAIL),
    MessageKind.REMINDER: (Channel.WECHAT, Channel.SMS, Channel.EMAIL),
    MessageKind.ANNOUNCEMENT: (Channel.WECHAT, Channel.SMS, Channel.EMAIL),
    MessageKind.NOTICE: (Channel.WECHAT, Channel.SMS, Channel.EMAIL),
}


class OutboxMessage(db.Model):
    __tablename__ = "outbox_messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[MessageKind] = mapped_column(enum_column(MessageKind, 20))
    #: ``[[channel, recipient], …]``: every way to reach the person, as known when queued.
    routes: Mapped[list[list[str]]] = mapped_column(sa.JSON)
    #: The route that went, once sent.
    channel: Mapped[str | None] = mapped_column(sa.String(16))
    recipient: Mapped[str | None] = mapped_column(sa.String(254))
    subject: Mapped[str] = mapped_column(sa.String(200))
    #: The text for e-mail (and the demo's log); templates take ``params``.
    body: Mapped[str] = mapped_column(sa.Text)
    #: The values a provider's template is filled with (``code``, ``link`` …).
    params: Mapped[dict[str, str]] = mapped_column(sa.JSON, default=dict)
    #: Body and params hold a secret: blanked once sent or given up.
    secret: Mapped[bool] = mapped_column(default=False)
    #: The member it is for, when it is for one (announcements count progress by it).
    member_id: Mapped[int | None]
    #: One message per key, however often it is queued (an announcement run twice).
    dedupe_key: Mapped[str | None] = mapped_column(sa.String(120), unique=True)
    status: Mapped[OutboxStatus] = mapped_column(enum_column(OutboxStatus))
    attempts: Mapped[int] = mapped_column(default=0)
    #: When it is next due: its first try, a retry after backoff, or a lease's end.
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(sa.String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (sa.Index(None, "status", "next_attempt_at"),)


@contextmanager
def written_in(locale: str | None) -> Iterator[None]:
    """Text made inside this block (``gettext``, money) is in ``locale``: the language of
    the person a message is for (theirs, else their community's; None, or a locale with no
    catalog: zh_CN). Messages are composed where they are queued — in a request, the
    worker or a command — so this works in any app context, not only a request's."""
    with force_locale(locale if locale in LOCALES else DEFAULT_LOCALE):
        yield


def _message(
    kind: MessageKind,
    routes: list[list[str]],
    subject: str,
    body: str,
    *,
    params: dict[str, str] | None,
    secret: bool,
    member_id: int | None,
    now: datetime,
) -> dict[str, Any]:
    """The row of a message queued at ``now`` (see :func:`enqueue`)."""
    return {
        "kind": kind,
        "routes": routes,
        "subject": subject,
        "body": body,
        "params": params or {},
        "secret": secret,
        "member_id": member_id,
        "status": OutboxStatus.PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "created_at": now,
    }


def enqueue(
    kind: MessageKind,
    routes: list[list[str]],
    subject: str,
    body: str,
    *,
    params: dict[str, str] | None = None,
    secret: bool = False,
    member_id: int | None = None,
    now: datetime | None = None,
) -> OutboxMessage:
    """Queue a message (flushed, not committed): it leaves only if the transaction commits,
    and only through the worker."""
    message = OutboxMessage(
        **_message(
            kind,
            routes,
            subject,
            body,
            params=params,
            secret=secret,
            member_id=member_id,
            now=now or utcnow(),
        )
    )
    db.session.add(message)
    db.session.flush()
    return message


#: Built once: the join form queues a code with it on every application.
_INSERT_MESSAGE = OutboxMessage.__table__.insert()


def enqueue_row(
    kind: MessageKind,
    routes: list[list[str]],
    subject: str,
    body: str,
    *,
    params: dict[str, str] | None = None,
    secret: bool = False,
    member_id: int | None = None,
    now: datetime,
) -> int:
    """:func:`enqueue` by a statement built once, for a caller that needs the message's id
    only (no object, no flush): the same row, in the session's transaction. Its id."""
    row = _message(
        kind, routes, subject, body, params=params, secret=secret, member_id=member_id, now=now
    )
    return db.session.connection().execute(_INSERT_MESSAGE, row).inserted_primary_key[0]


def enqueue_many(rows: list[dict[str, Any]], *, now: datetime) -> int:
    """Queue many messages in one statement, skipping those whose ``dedupe_key`` is queued
    already; returns how many are new. Each row has ``kind``, ``routes``, ``subject``,
    ``body``, ``params``, ``member_id`` and ``dedupe_key``. Not committed."""
    if not rows:
        return 0
    insert = insert_for(session_dialect())
    values = [
        {
            "secret": False,
            "status": OutboxStatus.PENDING,
            "attempts": 0,
            "next_attempt_at": now,
            "created_at": now,
            **row,
        }
        for row in rows
    ]
    keys = list({row["dedupe_key"] for row in rows})
    # Counted before rather than RETURNING the new ids: with RETURNING, psycopg parses each
    # page's long statement anew (not cached), slower than the insert itself. Exact while
    # callers serialise queueing the same keys (perks lock what they announce).
    existing = sum(
        db.session.scalar(
            sa.select(sa.func.count()).where(OutboxMessage.dedupe_key.in_(keys[i : i + 1000]))
        )
        for i in range(0, len(keys), 1000)
    )
    table = OutboxMessage.__table__
    db.session.execute(insert(table).on_conflict_do_nothing(index_elements=["dedupe_key"]), values)
    return len(keys) - existing


#: Messages claimed together: one statement and one commit for the batch's claim.
BATCH = 20


def _claim(now: datetime, size: int) -> list[_Envelope]:
    """Claim up to ``size`` due messages — pending, or sending with their lease run out —
    for one try each, in one statement, committed before any is sent."""
    table = OutboxMessage.__table__
    due = (
        sa.select(table.c.id)
        .where(
            table.c.status.in_([OutboxStatus.PENDING, OutboxStatus.SENDING]),
            table.c.next_attempt_at <= now,
        )
        .order_by(table.c.next_attempt_at, table.c.id)
        .limit(size)
        .with_for_update(skip_locked=True)
    )
    claimed = db.session.execute(
        table.update()
        .where(table.c.id.in_(due.scalar_subquery()))
        .values(
            status=OutboxStatus.SENDING, attempts=table.c.attempts + 1, next_attempt_at=now + LEASE
        )
        .returning(
            table.c.id,
            table.c.kind,
            table.c.routes,
            table.c.subject,
            table.c.body,
            table.c.params,
            table.c.attempts,
        )
    ).all()
    db.session.commit()
    return sorted((_Envelope(*row) for row in claimed), key=lambda e: e.id)


@dataclass(frozen=True, slots=True)
class _Envelope:
    """What sending needs, copied out of the row so no transaction stays open meanwhile."""

    id: int
    kind: MessageKind
    routes: list[list[str]]
    subject: str
    body: str
    params: dict[str, str]
    attempts: int


class NoRoute(Exception):
    """No configured channel reaches the person: retrying would not help."""


class _Senders:
    """The channels configured in this app, for one batch of messages: the SMTP
    connection is opened at the batch's first e-mail and reused for the rest."""

    def __init__(self, stack: ExitStack) -> None:
        self._stack = stack
        self._smtp: smtplib.SMTP | None = None
        config = current_app.config
        self.sms = sms_sender(current_app)
        self.wechat = bool(config.get("WECHATPAY_APP_ID") and config.get("WECHATPAY_APP_SECRET"))
        self.email = bool(config.get("MAIL_SERVER"))

    def can(self, channel: str, kind: MessageKind) -> bool:
        if channel == Channel.WECHAT:
            return self.wechat and bool(wechat_template(kind))
        if channel == Channel.SMS:
            return self.sms is not None and bool(self.sms.templates.get(kind.value))
        return channel == Channel.EMAIL and self.email

    def send(self, channel: str, recipient: str, message: _Envelope) -> None:
        if channel == Channel.WECHAT:
            fields = {"first": {"value": message.subject}, "remark": {"value": message.body}}
            fields.update({name: {"value": value} for name, value in message.params.items()})
            try:
                _official_account().message.send_template(
                    recipient, wechat_template(message.kind), fields
                )
            except WeChatException as error:
                raise OSError(f"WeChat template message: {error.errmsg}") from error
        elif channel == Channel.SMS:
            self.sms.send(recipient, message.kind.value, message.params, str(message.id))
        else:
            self._mail().send_message(self._email(recipient, message))

    def _mail(self) -> smtplib.SMTP:
        if self._smtp is None:
            config = current_app.config
            smtp = self._stack.enter_context(
                smtplib.SMTP(config["MAIL_SERVER"], config["MAIL_PORT"], timeout=10)
            )
            if config.get("MAIL_USE_TLS"):
                smtp.starttls()
            if config.get("MAIL_USERNAME"):
                smtp.login(config["MAIL_USERNAME"], config["MAIL_PASSWORD"])
            self._smtp = smtp
        return self._smtp

    @staticmethod
    def _email(recipient: str, message: _Envelope) -> EmailMessage:
        email = EmailMessage()
        email["From"] = current_app.config["MAIL_FROM"]
        email["To"] = recipient
        email["Subject"] = message.subject
        # Our id, so a message sent again after a worker died is known for the same one.
        email["Message-ID"] = f"<outbox-{message.id}@qunmen>"
        email.set_content(message.body)
        return email

    def deliver(self, message: _Envelope) -> tuple[str, str]:
        """Send ``message`` by its best configured route; returns the route used. Raises
        :class:`NoRoute`, or OSError (SMTP's and the providers' errors included) to retry."""
        order = CHANNEL_ORDER[message.kind]
        routes = sorted(
            (r for r in message.routes if r[0] in order), key=lambda r: order.index(r[0])
        )
        for channel, recipient in routes:
            if self.can(channel, message.kind):
                self.send(channel, recipient, message)
                return channel, recipient
        if current_app.config.get("OUTBOX_TO_LOG"):
            # The demo only (production refuses OUTBOX_TO_LOG): read the code in the console.
            log.info(
                "outbox %s %s: %s | %s", message.id, message.routes, message.subject, message.body
            )
            return "log", routes[0][1] if routes else ""
        raise NoRoute(f"no configured channel reaches {[r[0] for r in message.routes]}")


def _backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(30 * 2 ** (attempts - 1), 3600))


_table = OutboxMessage.__table__
#: A secret's text blanked once it is sent or given up.
_BLANKED = {
    "body": sa.case((_table.c.secret, ""), else_=_table.c.body),
    "params": sa.case((_table.c.secret, sa.cast(sa.literal("{}"), sa.JSON)), else_=_table.c.params),
}
#: The outcome of a try that went: built once, as the worker records one per message.
_SENT = (
    _table.update()
    .where(_table.c.id == sa.bindparam("message_id"))
    .values(
        status=OutboxStatus.SENT,
        sent_at=sa.bindparam("now", type_=UTCDateTime),
        last_error=None,
        channel=sa.bindparam("route_channel"),
        recipient=sa.bindparam("route_recipient"),
        **_BLANKED,
    )
)


def _record(
    message: _Envelope,
    *,
    route: tuple[str, str] | None,
    error: str | None,
    final: bool,
    now: datetime,
) -> None:
    """Write down one try's outcome in one statement. Commits."""
    if route is not None:
        db.session.connection().execute(
            _SENT,
            {
                "message_id": message.id,
                "now": now,
                "route_channel": route[0],
                "route_recipient": route[1],
            },
        )
        db.session.commit()
        return
    if final or message.attempts >= MAX_ATTEMPTS:
        values = {"status": OutboxStatus.FAILED, "last_error": error[:500], **_BLANKED}
        audit.record(
            "message.failed",
            db.session.get(OutboxMessage, message.id),
            actor="system",
            data={"error": error[:200]},
            now=now,
        )
    else:
        values = {
            "status": OutboxStatus.PENDING,
            "last_error": error[:500],
            "next_attempt_at": now + _backoff(message.attempts),
        }
    db.session.execute(_table.update().where(_table.c.id == message.id).values(**values))
    db.session.commit()


def drain_outbox(*, now: datetime | None = None, limit: int = 100) -> int:
    """Send the due messages, up to ``limit``: claim a batch, commit, then send each and
    record its outcome at once (so a worker killed mid-batch sends again only the message
    it was sending). Called by the worker. Returns how many were tried."""
    tried = 0
    with ExitStack() as stack:
        senders = None
        while tried < limit:
            batch = _claim(now or utcnow(), min(BATCH, limit - tried))
            if not batch:
                break
            senders = senders or _Senders(stack)
            for message in batch:
                tried += 1
                route, error, final = None, None, False
                try:
                    route = senders.deliver(message)
                except NoRoute as refusal:
                    error, final = str(refusal), True
                except (OSError, smtplib.SMTPException) as failure:
                    error = str(failure) or type(failure).__name__
                    log.warning("outbox message %s failed: %s", message.id, error)
                _record(message, route=route, error=error, final=final, now=now or utcnow())
    return tried


def retry_message(message: OutboxMessage, *, actor: str, now: datetime | None = None) -> None:
    """An admin queues a failed message again, with its tries counted afresh."""
    now = now or utcnow()
    message.status, message.attempts, message.next_attempt_at = OutboxStatus.PENDING, 0, now
    audit.record("message.retried", message, actor=actor, now=now)


def wechat_template(kind: MessageKind) -> str | None:
    """The official account's template for this kind of message, if one is configured
    (``WECHAT_TEMPLATE_<KIND>``)."""
    return current_app.config.get(f"WECHAT_TEMPLATE_{kind.value.upper()}")


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
