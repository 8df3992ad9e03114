"""Members in bulk for the benchmarks: each with a number, a current membership of a tier,
and (``paid=True``) the order, confirmed payment, ledger entry and live invitation a real
admission leaves, inserted with executemany in batches (the ORM would take minutes); the
community's daily figures recomputed after them (bulk rows skip the hooks that keep them)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa

from core.db import db
from membership import figures
from membership.models import (
    Community,
    ContactKind,
    Group,
    Invitation,
    InvitationStatus,
    Member,
    Membership,
    MembershipStatus,
    Tier,
)
from payments.models import LedgerEntry, Order, OrderStatus, Payment, PaymentStatus

BATCH = 5000


def seed_members(
    community: Community, tier: Tier, count: int, *, now: datetime, paid: bool = False
) -> None:
    """``count`` numbered members of ``tier`` (phones 138xxxxxxxx), flushed; with ``paid``
    each also paid for it and holds a seat in the tier's first group (whose counter and
    capacity are raised to match) and the community's number series moves on."""
    group = tier.groups[0] if paid else None
    for start in range(0, count, BATCH):
        numbers = range(start, min(start + BATCH, count))
        member_ids = db.session.scalars(
            sa.insert(Member).returning(Member.id, sort_by_parameter_order=True),
            [
                {
                    "community_id": community.id,
                    "display_name": f"成员{i}",
                    "contact_kind": ContactKind.PHONE,
                    "contact_value": f"138{i:08d}",
                    "contact_proven_at": now,
                    "number": i + 1,
                    "number_label": f"{i + 1:05d}",
                    "created_at": now,
                }
                for i in numbers
            ],
        ).all()
        order_ids = [None] * len(member_ids)
        if paid:
            order_ids = _paid_orders(community, tier, member_ids, now=now)
        membership_ids = db.session.scalars(
            sa.insert(Membership).returning(Membership.id, sort_by_parameter_order=True),
            [
                {
                    "member_id": member_id,
                    "tier_id": tier.id,
                    "status": MembershipStatus.ACTIVE,
                    "starts_at": now,
                    "order_id": order_id,
                }
                for member_id, order_id in zip(member_ids, order_ids, strict=True)
            ],
        ).all()
        if group is not None:
            db.session.execute(
                sa.insert(Invitation),
                [
                    {
                        "token": f"seed-{membership_id}",
                        "member_id": member_id,
                        "membership_id": membership_id,
                        "group_id": group.id,
                        "status": InvitationStatus.JOINED,
                        "created_at": now,
                        "issued_at": now,
                    }
                    for member_id, membership_id in zip(member_ids, membership_ids, strict=True)
                ],
            )
    if group is not None:
        # Bulk rows skip the flush that keeps the seat counter: counted here.
        db.session.execute(
            sa.update(Group)
            .where(Group.id == group.id)
            .values(seats_taken=Group.seats_taken + count, capacity=Group.capacity + count)
        )
    db.session.execute(
        sa.update(Community)
        .where(Community.id == community.id)
        .values(last_member_number=Community.last_member_number + count)
    )
    figures.rebuild(db.session, [community.id])


def _paid_orders(community: Community, tier: Tier, member_ids: list[int], *, now) -> list[int]:
    """An order, its confirmed payment and the ledger entry per member; the order ids."""
    order_ids = db.session.scalars(
        sa.insert(Order).returning(Order.id, sort_by_parameter_order=True),
        [
            {
                "public_id": f"seed-order-{member_id}",
                "amount": tier.price,
                "list_amount": tier.price,
                "currency": tier.currency,
                "community_id": community.id,
                "product": tier.name,
                "member_id": member_id,
                "description": tier.name,
                "status": OrderStatus.PAID,
                "created_at": now,
                "expires_at": now,
                "paid_at": now,
            }
            for member_id in member_ids
        ],
    ).all()
    payment_ids = db.session.scalars(
        sa.insert(Payment).returning(Payment.id, sort_by_parameter_order=True),
        [
            {
                "public_id": f"seed-payment-{order_id}",
                "order_id": order_id,
                "provider": "stripe",
                "method": "checkout",
                "amount": tier.price,
                "currency": tier.currency,
                "status": PaymentStatus.CONFIRMED,
                "return_url": "",
                "cancel_url": "",
                "provider_data": {},
                "created_at": now,
                "confirmed_at": now,
            }
            for order_id in order_ids
        ],
    ).all()
    db.session.execute(
        sa.insert(LedgerEntry),
        [
            {
                "created_at": now,
                "kind": "payment",
                "amount": tier.price,
                "currency": tier.currency,
                "order_id": order_id,
                "payment_id": payment_id,
                "provider": "stripe",
                "provider_transaction_id": f"pi_seed_{payment_id}",
            }
            for order_id, payment_id in zip(order_ids, payment_ids, strict=True)
        ],
    )
    return order_ids


def settle(engine: sa.Engine) -> None:
    """After a bulk seed, committed: on PostgreSQL, what autovacuum does soon after on a
    real install (VACUUM ANALYZE: the planner's statistics, and the visibility map that
    lets index-only scans skip the table), so that pages are measured as they run there,
    not planned blind over 100,000 rows nobody analysed. SQLite keeps no statistics
    unless asked (a real install does not), so it is left as it is."""
    if engine.dialect.name != "postgresql":
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM ANALYZE")
