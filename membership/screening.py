"""Lobby screening ("登堂入室"): admins review applications to tiers that require it,
approve them with a personal pay link or reject them with a reason. Functions flush but
never commit; messages to applicants leave through the outbox after the commit."""

from __future__ import annotations

from datetime import datetime, timedelta

from flask import url_for
from flask_babel import force_locale, ngettext
from flask_babel import gettext as _

from core import audit, outbox
from core.clock import utcnow
from core.db import db
from core.outbox import MessageKind
from core.security import new_token
from membership.language import reader_locale
from membership.models import Application, ApplicationStatus, Member
from membership.services import contact_routes, follow_up_application, member_routes
from payments.models import Order
from payments.services import create_order


class ScreeningRefused(Exception):
    """The message says why, in the reader's language; nothing changed."""


def _tell(
    application: Application,
    kind: MessageKind,
    subject: str,
    body: str,
    *,
    params: dict[str, str],
    now: datetime,
) -> int:
    """Queue a message to the applicant: their WeChat when their record has it, else the
    contact they gave."""
    member = application.member
    routes = (
        member_routes(member)
        if member is not None
        else contact_routes(application.contact_kind, application.contact_value)
    )
    return outbox.enqueue(
        kind, routes, subject, body, params=params, member_id=application.member_id, now=now
    ).id


def _chosen_locale(application: Application) -> str | None:
    return application.member.locale if application.member is not None else None


def _pending(application: Application) -> None:
    if application.status is not ApplicationStatus.PENDING_REVIEW:
        raise ScreeningRefused(_("This application was reviewed already"))


def approve(application: Application, *, actor: str, now: datetime | None = None) -> int:
    """Approve: the applicant gets a personal pay link valid for the community's number of
    days. Returns the outbox message carrying it."""
    now = now or utcnow()
    _pending(application)
    community = application.community
    application.status = ApplicationStatus.APPROVED
    application.reviewed_at, application.reviewed_by = now, actor
    application.pay_token = new_token(24)
    application.pay_link_expires_at = now + timedelta(days=community.pay_link_days)
    audit.record("application.approved", application, actor=actor, now=now)
    link = url_for(
        "membership.pay_link", slug=community.slug, token=application.pay_token, _external=True
    )
    with force_locale(reader_locale(_chosen_locale(application), community)):
        subject = _("%(community)s: you are approved", community=community.name)
        body = ngettext(
            "Welcome to %(community)s! Pay within %(num)s day with your own link: %(link)s",
            "Welcome to %(community)s! Pay within %(num)s days with your own link: %(link)s",
            community.pay_link_days,
            community=community.name,
            link=link,
        )
    return _tell(
        application,
        MessageKind.PAY_LINK,
        subject,
        body,
        params={"community": community.name, "link": link},
        now=now,
    )


def auto_approve(application: Application, *, now: datetime | None = None) -> int | None:
    """Approve a new application at once when the community's auto-approve rules all hold
    for its answers (and there is at least one rule). Returns the outbox message, or None
    when it waits for an admin."""
    rules = [q for q in application.community.active_questions if q.auto_approve_answer]
    if not rules or application.status is not ApplicationStatus.PENDING_REVIEW:
        return None
    if all(rule.accepts(application.answers.get(str(rule.id))) for rule in rules):
        return approve(application, actor="system:auto-approve", now=now)
    return None


def reject(
    application: Application, reason: str, *, actor: str, now: datetime | None = None
) -> int:
    """Reject, politely, with the reason the applicant will read."""
    now = now or utcnow()
    _pending(application)
    if not reason.strip():
        raise ScreeningRefused(_("Give a reason"))
    application.status = ApplicationStatus.REJECTED
    application.reviewed_at, application.reviewed_by = now, actor
    application.review_reason = reason.strip()[:300]
    audit.record("application.rejected", application, actor=actor, data={"reason": reason}, now=now)
    community = application.community
    with force_locale(reader_locale(_chosen_locale(application), community)):
        subject = _("%(community)s: about your application", community=community.name)
        body = _(
            "Thank you for applying to %(community)s. This time we could not accept you: "
            "%(reason)s",
            community=community.name,
            reason=application.review_reason,
        )
    return _tell(
        application,
        MessageKind.NOTICE,
        subject,
        body,
        params={
            "community": community.name,
            "link": url_for("membership.community_page", slug=community.slug, _external=True),
        },
        now=now,
    )


def order_for_pay_link(
    application: Application, member: Member | None, *, now: datetime | None = None
) -> Order:
    """The order an approved applicant pays through their link: only in their own browser
    (logged in as the applicant), only until the link expires."""
    now = now or utcnow()
    if application.status not in (ApplicationStatus.APPROVED, ApplicationStatus.AWAITING_PAYMENT):
        raise ScreeningRefused(_("This pay link no longer works"))
    if member is None or application.member_id != member.id:
        raise ScreeningRefused(_("This is someone else's pay link: use your own, or log in first"))
    if application.pay_link_expires_at <= now:
        raise ScreeningRefused(_("This pay link has expired: you may apply again"))
    if application.order_id is not None:
        return db.session.get(Order, application.order_id)
    tier = application.tier
    order = create_order(
        tier.price_money,
        f"{tier.community.name} · {tier.name}",
        community_id=tier.community_id,
        product=tier.name,
        member_id=member.id,
        actor=f"member:{member.id}",
        now=now,
    )
    db.session.flush()
    application.order_id = order.id
    application.status = ApplicationStatus.AWAITING_PAYMENT
    return order


def apply_again(application: Application, *, now: datetime | None = None) -> Application:
    """After an approval's pay link expired unused, the applicant asks again: a new
    application with the same answers goes back to the queue."""
    now = now or utcnow()
    expired = (
        application.status is ApplicationStatus.APPROVED and application.pay_link_expires_at <= now
    )
    if not expired:
        raise ScreeningRefused(_("Only an expired pay link can be renewed"))
    again = follow_up_application(
        application,
        application.tier,
        member=application.member,
        status=ApplicationStatus.PENDING_REVIEW,
        now=now,
        answers=dict(application.answers),
    )
    application.pay_token = None  # the old link is dead for good
    audit.record(
        "application.submitted", again, actor="prospect", data={"again": application.id}, now=now
    )
    return again
