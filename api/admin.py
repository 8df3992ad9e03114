"""Admin pages for a community's API tokens and webhook endpoints (the owner's): make a
token (its secret shown once), revoke it; add an endpoint (its signing secret shown once,
and again when rolled), turn it off and on, see each delivery's attempts with their
answers, and send an event again."""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_babel import lazy_pgettext
from flask_login import current_user, login_required
from sqlalchemy.orm import selectinload

from api.models import SCOPES, ApiToken
from api.tokens import create_token, revoke_token
from core import audit
from core.auth import load_for, requires
from core.clock import utcnow
from core.db import db
from core.events import (
    EVENT_TYPES,
    DeliveryStatus,
    Event,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEndpoint,
)
from core.labels import enum_labels
from core.webhooks_out import UnsafeURL, create_endpoint, replay_event, roll_secret, set_enabled
from membership.models import Community

bp = Blueprint("api_admin", __name__, url_prefix="/admin")

#: The events and attempts a page shows.
RECENT = 50


@bp.before_request
@login_required
def _staff_only() -> None:
    """Every page here is for logged-in staff."""


@bp.route("/communities/<int:community_id>/api", methods=["GET", "POST"])
@requires("staff.manage")
def tokens(community_id: int):
    """The community's tokens; POST makes one, shown once on the answer."""
    community = load_for(Community, community_id, "staff.manage")
    secret = None
    if request.method == "POST":
        try:
            token, secret = create_token(
                community.id,
                request.form.get("name", "")[:60],
                request.form.getlist("scopes"),
                actor=current_user.actor,
                now=utcnow(),
            )
        except ValueError as refusal:
            flash(str(refusal), "error")
        else:
            db.session.commit()
            flash(_("Token %(name)s made; it is shown this once", name=token.name), "ok")
    listed = db.session.scalars(
        sa.select(ApiToken).where(ApiToken.community_id == community.id).order_by(ApiToken.id)
    ).all()
    return render_template(
        "admin/api_tokens.html", community=community, tokens=listed, scopes=SCOPES, secret=secret
    )


@bp.post("/api-tokens/<int:token_id>/revoke")
@requires("staff.manage")
def revoke(token_id: int):
    token = load_for(ApiToken, token_id, "staff.manage")
    revoke_token(token, actor=current_user.actor, now=utcnow())
    db.session.commit()
    flash(_("Token %(name)s revoked", name=token.name), "ok")
    return redirect(url_for(".tokens", community_id=token.community_id))


@bp.route("/communities/<int:community_id>/webhooks", methods=["GET", "POST"])
@requires("staff.manage")
def endpoints(community_id: int):
    """The community's endpoints and its latest events with their deliveries; POST adds
    an endpoint, whose secret is shown once on the answer."""
    community = load_for(Community, community_id, "staff.manage")
    secret = None
    if request.method == "POST":
        try:
            endpoint = create_endpoint(
                community.id,
                request.form.get("url", "").strip()[:500],
                request.form.getlist("event_types"),
                actor=current_user.actor,
                now=utcnow(),
            )
        except (UnsafeURL, ValueError) as refusal:
            flash(str(refusal), "error")
        else:
            db.session.commit()
            secret = endpoint.secret
            flash(_("Endpoint added; its secret is shown once"), "ok")
    listed = db.session.scalars(
        sa.select(WebhookEndpoint)
        .where(WebhookEndpoint.community_id == community.id)
        .order_by(WebhookEndpoint.id)
    ).all()
    events = db.session.scalars(
        sa.select(Event)
        .where(Event.community_id == community.id)
        .order_by(Event.id.desc())
        .limit(RECENT)
    ).all()
    deliveries = db.session.scalars(
        sa.select(WebhookDelivery)
        .where(WebhookDelivery.event_id.in_([e.id for e in events]))
        .options(selectinload(WebhookDelivery.endpoint))
        .order_by(WebhookDelivery.id)
    ).all()
    by_event: dict[int, list[WebhookDelivery]] = {}
    for delivery in deliveries:
        by_event.setdefault(delivery.event_id, []).append(delivery)
    return render_template(
        "admin/webhooks.html",
        community=community,
        endpoints=listed,
        events=events,
        deliveries=by_event,
        event_types=EVENT_TYPES,
        secret=secret,
    )


@bp.post("/webhooks/<int:endpoint_id>")
@requires("staff.manage")
def endpoint_action(endpoint_id: int):
    """Turn an endpoint off or on, or roll its secret (the form's ``action``)."""
    endpoint = load_for(WebhookEndpoint, endpoint_id, "staff.manage")
    action = request.form.get("action")
    if action not in ("enable", "disable", "roll"):
        abort(400)
    now = utcnow()
    secret = None
    if action == "roll":
        secret = roll_secret(endpoint, actor=current_user.actor, now=now)
    else:
        set_enabled(endpoint, action == "enable", actor=current_user.actor, now=now)
    db.session.commit()
    if secret:
        flash(_("New signing secret (shown once): %(secret)s", secret=secret), "ok")
    return redirect(url_for(".endpoints", community_id=endpoint.community_id))


@bp.get("/webhook-deliveries/<int:delivery_id>")
@requires("staff.manage")
def delivery(delivery_id: int):
    """One delivery's attempts, each with its answer."""
    shown = load_for(WebhookDelivery, delivery_id, "staff.manage")
    attempts = db.session.scalars(
        sa.select(WebhookAttempt)
        .where(WebhookAttempt.delivery_id == shown.id)
        .order_by(WebhookAttempt.id.desc())
        .limit(RECENT)
    ).all()
    community = db.session.get(Community, shown.event.community_id)
    return render_template(
        "admin/webhook_delivery.html", delivery=shown, attempts=attempts, community=community
    )


@bp.post("/events/<int:event_id>/replay")
@requires("staff.manage")
def replay(event_id: int):
    event = load_for(Event, event_id, "staff.manage")
    count = replay_event(event, actor=current_user.actor, now=utcnow())
    db.session.commit()
    flash(_("Queued again for %(count)s endpoints", count=count), "ok")
    return redirect(url_for(".endpoints", community_id=event.community_id))


#: What a delivery's state is called on the webhook pages (core knows no words).
DELIVERY_STATUS_LABELS = enum_labels(
    DeliveryStatus,
    {
        DeliveryStatus.PENDING: lazy_pgettext("status", "Pending"),
        DeliveryStatus.SENDING: lazy_pgettext("status", "Sending"),
        DeliveryStatus.DELIVERED: lazy_pgettext("status", "Delivered"),
        DeliveryStatus.FAILED: lazy_pgettext("status", "Failed"),
    },
)


def _token_names(names: list[str]) -> dict[str, str]:
    """The audit log's names for ``token:<name>`` actors (what a token did through the API)."""
    return {name: _("API token %(name)s", name=name) for name in names}


audit.register_actor_names("token", _token_names)

#: What this package's audit actions and tables are called on the audit log.
audit.register_labels(
    {
        "api_token.created": _l("API token made"),
        "api_token.revoked": _l("API token revoked"),
    },
    {
        "api_tokens": _l("API token"),
    },
)
audit.register_details({"scopes": _l("Scopes")})
