"""Commands for perks: the demo community's perks, coupon, course and offers."""

from __future__ import annotations

import click
import sqlalchemy as sa

from core.clock import utcnow
from core.db import db
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
        description="新成员九折 · 10% off for newcomers",
        percent_off=10,
        currency=community.currency,
        created_at=now,
        tiers=[main],
    )
    course = Course(
        community=community,
        code="writing",
        title="21天写作课 · Writing in 21 days",
        description="每天一篇短文，老师逐篇点评。\nA short text a day, each one reviewed.",
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
                name="读书券 · Book voucher",
                description="凭券到合作书店领一本书 · One book at our partner bookshop",
                kind=PerkKind.ITEM,
                link_url="https://example.com/qunmen-demo/voucher",
                stock=20,
                tier=main,
                created_at=now,
            ),
            Perk(
                community=community,
                name="元老礼包 · Founders' pack",
                kind=PerkKind.LINK,
                link_url="https://example.com/qunmen-demo/founders",
                max_member_number=100,
                min_tenure_days=180,
                created_at=now,
            ),
            Offer(
                community_id=community.id,
                course=course,
                name="成员八折 · Members 20% off",
                percent_off=20,
                created_at=now,
            ),
            Offer(
                community_id=community.id,
                course=course,
                name="老成员七折 · Veterans 30% off",
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
    click.echo(f"demo perks added; coupon {DEMO_COUPON}" if added else "demo perks exist already")
