"""Commands for perks: the demo community's perks, coupon, course and offers."""

from __future__ import annotations

import click
import sqlalchemy as sa
from flask_babel import gettext as _

from core.clock import utcnow
from core.db import db
from membership import demo_content
from membership.cli import DEMO_SLUG
from membership.models import Community, Tier
from perks.models import Coupon, Course, Offer, Perk, PerkKind

#: The demo's coupon code for the main tier: 10% off.
DEMO_COUPON = "WELCOME10"


def seed_demo_perks() -> bool:
    """Give the demo community (seeded before) a coupon, two perks, a launched course and
    two offers. Running it again changes nothing; returns whether it added them."""
    community = db.session.scalar(sa.select(Community).where(Community.slug == DEMO_SLUG))
    if community is None or db.session.scalar(
        sa.select(Coupon.id).where(Coupon.community_id == community.id)
    ):
        return False
    now = utcnow()
    main = db.session.scalar(
        sa.select(Tier).where(Tier.community_id == community.id, Tier.code == "main")
    )
    coupon = Coupon(
        community=community,
        code=DEMO_COUPON,
        description=demo_content.COUPON_DESCRIPTION,
        percent_off=10,
        currency=community.currency,
        created_at=now,
        tiers=[main],
    )
    course = Course(
        community=community,
        code="writing",
        **demo_content.COURSE,
        price=19900,
        currency=community.currency,
        access_url="https://example.com/qunmen-demo/writing",
        launched_at=now,
        created_at=now,
    )
    db.session.add_all(
        [
            coupon,
            course,
            Perk(
                community=community,
                **demo_content.BOOK_VOUCHER,
                kind=PerkKind.ITEM,
                link_url="https://example.com/qunmen-demo/voucher",
                stock=20,
                tier=main,
                created_at=now,
            ),
            Perk(
                community=community,
                name=demo_content.FOUNDERS_PACK,
                kind=PerkKind.LINK,
                link_url="https://example.com/qunmen-demo/founders",
                max_member_number=100,
                min_tenure_days=180,
                created_at=now,
            ),
            Offer(
                community_id=community.id,
                course=course,
                name=demo_content.MEMBERS_OFFER,
                percent_off=20,
                created_at=now,
            ),
            Offer(
                community_id=community.id,
                course=course,
                name=demo_content.VETERANS_OFFER,
                percent_off=30,
                min_tenure_days=365,
                created_at=now,
            ),
        ]
    )
    return True


@click.command("seed-demo-perks")
def seed_demo_perks_command() -> None:
    """Add the demo community's perks, coupon, course and offers (after seed-demo)."""
    added = seed_demo_perks()
    db.session.commit()
    if added:
        click.echo(_("Demo perks added; coupon %(code)s", code=DEMO_COUPON))
    else:
        click.echo(_("The demo perks exist already"))
