"""What communities give and sell to their members beyond the groups: perks and their
redemptions, coupons and their uses, courses, enrolments, upsell offers, announcements,
and the course announcements members received or unsubscribed from."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_babel import lazy_pgettext
from sqlalchemy.orm import Mapped, declared_attr, mapped_column, relationship

from core.db import UTCDateTime, db, enum_column
from core.labels import enum_labels
from core.money import Money
from membership.models import Community, Member, Tier


class EligibilityRule:
    """Who a perk, coupon, course or offer is for. Every condition set must hold, on top
    of being a current member; an unset condition does not count."""

    @declared_attr
    def tier_id(cls) -> Mapped[int | None]:
        #: Holds a current membership of this tier.
        return mapped_column(sa.ForeignKey("tiers.id"))

    @declared_attr
    def tier(cls) -> Mapped[Tier | None]:
        return relationship()

    #: A member for at least this many days (from their first membership).
    min_tenure_days: Mapped[int | None]
    #: Founders: a member number no higher than this.
    max_member_number: Mapped[int | None]
    #: Paid at least this many times for a tier (entries, re-entries, renewals, seasons).
    min_seasons_paid: Mapped[int | None]
    #: Only staff (who hold a staff number).
    staff_only: Mapped[bool] = mapped_column(default=False)


class PerkKind(StrEnum):
    COUPON = "coupon"  #: grants a coupon the member can use
    LINK = "link"  #: a download or a link
    ITEM = "item"  #: a physical or digital item, usually with stock (a book voucher …)
    COURSE = "course"  #: a free place on a course


PERK_KIND_LABELS = enum_labels(
    PerkKind,
    {
        PerkKind.COUPON: _l("Coupon"),
        PerkKind.LINK: _l("Link"),
        PerkKind.ITEM: _l("Item"),
        PerkKind.COURSE: _l("Course place"),
    },
)


class Perk(EligibilityRule, db.Model):
    """Something eligible members redeem (福利)."""

    __tablename__ = "perks"

    id: Mapped[int] = mapped_column(primary_key=True)
    community_id: Mapped[int] = mapped_column(sa.ForeignKey("communities.id"), index=True)
    name: Mapped[str] = mapped_column(sa.String(60))
    description: Mapped[str] = mapped_column(sa.Text, default="")
    kind: Mapped[PerkKind] = mapped_column(enum_column(PerkKind))
    #: A LINK perk's address, or where an ITEM is claimed; shown once redeemed.
    link_url: Mapped[str | None] = mapped_column(sa.String(500))
    #: A COUPON perk's coupon; a COURSE perk's course.
    coupon_id: Mapped[int | None] = mapped_column(sa.ForeignKey("coupons.id"))
    course_id: Mapped[int | None] = mapped_column(sa.ForeignKey("courses.id"))
    #: How many can be redeemed in all; None: no limit.
    stock: Mapped[int | None]
    #: Redemptions so far; raised in the same UPDATE that checks ``stock``.
    redeemed_count: Mapped[int] = mapped_column(default=0)
    #: Redemptions one member may make.
    per_member_limit: Mapped[int] = mapped_column(default=1)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    community: Mapped[Community] = relationship()
    coupon: Mapped[Coupon | None] = relationship()
    course: Mapped[Course | None] = relationship()

    __table_args__ = (
        sa.CheckConstraint(
            "stock IS NULL OR redeemed_count <= stock", name="redeemed_within_stock"
        ),
        sa.CheckConstraint("per_member_limit >= 1", name="per_member_limit_positive"),
    )

    @property
    def left(self) -> int | None:
        return None if self.stock is None else self.stock - self.redeemed_count


class Redemption(db.Model):
    """A member redeemed a perk once."""

    __tablename__ = "redemptions"

    id: Mapped[int] = mapped_column(primary_key=True)
    perk_id: Mapped[int] = mapped_column(sa.ForeignKey("perks.id"))
    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    perk: Mapped[Perk] = relationship()
    member: Mapped[Member] = relationship()

    __table_args__ = (sa.Index(None, "perk_id", "member_id"),)


#: Which tiers and courses a coupon applies to; a coupon with neither applies to all.
coupon_tiers = sa.Table(
    "coupon_tiers",
    db.metadata,
    sa.Column("coupon_id", sa.ForeignKey("coupons.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("tier_id", sa.ForeignKey("tiers.id", ondelete="CASCADE"), primary_key=True),
)
coupon_courses = sa.Table(
    "coupon_courses",
    db.metadata,
    sa.Column("coupon_id", sa.ForeignKey("coupons.id", ondelete="CASCADE"), primary_key=True),
    sa.Column("course_id", sa.ForeignKey("courses.id", ondelete="CASCADE"), primary_key=True),
)


class Coupon(EligibilityRule, db.Model):
    """A discount code: percent or amount off, for some products, for a while, a number of
    times. The eligibility rule says which members it is issued to."""

    __tablename__ = "coupons"

    id: Mapped[int] = mapped_column(primary_key=True)
    community_id: Mapped[int] = mapped_column(sa.ForeignKey("communities.id"), index=True)
    #: Upper case, see :func:`payments.discounts.normalise_code`.
    code: Mapped[str] = mapped_column(sa.String(40))
    #: Codes generated together share their campaign's name.
    campaign: Mapped[str | None] = mapped_column(sa.String(60), index=True)
    description: Mapped[str] = mapped_column(sa.String(200), default="")
    #: Exactly one of the two: whole percent off, or minor units of ``currency`` off.
    percent_off: Mapped[int | None]
    amount_off: Mapped[int | None]
    currency: Mapped[str] = mapped_column(sa.String(3))
    #: The order's price before the discount must be at least this (minor units).
    min_amount: Mapped[int] = mapped_column(default=0)
    valid_from: Mapped[datetime | None] = mapped_column(UTCDateTime)
    valid_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Uses in all (reserved and consumed); None: no limit.
    max_uses: Mapped[int | None]
    max_uses_per_buyer: Mapped[int] = mapped_column(default=1)
    #: Only members it was issued to (by an admin, or by a perk) may use it.
    issued_only: Mapped[bool] = mapped_column(default=False)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    community: Mapped[Community] = relationship()
    tiers: Mapped[list[Tier]] = relationship(secondary=coupon_tiers, order_by="Tier.id")
    courses: Mapped[list[Course]] = relationship(secondary=coupon_courses, order_by="Course.id")

    __table_args__ = (
        sa.UniqueConstraint("community_id", "code"),
        sa.CheckConstraint(
            "(percent_off IS NULL) != (amount_off IS NULL)", name="percent_or_amount"
        ),
        sa.CheckConstraint("percent_off BETWEEN 1 AND 100", name="percent_range"),
        sa.CheckConstraint("amount_off > 0", name="amount_off_positive"),
        sa.CheckConstraint("max_uses_per_buyer >= 1", name="per_buyer_positive"),
    )

    def describe(self) -> str:
        """How the discount reads, in the reader's language: "20% off", "Free",
        "¥10.00 off"."""
        if self.percent_off == 100:
            return _("Free")
        if self.percent_off is not None:
            return _("%(percent)s%% off", percent=self.percent_off)
        return _("%(amount)s off", amount=Money(self.amount_off, self.currency))


class CouponUseStatus(StrEnum):
    RESERVED = "reserved"  #: on an order waiting for payment
    CONSUMED = "consumed"  #: the order was paid
    RELEASED = "released"  #: the order expired, or was refunded (if the community says so)


COUPON_USE_STATUS_LABELS = enum_labels(
    CouponUseStatus,
    {
        CouponUseStatus.RESERVED: lazy_pgettext("status", "Reserved"),
        CouponUseStatus.CONSUMED: lazy_pgettext("status", "Used"),
        CouponUseStatus.RELEASED: lazy_pgettext("status", "Released"),
    },
)


class CouponUse(db.Model):
    """A coupon on one order (one coupon per order)."""

    __tablename__ = "coupon_uses"

    id: Mapped[int] = mapped_column(primary_key=True)
    coupon_id: Mapped[int] = mapped_column(sa.ForeignKey("coupons.id"), index=True)
    order_id: Mapped[int] = mapped_column(sa.ForeignKey("orders.id"), unique=True)
    #: Whom per-buyer limits count, see :class:`payments.discounts.Purchase`.
    buyer: Mapped[str] = mapped_column(sa.String(260))
    member_id: Mapped[int | None] = mapped_column(sa.ForeignKey("members.id"))
    status: Mapped[CouponUseStatus] = mapped_column(enum_column(CouponUseStatus))
    #: Minor units taken off.
    discount: Mapped[int]
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    coupon: Mapped[Coupon] = relationship()

    __table_args__ = (sa.Index(None, "coupon_id", "buyer"),)


class CouponGrant(db.Model):
    """A coupon issued to a member: shown on their page, usable if ``issued_only``."""

    __tablename__ = "coupon_grants"

    id: Mapped[int] = mapped_column(primary_key=True)
    coupon_id: Mapped[int] = mapped_column(sa.ForeignKey("coupons.id"))
    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"), index=True)
    #: ``perk:<id>``, or the staff member who issued it.
    source: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    coupon: Mapped[Coupon] = relationship()

    __table_args__ = (sa.UniqueConstraint("coupon_id", "member_id"),)


class Course(EligibilityRule, db.Model):
    """A product sold once through the same orders and payments as tiers. The eligibility
    rule says who may buy it and who is told when it launches."""

    __tablename__ = "courses"

    id: Mapped[int] = mapped_column(primary_key=True)
    community_id: Mapped[int] = mapped_column(sa.ForeignKey("communities.id"), index=True)
    #: In URLs: ``/courses/<community>/<code>``.
    code: Mapped[str] = mapped_column(sa.String(40))
    title: Mapped[str] = mapped_column(sa.String(80))
    description: Mapped[str] = mapped_column(sa.Text, default="")
    #: Minor units of ``currency``; more than zero.
    price: Mapped[int]
    currency: Mapped[str] = mapped_column(sa.String(3))
    #: Where enrolled members find the content; shown to them only.
    access_url: Mapped[str] = mapped_column(sa.String(500))
    active: Mapped[bool] = mapped_column(default=True)
    #: When it was announced to eligible members; None: not launched yet (not on sale).
    launched_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    community: Mapped[Community] = relationship()

    __table_args__ = (
        sa.UniqueConstraint("community_id", "code"),
        sa.CheckConstraint("price > 0", name="price_positive"),
    )

    @property
    def price_money(self) -> Money:
        return Money(self.price, self.currency)

    @property
    def on_sale(self) -> bool:
        return self.active and self.launched_at is not None


class EnrolmentStatus(StrEnum):
    AWAITING_PAYMENT = "awaiting_payment"
    ACTIVE = "active"  #: paid (or given by a perk): the content is theirs
    SUSPENDED = "suspended"  #: the payment is disputed
    REVOKED = "revoked"  #: refunded, or the dispute was lost


ENROLMENT_STATUS_LABELS = enum_labels(
    EnrolmentStatus,
    {
        EnrolmentStatus.AWAITING_PAYMENT: lazy_pgettext("status", "Waiting for payment"),
        EnrolmentStatus.ACTIVE: lazy_pgettext("status", "Active"),
        EnrolmentStatus.SUSPENDED: lazy_pgettext("status", "Suspended (payment disputed)"),
        EnrolmentStatus.REVOKED: lazy_pgettext("status", "Revoked"),
    },
)


class Enrolment(db.Model):
    """A member's place on a course: bought through an order, or given by a perk."""

    __tablename__ = "enrolments"

    id: Mapped[int] = mapped_column(primary_key=True)
    #: From the course page's form: a second submission of it finds this enrolment.
    submission_key: Mapped[str] = mapped_column(sa.String(64), unique=True)
    course_id: Mapped[int] = mapped_column(sa.ForeignKey("courses.id"), index=True)
    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"), index=True)
    status: Mapped[EnrolmentStatus] = mapped_column(enum_column(EnrolmentStatus, 24))
    order_id: Mapped[int | None] = mapped_column(sa.ForeignKey("orders.id"), unique=True)
    #: The offer whose price the member was given.
    offer_id: Mapped[int | None] = mapped_column(sa.ForeignKey("offers.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    course: Mapped[Course] = relationship()
    member: Mapped[Member] = relationship()
    offer: Mapped[Offer | None] = relationship()


class Offer(EligibilityRule, db.Model):
    """An upsell: a course at a lower price for the members the rule picks (veterans 30%
    off), shown on the payment success page and the member's page."""

    __tablename__ = "offers"

    id: Mapped[int] = mapped_column(primary_key=True)
    community_id: Mapped[int] = mapped_column(sa.ForeignKey("communities.id"), index=True)
    course_id: Mapped[int] = mapped_column(sa.ForeignKey("courses.id"), index=True)
    name: Mapped[str] = mapped_column(sa.String(60))
    percent_off: Mapped[int]
    valid_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    course: Mapped[Course] = relationship()

    __table_args__ = (sa.CheckConstraint("percent_off BETWEEN 1 AND 99", name="percent_range"),)


class CourseNotice(db.Model):
    """A member was told about a course's launch: each member once."""

    __tablename__ = "course_notices"

    id: Mapped[int] = mapped_column(primary_key=True)
    course_id: Mapped[int] = mapped_column(sa.ForeignKey("courses.id"))
    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"))
    outbox_message_id: Mapped[int] = mapped_column(sa.ForeignKey("outbox_messages.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (sa.UniqueConstraint("course_id", "member_id"),)


class Announcement(EligibilityRule, db.Model):
    """A message written once by an admin to the members its rule selects (not those who
    unsubscribed), queued in one go, each member once however often it is sent."""

    __tablename__ = "announcements"

    id: Mapped[int] = mapped_column(primary_key=True)
    community_id: Mapped[int] = mapped_column(sa.ForeignKey("communities.id"), index=True)
    title: Mapped[str] = mapped_column(sa.String(80))
    body: Mapped[str] = mapped_column(sa.Text)
    #: The staff member who wrote it (``staff:<id>``).
    created_by: Mapped[str] = mapped_column(sa.String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: When it was first queued; None: a draft, still editable.
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: Messages queued for it so far (sending again queues only newly selected members).
    recipients: Mapped[int] = mapped_column(default=0)

    community: Mapped[Community] = relationship()


class Unsubscribe(db.Model):
    """A member asked for no more announcements (course launches included)."""

    __tablename__ = "unsubscribes"

    id: Mapped[int] = mapped_column(primary_key=True)
    member_id: Mapped[int] = mapped_column(sa.ForeignKey("members.id"), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
