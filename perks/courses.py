"""Courses: their price for each member (offers), buying them through an order, the
enrolment a paid order makes, and telling eligible members when a course launches
(through :mod:`perks.announcements`).

Functions here flush but never commit; the request or command that calls them commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from flask import url_for
from flask_babel import force_locale
from flask_babel import gettext as _

from core import audit, outbox
from core.db import db
from core.money import Money
from core.outbox import OutboxMessage
from core.security import new_token
from membership.language import reader_locale
from membership.models import Member
from membership.services import application_paid_by
from payments.models import Order
from payments.services import create_order
from perks.announcements import (
    message_key,
    message_row,
    messages_of,
    selected_members,
    unsubscribe_links,
)
from perks.eligibility import Standing, conditions, is_eligible
from perks.models import (
    Course,
    CourseNotice,
    Enrolment,
    EnrolmentStatus,
    Offer,
    Unsubscribe,
)


class CourseRefused(Exception):
    """The member cannot buy this course now; the message says why, Chinese first."""


@dataclass(frozen=True, slots=True)
class CoursePrice:
    """What a course costs one member: the list price, or the best offer made to them."""

    course: Course
    price: Money
    offer: Offer | None

    @property
    def saving(self) -> Money:
        return self.course.price_money - self.price


def offer_price(offer: Offer) -> Money:
    """The course's price less the offer's percentage (see :meth:`Money.percent`)."""
    price = offer.course.price_money
    return price - price.percent(offer.percent_off)


def _current_offers(course_ids: list[int], *, now: datetime) -> dict[int, list[Offer]]:
    """The active, unexpired offers of these courses, by course."""
    offers: dict[int, list[Offer]] = {i: [] for i in course_ids}
    for offer in db.session.scalars(
        sa.select(Offer).where(
            Offer.course_id.in_(course_ids),
            Offer.active,
            sa.or_(Offer.valid_until.is_(None), Offer.valid_until > now),
        )
    ):
        offers[offer.course_id].append(offer)
    return offers


def _best_price(course: Course, standing: Standing, offers: list[Offer]) -> CoursePrice:
    best = min(
        (o for o in offers if is_eligible(o, standing)),
        key=lambda o: offer_price(o).amount,
        default=None,
    )
    return CoursePrice(course, offer_price(best) if best else course.price_money, best)


def price_for(course: Course, standing: Standing, *, now: datetime) -> CoursePrice:
    return _best_price(course, standing, _current_offers([course.id], now=now)[course.id])


#: Enrolments that hold the course (paid or given; a disputed one is held pending).
LIVE_ENROLMENT_STATUSES = (EnrolmentStatus.ACTIVE, EnrolmentStatus.SUSPENDED)


def enrolment_of(course: Course, member: Member) -> Enrolment | None:
    """The member's live enrolment in the course (active or suspended), if any."""
    return db.session.scalar(
        sa.select(Enrolment).where(
            Enrolment.course_id == course.id,
            Enrolment.member_id == member.id,
            Enrolment.status.in_(LIVE_ENROLMENT_STATUSES),
        )
    )


def upsells_for(standing: Standing, *, now: datetime) -> list[CoursePrice]:
    """Courses on sale the member may buy and has not, at their price, offers first."""
    member = standing.member
    courses = db.session.scalars(
        sa.select(Course)
        .where(Course.community_id == member.community_id, Course.active)
        .where(Course.launched_at.is_not(None))
        .order_by(Course.id)
    ).all()
    held = set(
        db.session.scalars(
            sa.select(Enrolment.course_id).where(
                Enrolment.member_id == member.id, Enrolment.status.in_(LIVE_ENROLMENT_STATUSES)
            )
        )
    )
    offers = _current_offers([c.id for c in courses], now=now)
    prices = [
        _best_price(c, standing, offers[c.id])
        for c in courses
        if c.id not in held and is_eligible(c, standing)
    ]
    return sorted(prices, key=lambda p: p.offer is None)


