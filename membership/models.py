"""Communities and their tiers and groups; people who apply, become members, hold
memberships of tiers and invitations to groups."""

from __future__ import annotations

import re
from datetime import date, datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from flask_babel import lazy_gettext as _l
from flask_babel import lazy_pgettext
from sqlalchemy import event
from sqlalchemy.orm import Mapped, Session, mapped_column, relationship
from sqlalchemy.orm.attributes import set_committed_value

from core.clock import utcnow
from core.db import UTCDateTime, db, enum_column
from core.labels import enum_labels
from core.money import Money

#: A member-number pattern: literal text around one run of ``#``, one ``#`` per digit of
#: zero padding. ``####`` → ``0042``; ``LS-##`` → ``LS-07``.
NUMBER_PATTERN = re.compile(r"^([^#]{0,10})(#{1,8})([^#]{0,10})$")


def format_member_number(pattern: str, number: int) -> str:
    prefix, hashes, suffix = NUMBER_PATTERN.fullmatch(pattern).groups()
    return f"{prefix}{number:0{len(hashes)}d}{suffix}"


class Community(db.Model):
    __tablename__ = "communities"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(60))
    #: The join page lives at ``/join/<slug>``.
    slug: Mapped[str] = mapped_column(sa.String(40), unique=True)
    #: What the join page says to prospects.
    pitch: Mapped[str] = mapped_column(sa.Text, default="")
    #: The rules every applicant accepts.
    rules: Mapped[str] = mapped_column(sa.Text, default="")
    currency: Mapped[str] = mapped_column(sa.String(3), default="CNY")
    #: IANA name; times are shown in it.
    time_zone: Mapped[str] = mapped_column(sa.String(40), default="Asia/Shanghai")
    #: The language its pages speak to a visitor who has not chosen one (``core.i18n``);
    #: None: the visitor's browser decides.
    locale: Mapped[str | None] = mapped_column(sa.String(10), default="zh_CN")
    #: See :data:`NUMBER_PATTERN`.
    member_number_pattern: Mapped[str] = mapped_column(sa.String(30), default="####")
    #: The last member number given out; numbers are never reused.
    last_member_number: Mapped[int] = mapped_column(default=0)
    #: Staff (teachers, the committee) are numbered in a series of their own, e.g. LS-07.
    staff_number_pattern: Mapped[str] = mapped_column(sa.String(30), default="LS-##")
    last_staff_number: Mapped[int] = mapped_column(default=0)
    #: Days an approved applicant's personal pay link stays valid.
    pay_link_days: Mapped[int] = mapped_column(default=7)
    #: Members are reminded this many days before a membership with a term ends.
    reminder_days: Mapped[int] = mapped_column(default=7)
    #: A refunded order's coupon may be used again (otherwise the use stays consumed).
    coupons_back_on_refund: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    tiers: Mapped[list[Tier]] = relationship(
        back_populates="community", order_by="(Tier.sort_order, Tier.id)"
    )
    groups: Mapped[list[Group]] = relationship(back_populates="community", order_by="Group.id")
    questions: Mapped[list[ScreeningQuestion]] = relationship(
        back_populates="community", order_by="(ScreeningQuestion.position, ScreeningQuestion.id)"
    )

    @property
    def lobby_tier(self) -> Tier | None:
        """The free tier prospects wait in while they are screened, if there is one."""
        return next((t for t in self.tiers if t.is_lobby and t.active), None)

    @property
    def active_questions(self) -> list[ScreeningQuestion]:
        return [q for q in self.questions if q.active]


class TierKind(StrEnum):
    FREE = "free"
    PAID = "paid"


TIER_KIND_LABELS = enum_labels(
    TierKind,
    {
        TierKind.FREE: _l("Free"),
        TierKind.PAID: _l("Paid"),
    },
)


class TierAudience(StrEnum):
    EVERYONE = "everyone"  #: listed on the join page
    RETURNING = "returning"  #: only for former members, once they have identified themselves
    MEMBERS = "members"  #: only for current members (a new season's fee), once logged in


TIER_AUDIENCE_LABELS = enum_labels(
    TierAudience,
    {
        TierAudience.EVERYONE: _l("Everyone"),
        TierAudience.RETURNING: _l("Returning members"),
        TierAudience.MEMBERS: _l("Current members"),
    },
)

