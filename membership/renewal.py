"""Renewal as 知识星球 does it: what renewing a membership with a term costs now (its
band: before the end, within the tier's grace days after it, or later, each a percentage
of the tier's renewal price), when the renew button appears (the tier's window before the
end), the days left, and why a membership that ended did so. Reads only; nothing here
changes a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from core.audit import AuditEntry
from core.db import db
from core.money import Money
from membership.models import Member, Membership, MembershipStatus, Tier


class RenewalBand(StrEnum):
    EARLY = "early"  #: before the membership ends
    GRACE = "grace"  #: within the tier's grace days after it ended
    LATE = "late"  #: later than that


@dataclass(frozen=True, slots=True)
class BandPrice:
    """One band's renewal price: ``percent`` % of the tier's renewal price ``base``."""

    band: RenewalBand
    percent: int
    base: Money

    @property
    def price(self) -> Money:
        """Rounded by :meth:`core.money.Money.percent`, the one rounding rule."""
        return self.base.percent(self.percent)

    @property
    def saving(self) -> Money:
        """What this band saves on the base price; negative when it costs more."""
        return self.base - self.price


def band_prices(tier: Tier) -> list[BandPrice]:
    """The tier's three bands in order (early, grace, late), for ``/me`` and the order.
    The grace band is listed only when the tier has grace days."""
    base = tier.renewal_money
    bands = [BandPrice(RenewalBand.EARLY, tier.renewal_early_percent, base)]
    if tier.renewal_grace_days:
        bands.append(BandPrice(RenewalBand.GRACE, tier.renewal_grace_percent, base))
    bands.append(BandPrice(RenewalBand.LATE, tier.renewal_late_percent, base))
    return bands


def band_at(membership: Membership, now: datetime) -> RenewalBand:
    """The band a renewal of ``membership`` started at ``now`` falls in. The end itself
    belongs after it (the membership expires at ``ends_at``), and so does the end of the
    grace days: early is ``now < end``, grace ``end <= now < end + grace days``."""
    ends_at = membership.ends_at
    if now < ends_at:
        return RenewalBand.EARLY
    if now < ends_at + timedelta(days=membership.tier.renewal_grace_days):
        return RenewalBand.GRACE
    return RenewalBand.LATE


def renewal_price(membership: Membership, now: datetime) -> BandPrice:
    """What renewing ``membership`` costs if its order is made at ``now``: the order is
    made at this price, and keeps it however late it is paid."""
    band = band_at(membership, now)
    return next(b for b in band_prices(membership.tier) if b.band is band)


def renewal_opens_at(membership: Membership) -> datetime:
    """When the renew button appears: the tier's window before the end."""
    return membership.ends_at - timedelta(days=membership.tier.renewal_window_days)


def renewable(membership: Membership, now: datetime) -> bool:
    """Whether ``membership`` may be renewed at ``now``: a term of a paid tier, current and
    within its window, or expired (its term ran out: the grace or late band) while its
    member holds that tier by no other membership. A purged, refunded or otherwise ended
    membership is not renewed (see :func:`ending_of` for what the member can do)."""
    tier = membership.tier
    if not tier.duration_days or membership.ends_at is None or tier.renewal_money.is_zero:
        return False
    if membership.status is MembershipStatus.ACTIVE:
        return now >= renewal_opens_at(membership)
    return membership.status is MembershipStatus.EXPIRED and not membership.member.holds(tier.id)


def days_left(membership: Membership, now: datetime, time_zone: str) -> int:
    """Whole calendar days from today to the day the membership ends, in the community's
    zone ("还剩 12 天"); 0 on its last day."""
    zone = ZoneInfo(time_zone)
    return (membership.ends_at.astimezone(zone).date() - now.astimezone(zone).date()).days