def start_purchase(
    course: Course, standing: Standing, *, submission_key: str, now: datetime
) -> Enrolment:
    """An enrolment awaiting payment, with an order at the member's price (flushed). The
    same ``submission_key`` gives back the first enrolment, so a double click makes one
    order. Raises :class:`CourseRefused`."""
    existing = db.session.scalar(
        sa.select(Enrolment).where(Enrolment.submission_key == submission_key)
    )
    if existing is not None:
        return existing
    member = standing.member
    if not course.on_sale or course.community_id != member.community_id:
        raise CourseRefused(_("This course is not on sale"))
    unmet = [c.text for c in conditions(course, standing) if not c.met]
    if unmet:
        raise CourseRefused(
            _(
                "You do not meet these conditions yet: %(conditions)s",
                conditions=_("; ").join(unmet),
            )
        )
    if enrolment_of(course, member) is not None:
        raise CourseRefused(_("You have this course already"))
    quote = price_for(course, standing, now=now)
    actor = f"member:{member.id}"
    order = create_order(
        quote.price,
        f"{member.community.name} · {course.title}",
        community_id=course.community_id,
        product=course.title,
        member_id=member.id,
        actor=actor,
        now=now,
    )
    db.session.flush()
    enrolment = Enrolment(
        submission_key=submission_key,
        course=course,
        member=member,
        status=EnrolmentStatus.AWAITING_PAYMENT,
        order_id=order.id,
        offer=quote.offer,
        created_at=now,
    )
    db.session.add(enrolment)
    audit.record(
        "enrolment.started",
        enrolment,
        actor=actor,
        data={
            "course": course.code,
            "price": str(quote.price),
            "offer": quote.offer.id if quote.offer else None,
        },
        now=now,
    )
    return enrolment


def enrol_free(course: Course, member: Member, *, source: str, now: datetime) -> Enrolment | None:
    """A place on ``course`` given without payment (a perk). None when they have one."""
    if enrolment_of(course, member) is not None:
        return None
    enrolment = Enrolment(
        submission_key=new_token(24),
        course=course,
        member=member,
        status=EnrolmentStatus.ACTIVE,
        created_at=now,
    )
    db.session.add(enrolment)
    audit.record("enrolment.given", enrolment, actor=source, data={"course": course.code}, now=now)
    return enrolment


#: Built once: every paid order runs it.
_ENROLMENT_OF_ORDER = sa.select(Enrolment).where(Enrolment.order_id == sa.bindparam("order_id"))


def _enrolment_for(order: Order) -> Enrolment | None:
    """The enrolment ``order`` pays for: none when it pays for a tier's application (an
    order pays for one thing), which needs no query of its own."""
    if application_paid_by(order) is not None:
        return None
    return db.session.scalar(_ENROLMENT_OF_ORDER, {"order_id": order.id})


def activate_paid_enrolment(order: Order, *, now: datetime) -> None:
    """``order_paid`` receiver: the enrolment the order paid for is active."""
    enrolment = _enrolment_for(order)
    if enrolment is None or enrolment.status is not EnrolmentStatus.AWAITING_PAYMENT:
        return
    enrolment.status = EnrolmentStatus.ACTIVE
    audit.record("enrolment.paid", enrolment, actor="system", now=now)


#: How a withdrawal of money ends an enrolment, by the reason ``access_withdrawn`` gives.
_WITHDRAWN_STATUS = {
    "refunded": EnrolmentStatus.REVOKED,
    "disputed": EnrolmentStatus.SUSPENDED,
    "dispute_lost": EnrolmentStatus.REVOKED,
}


def withdraw_enrolment(order: Order, *, now: datetime, reason: str) -> None:
    """``access_withdrawn`` receiver: the content is no longer the buyer's. Idempotent."""
    enrolment = _enrolment_for(order)
    status = _WITHDRAWN_STATUS[reason]
    if enrolment is None or enrolment.status in (status, EnrolmentStatus.REVOKED):
        return
    enrolment.status = status
    audit.record(f"enrolment.{status}", enrolment, actor="system", data={"reason": reason}, now=now)