#: Which groups a tier's members are invited to, tried in ``position`` order.
tier_groups = sa.Table(
    "tier_groups",
    db.metadata,
    sa.Column("tier_id", sa.ForeignKey("tiers.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("group_id", sa.ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
)


class Tier(db.Model):
    __tablename__ = "tiers"

    id: Mapped[int] = mapped_column(primary_key=True)
    community_id: Mapped[int] = mapped_column(sa.ForeignKey("communities.id"), index=True)
    #: In URLs: ``/join/<community>/<code>``.
    code: Mapped[str] = mapped_column(sa.String(40))
    name: Mapped[str] = mapped_column(sa.String(60))
    #: What the tier includes, one point per line.
    includes: Mapped[str] = mapped_column(sa.Text, default="")
    kind: Mapped[TierKind] = mapped_column(enum_column(TierKind))
    #: Minor units of ``currency``; 0 for a free tier.
    price: Mapped[int] = mapped_column(default=0)
    currency: Mapped[str] = mapped_column(sa.String(3))
    #: None: lifetime membership.
    duration_days: Mapped[int | None]
    #: What a member pays to extend a membership of this tier; None: the tier's price.
    renewal_price: Mapped[int | None]
    audience: Mapped[TierAudience] = mapped_column(
        enum_column(TierAudience),
        default=TierAudience.EVERYONE,
    )
    active: Mapped[bool] = mapped_column(default=True)
    sort_order: Mapped[int] = mapped_column(default=0)
    #: Applicants answer the community's questions and wait for an admin's approval.
    requires_screening: Mapped[bool] = mapped_column(default=False)
    #: The free lobby: screened applicants are invited to its group while they wait.
    is_lobby: Mapped[bool] = mapped_column(default=False)

    community: Mapped[Community] = relationship(back_populates="tiers")
    groups: Mapped[list[Group]] = relationship(secondary=tier_groups, order_by="Group.id")

    __table_args__ = (
        sa.UniqueConstraint("community_id", "code"),
        sa.CheckConstraint("price >= 0", name="price_not_negative"),
        sa.CheckConstraint("(kind = 'free') = (price = 0)", name="free_means_zero"),
    )

    # Renewal as 知识星球 does it (``membership.renewal``): the renewal price by band, each
    # a percentage of :attr:`renewal_money`, and when the renew button appears.
    #: Renewing before the membership ends ("early").
    renewal_early_percent: Mapped[int] = mapped_column(default=100, server_default="100")
    #: Renewing within :attr:`renewal_grace_days` after it ended ("grace").
    renewal_grace_percent: Mapped[int] = mapped_column(default=100, server_default="100")
    #: Renewing later than that ("late").
    renewal_late_percent: Mapped[int] = mapped_column(default=100, server_default="100")
    #: Days after the end that renew at the grace percentage; 0: none.
    renewal_grace_days: Mapped[int] = mapped_column(default=0, server_default="0")
    #: The renew button appears this many days before the end, not a term early.
    renewal_window_days: Mapped[int] = mapped_column(default=30, server_default="30")

    @property
    def price_money(self) -> Money:
        return Money(self.price, self.currency)

    @property
    def renewal_money(self) -> Money:
        return Money(
            self.price if self.renewal_price is None else self.renewal_price, self.currency
        )

    @property
    def include_lines(self) -> list[str]:
        return [line.strip() for line in self.includes.splitlines() if line.strip()]


class Group(db.Model):
    """A chat group members are invited to."""

    __tablename__ = "groups"

    id: Mapped[int] = mapped_column(primary_key=True)
    community_id: Mapped[int] = mapped_column(sa.ForeignKey("communities.id"), index=True)
    name: Mapped[str] = mapped_column(sa.String(60))
    #: A key of :data:`membership.platforms.PLATFORMS`.
    platform: Mapped[str] = mapped_column(sa.String(20))
    #: Most live invitations the group takes.
    capacity: Mapped[int]
    #: How to join: an invite link, and/or the group's QR image.
    join_link: Mapped[str | None] = mapped_column(sa.String(500))
    qr_image: Mapped[bytes | None] = mapped_column(sa.LargeBinary, deferred=True)
    #: WeChat group QR codes live 7 days: admins are warned before this.
    qr_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Telegram groups: the chat id the bot manages (it must be an admin there).
    telegram_chat_id: Mapped[str | None] = mapped_column(sa.String(40))
    qr_mime: Mapped[str | None] = mapped_column(sa.String(40))
    #: WeCom customer groups (客户群): the chat id the API lists it by, and its owner's
    #: WeCom userid (the staff member who removes people: the API cannot).
    wecom_chat_id: Mapped[str | None] = mapped_column(sa.String(64), unique=True)
    wecom_owner: Mapped[str | None] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: Live invitations to the group (the seats taken), kept by :func:`_count_seats` on
    #: every flush that gives or takes one: finding a free seat reads this, not a count
    #: over every invitation the group ever had.
    seats_taken: Mapped[int] = mapped_column(default=0, server_default="0")

    community: Mapped[Community] = relationship(back_populates="groups")

    __table_args__ = (
        sa.CheckConstraint("capacity >= 0", name="capacity_not_negative"),
        sa.CheckConstraint("seats_taken >= 0", name="seats_taken_not_negative"),
    )

    def qr_valid(self, now: datetime) -> bool:
        """Whether the group's uploaded QR image may be shown: there is one and it has
        not expired (WeChat group QR codes live 7 days)."""
        return self.qr_mime is not None and (self.qr_expires_at is None or self.qr_expires_at > now)

    @property
    def qr_current(self) -> bool:
        """:meth:`qr_valid` now (for templates)."""
        return self.qr_valid(utcnow())


class ContactKind(StrEnum):
    WECHAT = "wechat"
    PHONE = "phone"
    EMAIL = "email"


CONTACT_KIND_LABELS = enum_labels(
    ContactKind,
    {
        ContactKind.WECHAT: _l("WeChat ID"),
        ContactKind.PHONE: _l("Phone"),
        ContactKind.EMAIL: _l("E-mail"),
    },
)

#: Contact kinds as a file spells them, in the catalogs' languages: the members export
#: writes them, the import reads them back (in any language, or the values).
CONTACT_KIND_WORDS = {
    ContactKind.WECHAT: lazy_pgettext("import contact kind", "wechat"),
    ContactKind.PHONE: lazy_pgettext("import contact kind", "phone"),
    ContactKind.EMAIL: lazy_pgettext("import contact kind", "email"),
}

#: Contacts a code or a message can be sent to (a WeChat ID cannot receive one).
SENDABLE_CONTACTS = (ContactKind.PHONE, ContactKind.EMAIL)


#: Where members without a number sort in lists: after every numbered one.
UNNUMBERED = 2_147_483_647

#: The members' columns a search for part of a name reads: nickname, contact, WeChat ID.
#: Each has a trigram index, which the migrations build (their kinds are beyond what a
#: model declares; names starting with ``search_`` are theirs, see
#: :func:`core.db.modelled`): on PostgreSQL a ``pg_trgm`` GIN index per column, on SQLite
#: the FTS5 table :data:`MEMBER_SEARCH` (``trigram`` tokenizer), kept by triggers on
#: ``members``.
SEARCHED_MEMBER_COLUMNS = ("display_name", "contact_value", "wechat_id")
MEMBER_SEARCH = "search_members"


class Member(db.Model):
    """A person admitted to a community. Numbered from their first paid membership on."""

    __tablename__ = "members"

    id: Mapped[int] = mapped_column(primary_key=True)
    community_id: Mapped[int] = mapped_column(sa.ForeignKey("communities.id"), index=True)
    display_name: Mapped[str] = mapped_column(sa.String(40))
    #: The contact they joined with: who they are in the community (one person, one
    #: member) and, once proven, where their codes and messages go.
    contact_kind: Mapped[ContactKind] = mapped_column(enum_column(ContactKind))
    contact_value: Mapped[str] = mapped_column(sa.String(254))
    #: What moderators recognise them by in the group (a WeChat ID or a nickname), as they
    #: typed it: never a credential and never a channel.
    wechat_id: Mapped[str | None] = mapped_column(sa.String(64))
    #: The language they chose with the switch: their pages and what is sent to them.
    locale: Mapped[str | None] = mapped_column(sa.String(10))
    #: In join order, per community; never reused. None until a paid membership.
    number: Mapped[int | None]
    #: ``number`` in the community's pattern when it was given, e.g. ``0042``.
    number_label: Mapped[str | None] = mapped_column(sa.String(40))
    #: A staff number, in the community's staff series (``LS-07``), for teachers and the
    #: committee; apart from the member numbers.
    staff_number: Mapped[int | None]
    staff_number_label: Mapped[str | None] = mapped_column(sa.String(40))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: When admins last saw them take part; a purge ends members not active since a date.
    last_active_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Their WeChat openid under our official account, once verified by WeChat's OAuth
    #: (a JSAPI payment, or binding from their page): they can log in inside WeChat.
    wechat_openid: Mapped[str | None] = mapped_column(sa.String(64))
    #: When the contact was proven theirs (a code sent to it came back). Until then it is
    #: only a claim: nobody reaches ``/me`` through it.
    contact_proven_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Signed into every member session and member link; bumping it ("log out everywhere",
    #: proving the contact) ends them all.
    credential_version: Mapped[int] = mapped_column(default=1, server_default="1")

    community: Mapped[Community] = relationship()
    memberships: Mapped[list[Membership]] = relationship(
        back_populates="member", order_by="Membership.id"
    )
    invitations: Mapped[list[Invitation]] = relationship(
        back_populates="member", order_by="Invitation.id"
    )

    __table_args__ = (
        sa.UniqueConstraint("community_id", "number"),
        sa.UniqueConstraint("community_id", "staff_number"),
        sa.UniqueConstraint("community_id", "wechat_openid"),
        sa.Index(None, "community_id", "contact_kind", "contact_value"),
        # Serves LISTED_ORDER: a page of a community's members without sorting them all.
        sa.Index(
            "ix_members_listed", "community_id", sa.text(f"coalesce(number, {UNNUMBERED})"), "id"
        ),
        # A number as the search box takes it (``0042``): one row, not a pass over them all.
        sa.Index(None, "community_id", "number_label"),
    )

    @property
    def is_proven(self) -> bool:
        """Whether this member has a credential beyond a typed contact: a contact proven
        by a code, or a WeChat openid from WeChat's OAuth."""
        return self.contact_proven_at is not None or self.wechat_openid is not None

    @property
    def is_reachable(self) -> bool:
        """Whether we can send them something that reaches them: a WeChat openid, or a
        phone or e-mail proven by a code (see :meth:`reachable`)."""
        return self.wechat_openid is not None or (
            self.contact_proven_at is not None and self.contact_kind in SENDABLE_CONTACTS
        )

    @classmethod
    def reachable(cls) -> sa.ColumnElement[bool]:
        """:attr:`is_reachable` in SQL."""
        return sa.or_(
            cls.wechat_openid.is_not(None),
            sa.and_(cls.contact_proven_at.is_not(None), cls.contact_kind.in_(SENDABLE_CONTACTS)),
        )

    def holds(self, tier_id: int) -> bool:
        """Whether a current membership of the tier is theirs."""
        return any(
            m.tier_id == tier_id and m.status in CURRENT_MEMBERSHIP_STATUSES
            for m in self.memberships
        )

    def current_membership(self) -> Membership | None:
        return next((m for m in self.memberships if m.status in CURRENT_MEMBERSHIP_STATUSES), None)

    @property
    def may_reenter(self) -> bool:
        """A numbered member whose access lapsed (expired or purged) and who holds none
        now: they may come back at the re-entry price."""
        return (
            self.number is not None
            and self.current_membership() is None
            and any(m.status in LAPSED_MEMBERSHIP_STATUSES for m in self.memberships)
        )


class MembershipStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"  #: its payment is disputed; access back if the dispute is won
    ENDED = "ended"  #: refunded, or the dispute was lost
    EXPIRED = "expired"  #: its days ran out
    PURGED = "purged"  #: ended by a purge of inactive members


MEMBERSHIP_STATUS_LABELS = enum_labels(
    MembershipStatus,
    {
        MembershipStatus.ACTIVE: lazy_pgettext("status", "Active"),
        MembershipStatus.SUSPENDED: lazy_pgettext("status", "Suspended (payment disputed)"),
        MembershipStatus.ENDED: lazy_pgettext("status", "Ended"),
        MembershipStatus.EXPIRED: lazy_pgettext("status", "Expired"),
        MembershipStatus.PURGED: lazy_pgettext("status", "Purged"),
    },
)

#: Memberships after which a member may come back at a re-entry price.
LAPSED_MEMBERSHIP_STATUSES = (MembershipStatus.EXPIRED, MembershipStatus.PURGED)
#: Memberships that are still the member's (access now, or pending a dispute).
CURRENT_MEMBERSHIP_STATUSES = (MembershipStatus.ACTIVE, MembershipStatus.SUSPENDED)


class Membership(db.Model):
    """A member's right to a tier for a while (or for life)."""

    __tablename__ = "memberships"

    id: Mapped[int] = mapped_column(primary_key=True)
    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"), index=True)
    tier_id: Mapped[int] = mapped_column(sa.ForeignKey("tiers.id"), index=True)
    #: Keeps its old value when changed (``active_history``), for the daily figures' count
    #: of paying members (see :mod:`membership.figures`).
    status: Mapped[MembershipStatus] = mapped_column(
        enum_column(MembershipStatus), active_history=True
    )
    starts_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: None: for life.
    ends_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The order that paid for it; None for a free tier.
    order_id: Mapped[int | None] = mapped_column(sa.ForeignKey("orders.id"), unique=True)
    #: The end date the member was last reminded of (each end is reminded of once).
    reminded_for_end_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    member: Mapped[Member] = relationship(back_populates="memberships")
    tier: Mapped[Tier] = relationship()

    #: Current memberships past their end (the few the worker has not swept yet) and those
    #: ending soon, for the dashboard, without reading every membership.
    __table_args__ = (sa.Index(None, "status", "ends_at"),)


class ApplicationStatus(StrEnum):
    PENDING_REVIEW = "pending_review"  #: answers in, waiting for an admin
    APPROVED = "approved"  #: may pay through their personal link until it expires
    REJECTED = "rejected"
    #: the applicant must prove a channel first (a code, or WeChat's OAuth); nothing is
    #: paid, reviewed or admitted meanwhile
    AWAITING_PROOF = "awaiting_proof"
    AWAITING_PAYMENT = "awaiting_payment"
    ADMITTED = "admitted"
    #: a paid renewal whose money went back (a refund, a chargeback): the days it added
    #: were taken back (given again if a dispute is won)
    TAKEN_BACK = "taken_back"


APPLICATION_STATUS_LABELS = enum_labels(
    ApplicationStatus,
    {
        ApplicationStatus.PENDING_REVIEW: lazy_pgettext("status", "Waiting for review"),
        ApplicationStatus.APPROVED: lazy_pgettext("status", "Approved"),
        ApplicationStatus.REJECTED: lazy_pgettext("status", "Rejected"),
        ApplicationStatus.AWAITING_PROOF: lazy_pgettext("status", "Contact to prove"),
        ApplicationStatus.AWAITING_PAYMENT: lazy_pgettext("status", "Waiting for payment"),
        ApplicationStatus.ADMITTED: lazy_pgettext("status", "Admitted"),
        ApplicationStatus.TAKEN_BACK: lazy_pgettext("status", "Renewal taken back"),
    },
)


class Application(db.Model):
    """A prospect's request to join a tier: who they are and, for a paid tier, the order."""

    __tablename__ = "applications"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: Unguessable; the applicant's own status page.
    public_id: Mapped[str] = mapped_column(sa.String(32), unique=True)
    #: From the join form; a second submission of the same form finds this application.
    submission_key: Mapped[str] = mapped_column(sa.String(64), unique=True)
    community_id: Mapped[int] = mapped_column(sa.ForeignKey("communities.id"), index=True)
    tier_id: Mapped[int] = mapped_column(sa.ForeignKey("tiers.id"))
    display_name: Mapped[str] = mapped_column(sa.String(40))
    contact_kind: Mapped[ContactKind] = mapped_column(enum_column(ContactKind))
    contact_value: Mapped[str] = mapped_column(sa.String(254))
    #: See :attr:`Member.wechat_id`.
    wechat_id: Mapped[str | None] = mapped_column(sa.String(64))
    #: When a code sent to the contact came back (the join's code step).
    contact_proven_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The openid WeChat's silent OAuth gave the browser that applied: their proof inside
    #: WeChat, linked to the member at admission.
    wechat_openid: Mapped[str | None] = mapped_column(sa.String(64))
    rules_accepted_at: Mapped[datetime] = mapped_column(UTCDateTime)
    status: Mapped[ApplicationStatus] = mapped_column(enum_column(ApplicationStatus, 24))
    order_id: Mapped[int | None] = mapped_column(sa.ForeignKey("orders.id"), unique=True)
    member_id: Mapped[int | None] = mapped_column(sa.ForeignKey("members.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: Screening answers by question id (as text): a string, or a list for multiple choice.
    answers: Mapped[dict[str, Any]] = mapped_column(sa.JSON, default=dict)
    reviewed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reviewed_by: Mapped[str | None] = mapped_column(sa.String(64))
    #: Why it was rejected, as the applicant is told.
    review_reason: Mapped[str | None] = mapped_column(sa.String(300))
    #: A renewal: the membership it extends once paid (instead of a new membership).
    renews_membership_id: Mapped[int | None] = mapped_column(sa.ForeignKey("memberships.id"))
    #: A paid renewal: the days it added to the membership (what its refund takes back).
    #: None before it is paid, and for one that added none (put before the admins instead).
    renewal_days: Mapped[int | None] = mapped_column(sa.Integer)
    #: The coupon code a prospect typed with an application whose channel was not proven
    #: yet: checked then, applied to its order (its use reserved) once the channel is
    #: proven, so a stranger's unproven applications hold no coupon's uses.
    coupon_code: Mapped[str | None] = mapped_column(sa.String(40))
    #: The approved applicant's personal pay link, and until when it works.
    pay_token: Mapped[str | None] = mapped_column(sa.String(48), unique=True)
    pay_link_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: When its status page logged the browser that made it in as its new member (once).
    status_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    community: Mapped[Community] = relationship()
    tier: Mapped[Tier] = relationship()
    member: Mapped[Member | None] = relationship()
    renews: Mapped[Membership | None] = relationship()


class InvitationStatus(StrEnum):
    WAITING = "waiting"  #: every group of the tier is full; admins must add room
    ISSUED = "issued"  #: the holder may join the group
    JOINED = "joined"
    REVOKED = "revoked"
    EXPIRED = "expired"


INVITATION_STATUS_LABELS = enum_labels(
    InvitationStatus,
    {
        InvitationStatus.WAITING: lazy_pgettext("status", "Waiting for a seat"),
        InvitationStatus.ISSUED: lazy_pgettext("status", "Invited"),
        InvitationStatus.JOINED: lazy_pgettext("status", "Joined"),
        InvitationStatus.REVOKED: lazy_pgettext("status", "Revoked"),
        InvitationStatus.EXPIRED: lazy_pgettext("status", "Expired"),
    },
)

#: Invitations that hold a seat in their group.
LIVE_INVITATION_STATUSES = (InvitationStatus.ISSUED, InvitationStatus.JOINED)


class Invitation(db.Model):
    """One member's right to one group, for one membership."""

    __tablename__ = "invitations"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: Unguessable; the only key to the group's QR image or link.
    token: Mapped[str] = mapped_column(sa.String(48), unique=True)
    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"), index=True)
    membership_id: Mapped[int] = mapped_column(sa.ForeignKey("memberships.id"), index=True)
    #: None while waiting for room. Both this and ``status`` keep their old value when
    #: changed (``active_history``), for the seat counter (see :func:`_count_seats`).
    group_id: Mapped[int | None] = mapped_column(
        sa.ForeignKey("groups.id"), index=True, active_history=True
    )
    status: Mapped[InvitationStatus] = mapped_column(
        enum_column(InvitationStatus), active_history=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    issued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: A link for this invitation alone (Telegram's one-use invite link), once the
    #: platform made it; otherwise the group's QR image or link is shown.
    join_link: Mapped[str | None] = mapped_column(sa.String(500))
    #: When that link stops working (Telegram's ``expire_date``); the member may ask for a
    #: new one from their page after that.
    join_link_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Telegram: the user who asked to join through the link (the first one is let in,
    #: and removed again on revoke).
    telegram_user_id: Mapped[int | None] = mapped_column(sa.BigInteger)
    #: WeCom: the join way (「加入群聊」) made for this invitation alone, its QR code, and
    #: the external userid of the person WeCom reports joined with it.
    wecom_config_id: Mapped[str | None] = mapped_column(sa.String(64))
    wecom_qr_url: Mapped[str | None] = mapped_column(sa.String(500))
    wecom_user_id: Mapped[str | None] = mapped_column(sa.String(64), index=True)

    member: Mapped[Member] = relationship(back_populates="invitations")
    membership: Mapped[Membership] = relationship()
    group: Mapped[Group | None] = relationship()

    #: The few waiting ones are counted on every dashboard.
    __table_args__ = (sa.Index(None, "status"),)

    @property
    def is_valid(self) -> bool:
        return self.status in LIVE_INVITATION_STATUSES and self.group is not None

    def link_expired(self, now: datetime) -> bool:
        """Whether its own join link ran out before anyone used it: a new one may be
        made."""
        return (
            self.status is InvitationStatus.ISSUED
            and self.join_link_expires_at is not None
            and self.join_link_expires_at <= now
        )

    @property
    def link_expired_now(self) -> bool:
        """:meth:`link_expired` now (for templates)."""
        return self.link_expired(utcnow())


class LoginCode(db.Model):
    """A one-time code sent to a contact: a member's, to log in to their page (or to prove
    a new channel of theirs), or an application's, to prove the applicant's channel."""

    __tablename__ = "login_codes"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: Unguessable; names the pending login in its URL.
    public_id: Mapped[str] = mapped_column(sa.String(32), unique=True)
    community_id: Mapped[int] = mapped_column(sa.ForeignKey("communities.id"))
    #: None when nobody has that contact: the code can never succeed, and the asker is
    #: not told whether the contact belongs to a member.
    member_id: Mapped[int | None] = mapped_column(sa.ForeignKey("members.id"))
    #: The application whose channel the code proves (the join's code step); None for a
    #: login.
    application_id: Mapped[int | None] = mapped_column(sa.ForeignKey("applications.id"))
    contact_kind: Mapped[ContactKind] = mapped_column(enum_column(ContactKind))
    contact_value: Mapped[str] = mapped_column(sa.String(254))
    #: HMAC of the code under the app's secret key; the code itself is never stored.
    code_hash: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    attempts: Mapped[int] = mapped_column(default=0)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (sa.Index(None, "contact_kind", "contact_value", "created_at"),)


class Purge(db.Model):
    """One purge of inactive members ("大清洗"): who ran it, the cut-off, how many."""

    __tablename__ = "purges"

    id: Mapped[int] = mapped_column(primary_key=True)
    community_id: Mapped[int] = mapped_column(sa.ForeignKey("communities.id"))
    #: Members not active since this time lost their access.
    inactive_since: Mapped[datetime] = mapped_column(UTCDateTime)
    run_by: Mapped[str] = mapped_column(sa.String(64))
    run_at: Mapped[datetime] = mapped_column(UTCDateTime)
    purged_count: Mapped[int]

    __table_args__ = (sa.UniqueConstraint("community_id", "inactive_since"),)


class QuestionKind(StrEnum):
    TEXT = "text"
    SINGLE = "single"  #: one of the choices
    MULTIPLE = "multiple"  #: any of the choices


QUESTION_KIND_LABELS = enum_labels(
    QuestionKind,
    {
        QuestionKind.TEXT: _l("Text"),
        QuestionKind.SINGLE: _l("One choice"),
        QuestionKind.MULTIPLE: _l("Several choices"),
    },
)


class ScreeningQuestion(db.Model):
    """A question prospects answer when they apply to a tier that requires screening."""

    __tablename__ = "screening_questions"

    id: Mapped[int] = mapped_column(primary_key=True)
    community_id: Mapped[int] = mapped_column(sa.ForeignKey("communities.id"), index=True)
    position: Mapped[int] = mapped_column(default=0)
    prompt: Mapped[str] = mapped_column(sa.String(300))
    kind: Mapped[QuestionKind] = mapped_column(enum_column(QuestionKind))
    #: For choice questions: one choice per line.
    choices: Mapped[str] = mapped_column(sa.Text, default="")
    required: Mapped[bool] = mapped_column(default=True)
    active: Mapped[bool] = mapped_column(default=True)
    #: An auto-approve rule: applications answering this (one of the choices) are approved
    #: without waiting, when every question with a rule is answered so.
    auto_approve_answer: Mapped[str | None] = mapped_column(sa.String(300))

    community: Mapped[Community] = relationship(back_populates="questions")

    def accepts(self, answer: object) -> bool:
        """Whether ``answer`` satisfies this question's auto-approve rule."""
        if isinstance(answer, list):
            return self.auto_approve_answer in answer
        return answer == self.auto_approve_answer

    @property
    def choice_list(self) -> list[str]:
        return [line.strip() for line in self.choices.splitlines() if line.strip()]


class TaskAction(StrEnum):
    GRANT = "grant"
    REVOKE = "revoke"
    ADMIT = "admit"  #: let in the person who asked to join through the invitation
    #: read one WeCom group's members again (``chat_id``), after its change callback
    SYNC = "sync"
    #: list every WeCom group and read each one's members (what callbacks missed)
    RECONCILE = "reconcile"


TASK_ACTION_LABELS = enum_labels(
    TaskAction,
    {
        TaskAction.GRANT: _l("Invite"),
        TaskAction.REVOKE: _l("Remove"),
        TaskAction.ADMIT: _l("Let in"),
        TaskAction.SYNC: _l("Sync"),
        TaskAction.RECONCILE: _l("Reconcile"),
    },
)


class TaskStatus(StrEnum):
    PENDING = "pending"  #: due at ``next_attempt_at``
    DONE = "done"
    FAILED = "failed"  #: gave up after the last retry; admins see it and can retry


TASK_STATUS_LABELS = enum_labels(
    TaskStatus,
    {
        TaskStatus.PENDING: lazy_pgettext("status", "Pending"),
        TaskStatus.DONE: lazy_pgettext("status", "Done"),
        TaskStatus.FAILED: lazy_pgettext("status", "Failed"),
    },
)


class PlatformTask(db.Model):
    """A call to a chat platform, queued in the transaction that decided it and made after
    the commit by the worker, with retries and backoff."""

    __tablename__ = "platform_tasks"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: None for the tasks about a whole group or platform (:attr:`TaskAction.SYNC`,
    #: :attr:`TaskAction.RECONCILE`).
    invitation_id: Mapped[int | None] = mapped_column(sa.ForeignKey("invitations.id"), index=True)
    #: :attr:`TaskAction.SYNC`: the WeCom chat to read (perhaps not one of our groups yet:
    #: a group WeCom opened when a join way's groups were full).
    chat_id: Mapped[str | None] = mapped_column(sa.String(64))
    action: Mapped[TaskAction] = mapped_column(enum_column(TaskAction))
    status: Mapped[TaskStatus] = mapped_column(enum_column(TaskStatus))
    attempts: Mapped[int] = mapped_column(default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(sa.String(500))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    invitation: Mapped[Invitation | None] = relationship()

    __table_args__ = (sa.Index(None, "status", "next_attempt_at"),)


class RemovalTask(db.Model):
    """For groups no API can manage (WeChat, QQ): a moderator removes the member by hand
    and ticks it off."""

    __tablename__ = "removal_tasks"

    id: Mapped[int] = mapped_column(primary_key=True)
    invitation_id: Mapped[int] = mapped_column(sa.ForeignKey("invitations.id"), unique=True)
    group_id: Mapped[int] = mapped_column(sa.ForeignKey("groups.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    done_by: Mapped[str | None] = mapped_column(sa.String(64))

    invitation: Mapped[Invitation] = relationship()
    group: Mapped[Group] = relationship()


class WeComGroupMember(db.Model):
    """A person WeCom lists in one of our WeCom groups (or listed: ``left_at``), as its
    change callbacks and reconciliations read them from ``groupchat/get``."""

    __tablename__ = "wecom_group_members"

    id: Mapped[int] = mapped_column(primary_key=True)
    group_id: Mapped[int] = mapped_column(sa.ForeignKey("groups.id"))
    #: Their WeCom userid (staff) or external userid (a WeChat user).
    user_id: Mapped[str] = mapped_column(sa.String(64))
    #: WeCom's member type: 1 staff of the enterprise, 2 an external contact.
    member_type: Mapped[int]
    #: Their WeCom / WeChat name and the nickname they set in this group.
    name: Mapped[str | None] = mapped_column(sa.String(80))
    group_nickname: Mapped[str | None] = mapped_column(sa.String(80))
    joined_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: How: 1 invited directly, 2 by a link, 3 by scanning a QR code (WeCom's join_scene).
    join_scene: Mapped[int | None]
    #: Who invited them (a userid), when someone did.
    invitor: Mapped[str | None] = mapped_column(sa.String(64))
    #: The ``state`` of the join way they came by, when they came by one.
    state: Mapped[str | None] = mapped_column(sa.String(30))
    #: The invitation their joining was credited to; None for anyone else (freeloaders).
    invitation_id: Mapped[int | None] = mapped_column(sa.ForeignKey("invitations.id"))
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: When they were found gone from the group.
    left_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    group: Mapped[Group] = relationship()
    invitation: Mapped[Invitation | None] = relationship()

    __table_args__ = (sa.UniqueConstraint("group_id", "user_id"),)


class PageVisits(db.Model):
    """Visits to a community's join page on one day of its calendar: the funnel's first
    step (see :mod:`membership.visits`)."""

    __tablename__ = "page_visits"

    community_id: Mapped[int] = mapped_column(sa.ForeignKey("communities.id"), primary_key=True)
    day: Mapped[date] = mapped_column(primary_key=True)
    visits: Mapped[int]


#: How member lists are ordered: by number, members without one after the numbered, each
#: by id (the index ``ix_members_listed`` serves it; the literal must match the index's).
LISTED_ORDER = (
    sa.func.coalesce(Member.number, sa.literal_column(str(UNNUMBERED))),
    Member.id,
)
#: The same order, written so that no index serves it (``number + 0``): for the few members
#: a search finds, sorted once found. In LISTED_ORDER, SQLite walks the community's whole
#: list by the index to find them (11 ms for a rare name at 100,000 members, against 0.2).
SORTED_ORDER = (
    sa.func.coalesce(Member.number + 0, sa.literal_column(str(UNNUMBERED))),
    Member.id,
)


def _seat(group_id: int | None, status: InvitationStatus | None) -> int | None:
    """The group whose seat an invitation in this state holds, if any."""
    return group_id if group_id is not None and status in LIVE_INVITATION_STATUSES else None


@event.listens_for(Session, "after_flush")
def _count_seats(session: Session, _context) -> None:
    """Keep :attr:`Group.seats_taken` in step with the invitations this flush wrote: one
    UPDATE per group whose seats changed, in group order (the order admissions lock
    groups in), in the same transaction. Invitations change through the ORM only."""
    delta: dict[int, int] = {}

    def move(group_id: int | None, by: int) -> None:
        if group_id is not None:
            delta[group_id] = delta.get(group_id, 0) + by

    for invitation in session.new:
        if isinstance(invitation, Invitation):
            move(_seat(invitation.group_id, invitation.status), 1)
    for invitation in session.dirty:
        if not isinstance(invitation, Invitation):
            continue
        state = sa.inspect(invitation)
        status, group = state.attrs.status.history, state.attrs.group_id.history
        if not (status.has_changes() or group.has_changes()):
            continue
        before = _seat(
            group.deleted[0] if group.deleted else invitation.group_id,
            status.deleted[0] if status.deleted else invitation.status,
        )
        move(before, -1)
        move(_seat(invitation.group_id, invitation.status), 1)
    for invitation in session.deleted:
        if isinstance(invitation, Invitation):
            move(_seat(invitation.group_id, invitation.status), -1)
    for group_id in sorted(g for g, by in delta.items() if by):
        taken = session.execute(
            sa.update(Group)
            .where(Group.id == group_id)
            .values(seats_taken=Group.seats_taken + delta[group_id])
            .returning(Group.seats_taken)
            .execution_options(synchronize_session=False)
        ).scalar_one()
        loaded = session.identity_map.get(session.identity_key(Group, group_id))
        if loaded is not None:
            set_committed_value(loaded, "seats_taken", taken)
