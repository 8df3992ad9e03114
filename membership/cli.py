"""Command-line tasks for communities."""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import click
import qrcode
import sqlalchemy as sa
from flask.cli import with_appcontext
from flask_babel import force_locale
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from qrcode.image.pure import PyPNGImage

from core import audit
from core.clock import utcnow
from core.db import begin_snapshot, db
from core.exporters import csv_lines, write_xlsx
from core.i18n import DEFAULT_LOCALE, LOCALES
from core.outbox import drain_outbox
from core.webhooks_out import drain_webhooks
from membership import demo_content, figures, wecom
from membership.access import drain
from membership.exports import community_revenue
from membership.lifecycle import expire_memberships, send_reminders
from membership.live_codes import group_warnings, tell_admins
from membership.models import Community, Group, Tier, TierAudience, TierKind
from membership.services import seats_taken

DEMO_SLUG = "demo"


def _qr_png(text: str) -> bytes:
    buffer = io.BytesIO()
    qrcode.make(text, image_factory=PyPNGImage, box_size=8, border=2).save(buffer)
    return buffer.getvalue()


def seed_demo_community() -> Community:
    """The demo community, created once: a free lobby, a ¥99 main tier, a ¥9 re-entry tier
    and two WeChat groups with QR images. Running it again changes nothing."""
    community = db.session.scalar(sa.select(Community).where(Community.slug == DEMO_SLUG))
    if community is not None:
        return community
    now = utcnow()
    community = Community(
        **demo_content.COMMUNITY,
        slug=DEMO_SLUG,
        currency="CNY",
        time_zone="Asia/Shanghai",
        member_number_pattern="####",
        created_at=now,
    )
    lobby_group = Group(
        community=community,
        name=demo_content.LOBBY_GROUP,
        platform="wechat",
        capacity=500,
        qr_image=_qr_png(demo_content.QR_TEXT[demo_content.LOBBY_GROUP]),
        qr_mime="image/png",
        created_at=now,
    )
    main_group = Group(
        community=community,
        name=demo_content.MAIN_GROUP,
        platform="wechat",
        capacity=500,
        qr_image=_qr_png(demo_content.QR_TEXT[demo_content.MAIN_GROUP]),
        qr_mime="image/png",
        created_at=now,
    )
    tiers = [
        Tier(
            community=community,
            code="lobby",
            **demo_content.TIERS["lobby"],
            kind=TierKind.FREE,
            is_lobby=True,
            price=0,
            currency="CNY",
            sort_order=0,
            groups=[lobby_group],
        ),
        Tier(
            community=community,
            code="main",
            **demo_content.TIERS["main"],
            kind=TierKind.PAID,
            price=9900,
            currency="CNY",
            sort_order=1,
            groups=[main_group],
        ),
        Tier(
            community=community,
            code="reentry",
            **demo_content.TIERS["reentry"],
            kind=TierKind.PAID,
            price=900,
            currency="CNY",
            sort_order=2,
            audience=TierAudience.RETURNING,
            groups=[main_group],
        ),
    ]
    db.session.add_all([community, lobby_group, main_group, *tiers])
    audit.record("community.seeded", community, actor="cli", now=now)
    return community


@click.command("seed-demo")
@with_appcontext
def seed_demo_command() -> None:
    """Create the demo community (once) and print its join page path."""
    community = seed_demo_community()
    db.session.commit()
    click.echo(_("Demo community ready: %(path)s", path="/join/" + community.slug))


@click.command("expire-memberships")
@with_appcontext
def expire_memberships_command() -> None:
    """Remind members whose term ends soon, and end the memberships whose term ran out
    (revoking their invitations). Run it daily."""
    messages = send_reminders()
    count = expire_memberships()
    db.session.commit()
    click.echo(
        _(
            "Reminders sent: %(reminders)s; memberships expired: %(expired)s",
            reminders=len(messages),
            expired=count,
        )
    )


@click.command("worker")
@click.option("--once", is_flag=True, help="Run the due tasks, then stop.")
@click.option("--interval", default=5.0, show_default=True, help="Seconds between rounds.")
@with_appcontext
def worker_command(once: bool, interval: float) -> None:
    """Make the queued platform calls (Telegram links, removal tasks) and send the queued
    messages, with retries."""
    while True:
        ran, sent, posted = drain(), drain_outbox(), drain_webhooks()
        if once:
            click.echo(
                _(
                    "Platform tasks run: %(ran)s; messages tried: %(sent)s; "
                    "webhooks tried: %(posted)s",
                    ran=ran,
                    sent=sent,
                    posted=posted,
                )
            )
            return
        db.session.remove()
        time.sleep(interval)