def restore_enrolment(order: Order, *, now: datetime) -> None:
    """``access_restored`` receiver: a suspended enrolment is active again."""
    enrolment = _enrolment_for(order)
    if enrolment is not None and enrolment.status is EnrolmentStatus.SUSPENDED:
        enrolment.status = EnrolmentStatus.ACTIVE
        audit.record("enrolment.restored", enrolment, actor="system", now=now)


def launch(course: Course, *, actor: str, now: datetime) -> int:
    """Put ``course`` on sale and queue a message to each member its rule selects (see
    :func:`~perks.announcements.selected_members`: not those who unsubscribed), with the
    member's price and an unsubscribe link, in one bulk insert, with a
    :class:`CourseNotice` each. Launching again tells only members not told before and
    not holding the course. Returns how many members were told now; the outbox's worker
    sends."""
    # Two launches at once (a double click) go one after the other (on PostgreSQL): the
    # second finds the first's notices.
    db.session.execute(sa.select(Course.id).where(Course.id == course.id).with_for_update())
    if course.launched_at is None:
        course.launched_at = now
    skipped = set(  # told before, or holding the course already
        db.session.scalars(
            sa.union(
                sa.select(CourseNotice.member_id).where(CourseNotice.course_id == course.id),
                sa.select(Enrolment.member_id).where(
                    Enrolment.course_id == course.id,
                    Enrolment.status.in_(LIVE_ENROLMENT_STATUSES),
                ),
            )
        )
    )
    offers = _current_offers([course.id], now=now)[course.id]
    link = url_for("perks.course", slug=course.community.slug, code=course.code, _external=True)
    unsubscribe_link = unsubscribe_links()
    rows = []
    for standing in selected_members(course, course.community_id, now=now):
        member = standing.member
        if member.id in skipped:
            continue
        quote = _best_price(course, standing, offers)
        # A Recipient (perks.announcements) does not load the member's own choice.
        with force_locale(reader_locale(getattr(member, "locale", None), course.community)):
            subject = _(
                "%(community)s: a new course, %(title)s",
                community=course.community.name,
                title=course.title,
            )
            body = (
                _(
                    "%(title)s is on sale at %(price)s for you (%(offer)s: you save %(saving)s): "
                    "%(link)s",
                    title=course.title,
                    price=quote.price,
                    offer=quote.offer.name,
                    saving=quote.saving,
                    link=link,
                )
                if quote.offer
                else _(
                    "%(title)s is on sale at %(price)s for you: %(link)s",
                    title=course.title,
                    price=quote.price,
                    link=link,
                )
            )
        row = message_row(
            member,
            subject=subject,
            body=body,
            key=message_key("course", course.id, member.id),
            params={
                "community": course.community.name,
                "title": course.title,
                "price": str(quote.price),
                "link": link,
            },
            link=unsubscribe_link(member.id),
        )
        if row is not None:
            rows.append(row)
    outbox.enqueue_many(rows, now=now)
    told = {row["member_id"] for row in rows}
    message_ids = {
        member_id: message_id
        for member_id, message_id in db.session.execute(
            sa.select(OutboxMessage.member_id, OutboxMessage.id).where(
                messages_of("course", course.id)
            )
        )
        if member_id in told
    }
    if message_ids:
        db.session.execute(
            sa.insert(CourseNotice),
            [
                {
                    "course_id": course.id,
                    "member_id": member_id,
                    "outbox_message_id": message_id,
                    "created_at": now,
                }
                for member_id, message_id in message_ids.items()
            ],
        )
    audit.record("course.launched", course, actor=actor, data={"told": len(message_ids)}, now=now)
    return len(message_ids)


def unsubscribe(member: Member, *, now: datetime) -> bool:
    """No more announcements for ``member``. False when they had unsubscribed."""
    if db.session.scalar(sa.select(Unsubscribe.id).where(Unsubscribe.member_id == member.id)):
        return False
    db.session.add(Unsubscribe(member_id=member.id, created_at=now))
    audit.record("member.unsubscribed", member, actor=f"member:{member.id}", now=now)
    return True
