"""Coupons: which code takes what off which order, and the life of each use.

A use is reserved when the code is applied to an order (the coupon's row is locked while
its uses are counted, so limits hold under concurrency), consumed when the order is paid,
and released when the order expires unpaid, or is refunded where the community gives
coupons back on refunds.

A percentage off is rounded by :meth:`core.money.Money.percent`; an amount off never takes
the price below zero.
"""

from __future__ import annotations

import secrets
from datetime import datetime

import sqlalchemy as sa
from flask_babel import gettext as _

from core import audit
from core.db import db
from core.money import Money
from membership.models import Community, Member
from payments.discounts import UNKNOWN_CODE, DiscountRefused, Purchase, Sale
from payments.models import FlagKind, Order, OrderStatus
from payments.services import flag_order
from perks.eligibility import community_standings, is_eligible
from perks.models import Coupon, CouponGrant, CouponUse, CouponUseStatus


def discount_for(coupon: Coupon, list_amount: int) -> int:
    """Minor units ``coupon`` takes off a price of ``list_amount``."""
    if coupon.percent_off is not None:
        return Money(list_amount, coupon.currency).percent(coupon.percent_off).amount
    return min(coupon.amount_off, list_amount)


def _counted_uses(coupon: Coupon, buyer: str, *, now: datetime) -> tuple[int, int]:
    """How many uses count against the limits, in all and by ``buyer``: consumed ones, and
    reservations whose order can still be paid (not those of orders that expired)."""
    lapsed = sa.and_(
        CouponUse.status == CouponUseStatus.RESERVED,
        sa.or_(Order.status != OrderStatus.OPEN, Order.expires_at <= now),
    )
    counted = sa.func.count(CouponUse.id)
    return db.session.execute(
        sa.select(counted, counted.filter(CouponUse.buyer == buyer))
        .join(Order, Order.id == CouponUse.order_id)
        .where(
            CouponUse.coupon_id == coupon.id,
            CouponUse.status != CouponUseStatus.RELEASED,
            sa.not_(lapsed),
        )
    ).one()


def _live_uses(coupon: Coupon, buyer: str, *, now: datetime) -> tuple[int, int]:
    """:func:`_counted_uses`, after releasing the reservations of orders that can no
    longer be paid (expired)."""
    lapsed = db.session.scalars(
        sa.select(CouponUse)
        .join(Order, Order.id == CouponUse.order_id)
        .where(
            CouponUse.coupon_id == coupon.id,
            CouponUse.status == CouponUseStatus.RESERVED,
            sa.or_(Order.status != OrderStatus.OPEN, Order.expires_at <= now),
        )
    ).all()
    for use in lapsed:
        release(use, reason="order_expired", now=now)
    return _counted_uses(coupon, buyer, now=now)


def _applicable(
    sale: Sale, code: str, purchase: Purchase, *, now: datetime, reserving: bool
) -> tuple[Coupon, int]:
    """The coupon behind ``code`` and the minor units it takes off ``sale`` for
    ``purchase`` at ``now``, or :class:`DiscountRefused` saying why not. ``reserving``
    locks the coupon's row (its uses are counted for a reservation) and releases lapsed
    reservations; without it nothing is locked or changed (a price check)."""
    query = sa.select(Coupon).where(Coupon.community_id == sale.community_id, Coupon.code == code)
    coupon = db.session.scalar(query.with_for_update() if reserving else query)
    if coupon is None or not coupon.active:
        raise DiscountRefused(UNKNOWN_CODE)
    if coupon.valid_from is not None and now < coupon.valid_from:
        raise DiscountRefused(_("This coupon is not valid yet"))
    if coupon.valid_until is not None and now >= coupon.valid_until:
        raise DiscountRefused(_("This coupon has expired"))
    scoped = {f"tier:{t.id}" for t in coupon.tiers} | {f"course:{c.id}" for c in coupon.courses}
    if (scoped and purchase.product not in scoped) or coupon.currency != sale.list_price.currency:
        raise DiscountRefused(_("This coupon does not apply to this purchase"))
    if sale.list_price.amount < coupon.min_amount:
        minimum = Money(coupon.min_amount, coupon.currency)
        raise DiscountRefused(_("For orders of %(amount)s or more", amount=str(minimum)))
    if coupon.issued_only and not _granted(coupon, sale.member_id):
        raise DiscountRefused(_("This coupon is only for the members it was given to"))
    count_uses = _live_uses if reserving else _counted_uses
    uses, buyer_uses = count_uses(coupon, purchase.buyer, now=now)
    if coupon.max_uses is not None and uses >= coupon.max_uses:
        raise DiscountRefused(_("This coupon has been used up"))
    # A prospect's price check (no member, no proof) is not told: whether a phone has
    # used a coupon would tell anyone who typed it whether its owner bought here. The
    # reservation, once the contact is proven, checks it.
    if buyer_uses >= coupon.max_uses_per_buyer and (reserving or sale.member_id is not None):
        raise DiscountRefused(_("You have used this coupon already"))
    discount = discount_for(coupon, sale.list_price.amount)
    if discount <= 0:
        raise DiscountRefused(_("Nothing to take off this order"))
    return coupon, discount


