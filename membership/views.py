"""The prospect's and member's pages: join, payment status, the member page, invitations.

Mobile first, no JavaScript needed. One commit per request, after the services ran.
"""

from __future__ import annotations

import sqlalchemy as sa
from flask import (
    Blueprint,
    Response,
    abort,
    redirect,
    render_template,
    session,
    url_for,
)
from sqlalchemy.exc import IntegrityError
from wtforms import SelectChoice

from core.db import db
from core.security import new_token, sign, unsign
from membership.forms import JoinForm, PayAgainForm
from membership.models import (
    Application,
    ApplicationStatus,
    Community,
    ContactKind,
    Invitation,
    Member,
    Tier,
    TierAudience,
    TierKind,
)
from membership.services import JoinRefused, check_tier_open, submit_application
from payments.models import Order, OrderStatus
from payments.providers import enabled_providers
from payments.views import send_to_provider

bp = Blueprint("membership", __name__)

#: The session key that holds the member who opened their signed link.
MEMBER_SESSION_KEY = "member_id"


def _community(slug: str) -> Community:
    community = db.session.scalar(sa.select(Community).where(Community.slug == slug))
    if community is None:
        abort(404)
    return community


def _listed_tiers(community: Community) -> list[Tier]:
    return [t for t in community.tiers if t.active and t.audience is TierAudience.EVERYONE]


@bp.get("/join/<slug>")
def community_page(slug: str):
    community = _community(slug)
    return render_template(
        "join/community.html", community=community, tiers=_listed_tiers(community)
    )


def _offer_providers(form: JoinForm | PayAgainForm) -> None:
    """Fill the form's provider choice with the enabled providers, the first preselected."""
    form.provider.choices = [SelectChoice(p.name, p.label) for p in enabled_providers().values()]
    if form.provider.data is None and form.provider.choices:
        form.provider.data = form.provider.choices[0].value


def _join_form(tier: Tier) -> JoinForm:
    form = JoinForm()
    if tier.kind is TierKind.FREE:
        del form.provider  # nothing to pay
    else:
        _offer_providers(form)
    if not form.submission_key.data:
        form.submission_key.data = new_token(24)
    return form


@bp.route("/join/<slug>/<tier_code>", methods=["GET", "POST"])
def join(slug: str, tier_code: str):
    community = _community(slug)
    tier = db.session.scalar(
        sa.select(Tier).where(Tier.community_id == community.id, Tier.code == tier_code)
    )
    if tier is None:
        abort(404)
    try:
        check_tier_open(tier)
    except JoinRefused as refusal:
        return render_template(
            "join/closed.html", community=community, tier=tier, reason=str(refusal)
        ), 403
    form = _join_form(tier)
    if not form.validate_on_submit():
        status = 422 if form.is_submitted() else 200
        return render_template("join/form.html", community=community, tier=tier, form=form), status
    try:
        application = submit_application(
            tier,
            display_name=form.display_name.data,
            contact_kind=ContactKind(form.contact_kind.data),
            contact_value=form.contact_value.data,
            submission_key=form.submission_key.data,
        )
        db.session.commit()
    except IntegrityError:
        # The same form, sent twice at once: the other request made the application.
        db.session.rollback()
        application = db.session.scalar(
            sa.select(Application).where(Application.submission_key == form.submission_key.data)
        )
        if application is None:
            raise
    return _continue(application, form.provider.data if "provider" in form else None)


def _continue(application: Application, provider_name: str | None) -> Response:
    """Send the applicant on: to the provider if their order awaits payment, else to
    their status page."""
    status_url = url_for(
        "membership.status",
        slug=application.community.slug,
        public_id=application.public_id,
        _external=True,
    )
    if application.status is not ApplicationStatus.AWAITING_PAYMENT:
        return redirect(status_url)
    return send_to_provider(
        db.session.get(Order, application.order_id),
        provider_name,
        return_url=status_url,
        cancel_url=status_url,
        actor="prospect",
    )


def _application(slug: str, public_id: str) -> Application:
    application = db.session.scalar(
        sa.select(Application).where(Application.public_id == public_id)
    )
    if application is None or application.community.slug != slug:
        abort(404)
    return application


@bp.get("/join/<slug>/status/<public_id>")
def status(slug: str, public_id: str):
    """The applicant's own page: waiting for payment, or admitted with their number."""
    application = _application(slug, public_id)
    order = db.session.get(Order, application.order_id) if application.order_id else None
    member = application.member
    if member is not None:
        session[MEMBER_SESSION_KEY] = member.id
    pay_form = PayAgainForm()
    _offer_providers(pay_form)
    return render_template(
        "join/status.html",
        application=application,
        community=application.community,
        order=order,
        latest_payment=order.payments[-1] if order and order.payments else None,
        member=member,
        member_link=_member_link(member) if member else None,
        order_open=order is not None and order.status is OrderStatus.OPEN,
        pay_form=pay_form,
    )


def _member_link(member: Member) -> str:
    """A link that opens the member's page in any browser; kept by the member."""
    return url_for("membership.member_link", token=sign("member-link", member.id), _external=True)


@bp.post("/join/<slug>/status/<public_id>/pay")
def pay_again(slug: str, public_id: str):
    """Try paying the application's order again, after a failure or a cancel."""
    application = _application(slug, public_id)
    form = PayAgainForm()
    _offer_providers(form)
    if not form.validate_on_submit():
        abort(400)
    return _continue(application, form.provider.data)


@bp.get("/me/link/<token>")
def member_link(token: str):
    """The signed link shown on the status page: remembers the member in this browser."""
    member_id = unsign("member-link", token)
    if not isinstance(member_id, int) or db.session.get(Member, member_id) is None:
        abort(404)
    session[MEMBER_SESSION_KEY] = member_id
    return redirect(url_for("membership.me"))


@bp.get("/me")
def me():
    member_id = session.get(MEMBER_SESSION_KEY)
    member = db.session.get(Member, member_id) if isinstance(member_id, int) else None
    if member is None:
        return render_template("me/anonymous.html"), 401
    return render_template("me/member.html", member=member, community=member.community)


def _valid_invitation(token: str) -> Invitation:
    """The invitation behind ``token`` if it gives access now; the same 404 otherwise, so
    a wrong, revoked or waiting token reveals nothing."""
    invitation = db.session.scalar(sa.select(Invitation).where(Invitation.token == token))
    if invitation is None or not invitation.is_valid:
        abort(404)
    return invitation


@bp.get("/invitations/<token>")
def invitation(token: str):
    invitation = _valid_invitation(token)
    return render_template("me/invitation.html", invitation=invitation, group=invitation.group)


@bp.get("/invitations/<token>/qr")
def invitation_qr(token: str):
    group = _valid_invitation(token).group
    if not group.qr_image:
        abort(404)
    response = Response(group.qr_image, mimetype=group.qr_mime)
    response.headers["Cache-Control"] = "private, no-store"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