@dataclass(frozen=True, slots=True)
class RenewalOffer:
    """What ``/me`` shows of one membership with a term: the days left (None once it has
    ended), the bands, the band a renewal started now falls in (``current``), and whether the renew
    button is there (and if not yet, when it will be)."""

    membership: Membership
    days_left: int | None
    bands: list[BandPrice]
    current: BandPrice
    renewable: bool
    opens_at: datetime


def renewal_offers(member: Member, now: datetime) -> dict[int, RenewalOffer]:
    """The :class:`RenewalOffer` of each of ``member``'s memberships with a term of a paid
    tier, by membership id."""
    zone = member.community.time_zone
    return {
        m.id: RenewalOffer(
            membership=m,
            days_left=max(days_left(m, now, zone), 0)
            if m.status is MembershipStatus.ACTIVE
            else None,
            bands=band_prices(m.tier),
            current=renewal_price(m, now),
            renewable=renewable(m, now),
            opens_at=renewal_opens_at(m),
        )
        for m in member.memberships
        if m.ends_at is not None and m.tier.duration_days and not m.tier.renewal_money.is_zero
    }


class EndingKind(StrEnum):
    EXPIRED = "expired"  #: its term ran out
    PURGED = "purged"  #: a purge of inactive members ended it
    REFUNDED = "refunded"  #: its payment was refunded
    DISPUTED = "disputed"  #: its payment is disputed (suspended while the dispute lasts)
    DISPUTE_LOST = "dispute_lost"  #: the payer's bank took the payment back
    BY_ADMIN = "by_admin"  #: an admin ended it, with a reason


@dataclass(frozen=True, slots=True)
class Ending:
    """Why a membership is no longer current, as its audit entry recorded it."""

    kind: EndingKind
    at: datetime
    #: The admin's words, for :attr:`EndingKind.BY_ADMIN`.
    reason: str | None = None


#: The audit actions :func:`membership.services.end_membership` writes.
_ENDING_ACTIONS = tuple(
    f"membership.{status}"
    for status in (
        MembershipStatus.ENDED,
        MembershipStatus.EXPIRED,
        MembershipStatus.PURGED,
        MembershipStatus.SUSPENDED,
    )
)
#: How an ending recorded by the system reads, by the reason it gave.
_BY_REASON = {
    "refunded": EndingKind.REFUNDED,
    "disputed": EndingKind.DISPUTED,
    "dispute_lost": EndingKind.DISPUTE_LOST,
    "term": EndingKind.EXPIRED,
    "purge": EndingKind.PURGED,
}


def _ending(entry: AuditEntry) -> Ending:
    """An ending from its audit entry: an admin's end by hand (a staff member ended it)
    keeps the reason they typed; the others are named by the reason the system gave."""
    reason = (entry.data or {}).get("reason")
    if entry.action == "membership.ended" and entry.actor.startswith("staff:"):
        return Ending(EndingKind.BY_ADMIN, entry.created_at, reason)
    kind = _BY_REASON.get(reason) or {
        "membership.expired": EndingKind.EXPIRED,
        "membership.purged": EndingKind.PURGED,
        "membership.suspended": EndingKind.DISPUTED,
    }.get(entry.action)
    if kind is None:  # ended by the system for a reason we have no words for
        return Ending(EndingKind.BY_ADMIN, entry.created_at, reason)
    return Ending(kind, entry.created_at)


def endings_of(member: Member) -> dict[int, Ending]:
    """Why each of ``member``'s memberships that is not active ended (the latest audit
    entry that ended it), by membership id; for ``/me``."""
    ended = [m.id for m in member.memberships if m.status is not MembershipStatus.ACTIVE]
    if not ended:
        return {}
    entries = db.session.scalars(
        sa.select(AuditEntry)
        .where(
            AuditEntry.target_type == Membership.__tablename__,
            AuditEntry.target_id.in_(ended),
            AuditEntry.action.in_(_ENDING_ACTIONS),
        )
        .order_by(AuditEntry.id)
    )
    # The latest entry of each membership wins (a restored one may have ended twice).
    return {entry.target_id: _ending(entry) for entry in entries}