def quote_coupon(sale: Sale, code: str, purchase: Purchase, *, now: datetime) -> Money:
    """The discount quote registered with :mod:`payments.discounts` (a price check): what
    :func:`reserve_coupon` would take off, by the same checks, recording nothing. Raises
    :class:`DiscountRefused`."""
    _coupon, discount = _applicable(sale, code, purchase, now=now, reserving=False)
    return Money(discount, sale.list_price.currency)


def reserve_coupon(order: Order, code: str, purchase: Purchase, *, now: datetime) -> Money:
    """The discount rule registered with :mod:`payments.discounts`: ``code`` on ``order``
    for ``purchase``, its use reserved (flushed). Raises :class:`DiscountRefused`."""
    coupon, discount = _applicable(Sale.of(order), code, purchase, now=now, reserving=True)
    use = CouponUse(
        coupon=coupon,
        order_id=order.id,
        buyer=purchase.buyer,
        member_id=order.member_id,
        status=CouponUseStatus.RESERVED,
        discount=discount,
        created_at=now,
    )
    db.session.add(use)
    money = Money(discount, order.currency)
    audit.record(
        "coupon.reserved",
        coupon,
        actor=purchase.buyer,
        data={
            "order": order.public_id,
            "discount": money.iso_str(),
            "kind": purchase.product.partition(":")[0],
        },
        now=now,
    )
    return money


def _granted(coupon: Coupon, member_id: int | None) -> bool:
    return member_id is not None and (
        db.session.scalar(
            sa.select(CouponGrant.id).where(
                CouponGrant.coupon_id == coupon.id, CouponGrant.member_id == member_id
            )
        )
        is not None
    )


def release(use: CouponUse, *, reason: str, now: datetime) -> None:
    use.status = CouponUseStatus.RELEASED
    use.closed_at = now
    audit.record(
        "coupon.released",
        use.coupon,
        actor="system",
        data={"use": use.id, "reason": reason},
        now=now,
    )


def consume_paid_coupon(order: Order, *, now: datetime) -> None:
    """``order_paid`` receiver: the order's coupon use is consumed. A payment that came
    after its reservation was released (the order had expired) consumes it all the same
    (the money was received, so the price paid holds) while the coupon has a use left;
    when the use went to someone else meanwhile, the coupon is not used past its limit:
    the use stays released and the order is put before the admins."""
    if order.coupon_code is None:
        return
    use = db.session.scalar(sa.select(CouponUse).where(CouponUse.order_id == order.id))
    if use is None or use.status is CouponUseStatus.CONSUMED:
        return
    if use.status is CouponUseStatus.RELEASED:
        coupon = db.session.scalar(
            sa.select(Coupon).where(Coupon.id == use.coupon_id).with_for_update()
        )
        uses, buyer_uses = _live_uses(coupon, use.buyer, now=now)
        if (
            coupon.max_uses is not None and uses >= coupon.max_uses
        ) or buyer_uses >= coupon.max_uses_per_buyer:
            flag_order(
                order,
                FlagKind.COUPON_OVER_LIMIT,
                detail=f"{order.coupon_code} · {order.discount}",
                actor="system",
                now=now,
            )
            return
    use.status = CouponUseStatus.CONSUMED
    use.closed_at = now
    audit.record(
        "coupon.consumed", use.coupon, actor="system", data={"order": order.public_id}, now=now
    )