@click.command("watch-groups")
@with_appcontext
def watch_groups_command() -> None:
    """Tell admins about group QR codes expiring within a day (or expired) and tiers whose
    groups are nearly full, each once; queue a reconciliation of the WeCom groups. Run it
    hourly."""
    now, told = utcnow(), 0
    communities = db.session.scalars(sa.select(Community).order_by(Community.id)).all()
    taken = seats_taken([g.id for c in communities for g in c.groups])
    for community in communities:
        told += tell_admins(community, group_warnings(community, taken, now=now), now=now)
    queued = wecom.configured() and not wecom.reconciliation_pending()
    if queued:
        wecom.queue_reconciliation(actor="system", now=now)
    db.session.commit()
    if queued:
        click.echo(_("Warnings sent: %(told)s; WeCom reconciliation queued", told=told))
    else:
        click.echo(_("Warnings sent: %(told)s; WeCom reconciliation not queued", told=told))


@click.command("export-revenue")
@click.option("--community", "slug", required=True, help="The community's slug.")
@click.option("--from", "first_day", required=True, type=click.DateTime(["%Y-%m-%d"]))
@click.option("--to", "last_day", required=True, type=click.DateTime(["%Y-%m-%d"]))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=os.cpu_count,
    show_default="the CPUs",
    help="Processes writing the movements' CSV side by side (SQLite).",
)
@click.option(
    "--locale",
    type=click.Choice(list(LOCALES)),
    help="The language of the column names and labels (default: the community's, else zh_CN).",
)
@with_appcontext
def export_revenue_command(
    slug: str, first_day, last_day, out: Path, jobs: int, locale: str | None
) -> None:
    """Export a community's revenue: OUT.csv (movements) and OUT-totals.csv, or one
    workbook when OUT ends in .xlsx. Streams, with a progress bar. A range that ends
    before it starts is refused (exit status 1), nothing written."""
    community = db.session.scalar(sa.select(Community).where(Community.slug == slug))
    if community is None:
        raise click.ClickException(f"no community {slug!r}")
    if last_day < first_day:
        raise click.ClickException(
            f"--to {last_day:%Y-%m-%d} is before --from {first_day:%Y-%m-%d}: "
            "the range ends before it starts"
        )
    begin_snapshot()  # the totals and the movements read the same ledger
    rows, totals = community_revenue(community, first_day.date(), last_day.date(), jobs=jobs)
    with (
        force_locale(locale or community.locale or DEFAULT_LOCALE),
        click.progressbar(length=rows.count(), label="Exporting", file=sys.stderr) as bar,
    ):
        if out.suffix == ".xlsx":
            write_xlsx(out, rows, totals, progress=bar.update)
        else:
            with out.open("wb") as file:
                file.writelines(csv_lines(rows, bar.update, jobs=jobs))
            totals_path = out.with_name(f"{out.stem}-totals.csv")
            with totals_path.open("wb") as file:
                file.writelines(csv_lines(totals))
    click.echo(f"Wrote {out}")


audit.register_labels({"community.figures_rebuilt": _l("Daily figures rebuilt")})


@click.command("figures-rebuild")
@click.option("--community", "slug", help="The community's slug (default: every community).")
@with_appcontext
def figures_rebuild_command(slug: str | None) -> None:
    """Recompute the daily figures the dashboard reads from the ledger, memberships, events
    and applications, and commit: after rows were written around the ORM or restored from
    elsewhere (a change of a community's time zone does it by itself)."""
    select = sa.select(Community).order_by(Community.id)
    if slug is not None:
        select = select.where(Community.slug == slug)
    communities = db.session.scalars(select).all()
    if slug is not None and not communities:
        raise click.ClickException(_("No community %(slug)s", slug=slug))
    rows = figures.rebuild(db.session, [c.id for c in communities])
    now = utcnow()
    for community in communities:
        audit.record("community.figures_rebuilt", community, actor="cli", now=now)
    db.session.commit()
    click.echo(
        _(
            "Daily figures rebuilt: %(rows)s rows for %(communities)s communities",
            rows=rows,
            communities=len(communities),
        )
    )
