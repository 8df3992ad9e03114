"""``flask payments …``: the webhook inbox's failures, payments no notification settled,
and reconciliation with the providers' statements."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from pathlib import Path

import click
import sqlalchemy as sa
from flask.cli import AppGroup
from flask_babel import gettext as _

from core.clock import utcnow
from core.db import db
from core.secrets import SecretsUnavailable
from payments import inbox
from payments.accounts import reseal_all
from payments.models import Payment, PaymentStatus, WebhookEvent
from payments.providers import ProviderError, get_provider
from payments.reconciliation import READERS, StatementError, reconcile
from payments.services import settle_from_provider

log = logging.getLogger(__name__)

payments_cli = AppGroup("payments", help="Payments: failed webhooks, unsettled payments.")


@payments_cli.command("failed")
def failed_command() -> None:
    """List webhook deliveries that failed on our side, or were left unfinished."""
    events = inbox.failed_events()
    unfinished = _("never finished")
    for event in events:
        click.echo(
            f"{event.id}\t{event.provider}\t{event.status}\t"
            f"{event.received_at:%Y-%m-%d %H:%M:%S}Z\t{event.event_id or '-'}\t"
            f"{event.detail or unfinished}"
        )
    click.echo(_("Failed: %(count)s", count=len(events)))


@payments_cli.command("replay")
@click.argument("event_ids", nargs=-1, type=int)
@click.option("--all", "replay_all", is_flag=True, help="Replay every one `failed` lists.")
def replay_command(event_ids: tuple[int, ...], replay_all: bool) -> None:
    """Process failed or unfinished deliveries again (by inbox id, or --all)."""
    if not event_ids and not replay_all:
        raise click.UsageError(_("Give inbox ids, or --all"))
    events = (
        inbox.failed_events()
        if replay_all
        else [db.session.get(WebhookEvent, i) for i in event_ids]
    )
    for event in events:
        if event is None:
            raise click.ClickException(_("No such inbox event"))
        result = inbox.replay(event)
        click.echo(f"{event.id}\t{result.status}\t{result.message}")


def settle_once(older_than_minutes: int) -> tuple[int, int]:
    """Ask providers about payments still waiting after ``older_than_minutes``, and close
    those whose orders expired. Returns (changed, errors)."""
    cutoff = utcnow() - timedelta(minutes=older_than_minutes)
    waiting = db.session.scalars(
        sa.select(Payment.id).where(
            Payment.status == PaymentStatus.CREATED, Payment.created_at <= cutoff
        )
    ).all()
    changed = errors = 0
    for payment_id in waiting:
        payment = db.session.get(Payment, payment_id)
        try:
            changed += settle_from_provider(payment)
        except ProviderError as error:
            db.session.rollback()
            errors += 1
            log.warning("could not settle payment %s: %s", payment_id, error)
    return changed, errors


@payments_cli.command("settle")
@click.option("--older-than", default=2, show_default=True, help="Minutes a payment waited.")
@click.option("--every", type=int, help="Run again every N seconds, until stopped.")
def settle_command(older_than: int, every: int | None) -> None:
    """Query providers for payments whose notification never came; close the unpaid
    ones whose orders expired. Run it on a schedule (cron, or --every)."""
    while True:
        changed, errors = settle_once(older_than)
        click.echo(_("Settled: %(changed)s; errors: %(errors)s", changed=changed, errors=errors))
        if not every:
            if errors:
                raise SystemExit(1)
            return
        db.session.remove()
        time.sleep(every)


@payments_cli.command("reconcile")
@click.argument("provider", type=click.Choice(sorted(READERS)))
@click.option("--file", "path", type=click.Path(exists=True, dir_okay=False), help="Statement.")
@click.option("--day", type=click.DateTime(["%Y-%m-%d"]), help="Download WeChat Pay's bill.")
@click.option(
    "--community", "community_id", type=int, help="The community id whose own account it is."
)
def reconcile_command(
    provider: str, path: str | None, day: datetime | None, community_id: int | None
) -> None:
    """Match a provider's statement (WeChat Pay's daily bill, Stripe's itemized balance
    report CSV) against the ledger; record the fees. --day downloads WeChat Pay's bill.
    --community: the statement of that community's own account (else the install's)."""
    if (path is None) == (day is None):
        raise click.UsageError(_("Give --file, or --day (WeChat Pay)"))
    if path is not None:
        text, name = Path(path).read_text(encoding="utf-8-sig"), Path(path).name
    else:
        try:
            wechat = get_provider("wechatpay", community_id)
        except ProviderError as error:
            raise click.ClickException(str(error)) from error
        if provider != "wechatpay" or wechat is None:
            raise click.UsageError(_("--day downloads WeChat Pay's bill, when it is configured"))
        try:
            text = wechat.download_bill(day.date())
        except ProviderError as error:
            raise click.ClickException(str(error)) from error
        name = f"wechatpay-{day:%Y%m%d}.txt"
    try:
        lines = READERS[provider](text)
    except StatementError as error:
        raise click.ClickException(str(error)) from error
    report = reconcile(
        provider, lines, filename=name, actor="cli", now=utcnow(), community_id=community_id
    )
    db.session.commit()
    click.echo(
        "\t".join(
            (
                _("day"),
                _("theirs"),
                _("ours"),
                _("matched"),
                _("missing from ours"),
                _("missing from theirs"),
                _("differ"),
            )
        )
    )
    for s in report.days:
        click.echo(
            f"{s.day}\t{s.theirs}\t{s.ours}\t{s.matched}\t{s.missing_ours}\t"
            f"{s.missing_theirs}\t{s.differ}"
        )
    for d in report.differences:
        click.echo(
            f"{d.problem}\t{d.day}\t{d.kind}\t{d.reference}\tours={d.ours}\ttheirs={d.theirs}"
        )
    click.echo(_("Fees recorded: %(count)s", count=report.reconciliation.fees_recorded))


@payments_cli.command("rotate-secrets")
def rotate_secrets_command() -> None:
    """Seal every community's payment secrets again under the first key of SECRETS_KEYS.
    Rotate by setting SECRETS_KEYS="new,old", running this, then dropping the old key."""
    try:
        count = reseal_all(actor="cli")
    except SecretsUnavailable as error:
        db.session.rollback()
        raise click.ClickException(str(error)) from error
    db.session.commit()
    click.echo(_("Accounts re-encrypted: %(count)s", count=count))