def release_refunded_coupon(order: Order, *, now: datetime, reason: str) -> None:
    """``access_withdrawn`` receiver: a refunded order's coupon may be used again, when its
    community gives coupons back on refunds."""
    if reason != "refunded" or order.coupon_code is None:
        return
    use = db.session.scalar(sa.select(CouponUse).where(CouponUse.order_id == order.id))
    if use is None or use.status is CouponUseStatus.RELEASED:
        return
    if db.session.get(Community, use.coupon.community_id).coupons_back_on_refund:
        release(use, reason="refunded", now=now)


#: Generated codes avoid letters and digits that read alike (0/O, 1/I/L).
CODE_ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"


def generate_codes(
    template: Coupon, count: int, *, prefix: str, campaign: str, actor: str, now: datetime
) -> list[Coupon]:
    """``count`` new coupons like ``template`` (which is not added), each with its own code
    ``<prefix><8 random characters>``, unique in the community."""
    taken = set(
        db.session.scalars(
            sa.select(Coupon.code).where(Coupon.community_id == template.community_id)
        )
    )
    coupons = []
    while len(coupons) < count:
        code = prefix + "".join(secrets.choice(CODE_ALPHABET) for _ in range(8))
        if code in taken:
            continue
        taken.add(code)
        coupon = Coupon(
            community_id=template.community_id,
            code=code,
            campaign=campaign,
            description=template.description,
            percent_off=template.percent_off,
            amount_off=template.amount_off,
            currency=template.currency,
            min_amount=template.min_amount,
            valid_from=template.valid_from,
            valid_until=template.valid_until,
            max_uses=template.max_uses,
            max_uses_per_buyer=template.max_uses_per_buyer,
            issued_only=False,
            active=True,
            created_at=now,
            tiers=list(template.tiers),
            courses=list(template.courses),
        )
        db.session.add(coupon)
        coupons.append(coupon)
    db.session.flush()
    audit.record(
        "coupon.campaign_generated",
        coupons[0],
        actor=actor,
        data={"campaign": campaign, "count": count},
        now=now,
    )
    return coupons


def grant_coupon(coupon: Coupon, member: Member, *, source: str, now: datetime) -> bool:
    """Issue ``coupon`` to ``member`` (added). False when they hold it already."""
    if _granted(coupon, member.id):
        return False
    _add_grant(coupon, member, source=source, now=now)
    return True


def _add_grant(coupon: Coupon, member: Member, *, source: str, now: datetime) -> None:
    db.session.add(CouponGrant(coupon=coupon, member_id=member.id, source=source, created_at=now))
    audit.record("coupon.granted", coupon, actor=source, data={"member": member.id}, now=now)


def issue_to_eligible(coupon: Coupon, *, actor: str, now: datetime) -> int:
    """Issue ``coupon`` to every member its eligibility rule picks who does not hold it.
    Returns how many received it now."""
    holders = set(
        db.session.scalars(
            sa.select(CouponGrant.member_id).where(CouponGrant.coupon_id == coupon.id)
        )
    )
    issued = 0
    for standing in community_standings(coupon.community_id, now=now):
        if standing.member.id not in holders and is_eligible(coupon, standing):
            _add_grant(coupon, standing.member, source=actor, now=now)
            issued += 1
    return issued


def use_counts(coupon_ids: list[int]) -> dict[int, dict[CouponUseStatus, int]]:
    """Uses per coupon and status, for the admin pages."""
    counts: dict[int, dict[CouponUseStatus, int]] = {i: {} for i in coupon_ids}
    for coupon_id, status, count in db.session.execute(
        sa.select(CouponUse.coupon_id, CouponUse.status, sa.func.count())
        .where(CouponUse.coupon_id.in_(coupon_ids))
        .group_by(CouponUse.coupon_id, CouponUse.status)
    ):
        counts[coupon_id][CouponUseStatus(status)] = count
    return counts
