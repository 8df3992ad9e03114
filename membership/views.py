"""The prospect's and member's pages: join, payment status, the member page, invitations.

Mobile first, no JavaScript needed. One commit per request, after the services ran.
"""

from __future__ import annotations

import sqlalchemy as sa
from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from sqlalchemy.exc import IntegrityError
from wtforms import SelectChoice

from core import audit, outbox
from core.clock import utcnow
from core.db import db, end_transaction_keeping_objects
from core.security import new_token, same_site_path, sign, unsign
from membership.forms import (
    JoinForm,
    LoginCodeForm,
    MemberLoginForm,
    PayAgainForm,
    PayForm,
    answers_of,
    with_questions,
)
from membership.lifecycle import RenewalRefused, start_renewal
from membership.login import LoginRefused, request_code, verify_code
from membership.models import (
    Application,
    ApplicationStatus,
    Community,
    ContactKind,
    Invitation,
    InvitationStatus,
    LoginCode,
    Member,
    Membership,
    Tier,
    TierAudience,
    TierKind,
)
from membership.screening import (
    ScreeningRefused,
    apply_again,
    auto_approve,
    order_for_pay_link,
)
from membership.services import (
    AlreadyAMember,
    JoinRefused,
    check_tier_open,
    find_member_by_openid,
    submit_application,
)
from membership.visits import count_visit
from payments.discounts import DiscountRefused
from payments.models import Order, OrderStatus
from payments.providers import ProviderError, enabled_providers, get_provider
from payments.providers.wechatpay import WeChatPayProvider
from payments.views import (
    OPENID_SESSION_KEY,
    apply_discount_code,
    current_payer,
    refuse_discount_code,
    send_to_provider,
)

bp = Blueprint("membership", __name__)

#: The session key that holds the member who opened their signed link.
MEMBER_SESSION_KEY = "member_id"


def _community(slug: str) -> Community:
    community = db.session.scalar(sa.select(Community).where(Community.slug == slug))
    if community is None:
        abort(404)
    return community


def logged_in_member(community: Community | None = None) -> Member | None:
    """The member this browser is logged in as (of ``community``, when given)."""
    member_id = session.get(MEMBER_SESSION_KEY)
    member = db.session.get(Member, member_id) if isinstance(member_id, int) else None
    if member is None or (community is not None and member.community_id != community.id):
        return None
    return member


def _listed_tiers(community: Community, member: Member | None) -> list[Tier]:
    """Tiers offered on the join page: re-entry tiers only to members who may re-enter,
    members-only tiers (a season's fee) only to current members."""
    offered = {TierAudience.EVERYONE}
    if member is not None and member.may_reenter:
        offered.add(TierAudience.RETURNING)
    if member is not None and member.current_membership() is not None:
        offered.add(TierAudience.MEMBERS)
    return [t for t in community.tiers if t.active and t.audience in offered]


@bp.get("/")
def index():
    """The communities on this site, each with its join page."""
    communities = db.session.scalars(sa.select(Community).order_by(Community.id)).all()
    return render_template("join/index.html", communities=communities)


@bp.get("/join/<slug>")
def community_page(slug: str):
    community = _community(slug)
    member = logged_in_member(community)
    count_visit(community)
    return render_template(
        "join/community.html",
        community=community,
        tiers=_listed_tiers(community, member),
        member=member,
    )


def offer_providers(form: JoinForm | PayAgainForm) -> None:
    """Fill the form's provider choice with the enabled providers, the first preselected."""
    form.provider.choices = [SelectChoice(p.name, p.label) for p in enabled_providers().values()]
    if form.provider.data is None and form.provider.choices:
        form.provider.data = form.provider.choices[0].value


def _join_form(tier: Tier, member: Member | None) -> JoinForm:
    form_class = JoinForm
    if tier.requires_screening:
        form_class = with_questions(JoinForm, tier.community.active_questions)
    form = form_class()
    if member is not None:
        # A member joins as themselves: their contact is known and verified.
        del form.contact_kind, form.contact_value
        if not form.is_submitted():
            form.display_name.data = member.display_name
    if tier.kind is TierKind.FREE or tier.requires_screening:
        del form.coupon  # nothing to pay now
    if tier.kind is TierKind.FREE:
        del form.provider  # nothing to pay
    else:
        offer_providers(form)
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
    member = logged_in_member(community)
    try:
        check_tier_open(tier, member)
    except JoinRefused as refusal:
        return render_template(
            "join/closed.html", community=community, tier=tier, reason=str(refusal), member=member
        ), 403
    form = _join_form(tier, member)
    openid = session.get(OPENID_SESSION_KEY)
    if (
        member is None
        and openid
        and find_member_by_openid(community.id, openid)
        and (form.is_submitted())
    ):
        # WeChat says this person is a member already: one person, one member.
        form.validate()
        form.display_name.errors.append(str(AlreadyAMember()))
        return render_template(
            "join/form.html",
            community=community,
            tier=tier,
            form=form,
            member=None,
            login_needed=True,
        ), 422
    if not form.validate_on_submit():
        status = 422 if form.is_submitted() else 200
        return render_template(
            "join/form.html", community=community, tier=tier, form=form, member=member
        ), status
    try:
        application = submit_application(
            tier,
            display_name=form.display_name.data,
            contact_kind=ContactKind(form.contact_kind.data) if member is None else None,
            contact_value=form.contact_value.data if member is None else None,
            submission_key=form.submission_key.data,
            member=member,
            answers=answers_of(form, community.active_questions)
            if tier.requires_screening
            else None,
        )
        approval = auto_approve(application) if tier.requires_screening else None
        if "coupon" in form and form.coupon.data and application.order_id:
            apply_discount_code(
                db.session.get(Order, application.order_id),
                form.coupon.data,
                product=f"tier:{tier.id}",
                buyer=f"member:{member.id}"
                if member
                else f"{application.contact_kind}:{application.contact_value}",
                actor=f"member:{member.id}" if member else "prospect",
            )
        db.session.commit()
        if approval is not None:
            outbox.deliver(approval)
    except JoinRefused as refusal:
        db.session.rollback()
        (form.display_name if member else form.contact_value).errors.append(str(refusal))
        return render_template(
            "join/form.html",
            community=community,
            tier=tier,
            form=form,
            member=member,
            login_needed=isinstance(refusal, AlreadyAMember),
        ), 422
    except DiscountRefused as refusal:
        form.coupon.errors.append(refuse_discount_code(refusal))
        return render_template(
            "join/form.html", community=community, tier=tier, form=form, member=member
        ), 422
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
    offer_providers(pay_form)
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
    offer_providers(form)
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
    member = logged_in_member()
    if member is None:
        return render_template("me/anonymous.html"), 401
    pay_form = PayForm()
    offer_providers(pay_form)
    return render_template(
        "me/member.html", member=member, community=member.community, pay_form=pay_form
    )


@bp.post("/me/renew/<int:membership_id>")
def renew(membership_id: int):
    """Pay to extend a membership with a term, from its current end."""
    member = logged_in_member()
    membership = db.session.get(Membership, membership_id)
    if member is None or membership is None or membership.member_id != member.id:
        abort(404)
    form = PayForm()
    offer_providers(form)
    if not form.validate_on_submit():
        if not form.coupon.errors:
            abort(400)
        flash(form.coupon.errors[0], "error")
        return redirect(url_for(".me"))
    try:
        renewal = start_renewal(membership)
        if form.coupon.data:
            apply_discount_code(
                db.session.get(Order, renewal.order_id),
                form.coupon.data,
                product=f"tier:{membership.tier_id}",
                buyer=f"member:{member.id}",
                actor=f"member:{member.id}",
            )
        db.session.commit()
    except RenewalRefused as refusal:
        db.session.rollback()
        flash(str(refusal), "error")
        return redirect(url_for(".me"))
    except DiscountRefused as refusal:
        flash(refuse_discount_code(refusal), "error")
        return redirect(url_for(".me"))
    return _continue(renewal, form.provider.data)


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


@bp.route("/join/<slug>/login", methods=["GET", "POST"])
def login(slug: str):
    """A member asks for a one-time code; it goes to their contact (the log in the demo)."""
    community = _community(slug)
    form = MemberLoginForm()
    if form.validate_on_submit():
        try:
            pending, message_id = request_code(
                community, ContactKind(form.contact_kind.data), form.contact_value.data
            )
            db.session.commit()
        except LoginRefused as refusal:
            db.session.rollback()
            form.contact_value.errors.append(str(refusal))
        else:
            if message_id is not None:
                outbox.deliver(message_id)
            return redirect(
                url_for(
                    ".login_code",
                    slug=slug,
                    public_id=pending.public_id,
                    next=request.args.get("next"),
                )
            )
    status = 422 if form.errors else 200
    wechat = _wechat_oauth_provider() is not None and current_payer().in_wechat
    return render_template(
        "join/login.html", community=community, form=form, wechat_login=wechat
    ), status


@bp.route("/join/<slug>/login/<public_id>", methods=["GET", "POST"])
def login_code(slug: str, public_id: str):
    community = _community(slug)
    pending = db.session.scalar(
        sa.select(LoginCode).where(
            LoginCode.public_id == public_id, LoginCode.community_id == community.id
        )
    )
    if pending is None:
        abort(404)
    form = LoginCodeForm()
    if form.validate_on_submit():
        try:
            member = verify_code(pending, form.code.data)
        except LoginRefused as refusal:
            form.code.errors.append(str(refusal))
        else:
            session[MEMBER_SESSION_KEY] = member.id
            db.session.commit()
            return redirect(same_site_path(request.args.get("next")) or url_for(".me"))
        db.session.commit()  # the wrong try counts
    status = 422 if form.errors else 200
    return render_template(
        "join/login_code.html", community=community, form=form, pending=pending
    ), status


@bp.post("/me/logout")
def logout():
    session.pop(MEMBER_SESSION_KEY, None)
    return redirect(url_for(".me"))


def _approved_application(community: Community, token: str) -> Application:
    """The application a personal pay link belongs to, or a 404."""
    application = db.session.scalar(
        sa.select(Application).where(
            Application.pay_token == token, Application.community_id == community.id
        )
    )
    if application is None:
        abort(404)
    return application


@bp.route("/join/<slug>/pay/<token>", methods=["GET", "POST"])
def pay_link(slug: str, token: str):
    """An approved applicant's personal pay link."""
    community = _community(slug)
    application = _approved_application(community, token)
    member = logged_in_member(community)
    form = PayForm()
    offer_providers(form)
    refusal, status = None, 200
    try:
        order = order_for_pay_link(application, member)
    except ScreeningRefused as error:
        db.session.rollback()
        refusal, order, status = str(error), None, 403
    if order is not None and order.payments:
        del form.coupon  # a payment was tried: the price is settled
    if order is not None and form.validate_on_submit():
        try:
            if "coupon" in form and form.coupon.data:
                apply_discount_code(
                    order,
                    form.coupon.data,
                    product=f"tier:{application.tier_id}",
                    buyer=f"member:{member.id}",
                    actor=f"member:{member.id}",
                )
            db.session.commit()
        except DiscountRefused as error:
            form.coupon.errors.append(refuse_discount_code(error))
        else:
            return _continue(application, form.provider.data)
    if form.errors:
        status = 422
    db.session.rollback()
    expired = application.pay_link_expires_at <= utcnow() and order is None
    return render_template(
        "join/pay_link.html",
        community=community,
        application=application,
        form=form,
        refusal=refusal,
        expired=expired,
        member=member,
    ), status


@bp.post("/join/<slug>/pay/<token>/again")
def apply_again_view(slug: str, token: str):
    community = _community(slug)
    application = _approved_application(community, token)
    if application.member != logged_in_member(community):
        abort(404)
    try:
        again = apply_again(application)
    except ScreeningRefused as refusal:
        db.session.rollback()
        flash(str(refusal), "error")
        return redirect(url_for(".pay_link", slug=slug, token=token))
    db.session.commit()
    return redirect(url_for(".status", slug=slug, public_id=again.public_id))


@bp.post("/invitations/<token>/joined")
def mark_joined(token: str):
    """The member tells us they are in the group."""
    invitation = _valid_invitation(token)
    if invitation.status is InvitationStatus.ISSUED:
        invitation.status = InvitationStatus.JOINED
        audit.record("invitation.joined", invitation, actor=f"member:{invitation.member_id}")
        db.session.commit()
    return redirect(url_for(".invitation", token=token))


def _wechat_oauth_provider() -> WeChatPayProvider | None:
    """WeChat Pay's provider, when it can do OAuth (the app secret is set)."""
    provider = get_provider(WeChatPayProvider.name)
    return provider if provider is not None and provider.can_oauth else None


@bp.get("/join/<slug>/login/wechat")
def login_wechat(slug: str):
    """Log in (or, from the member page, bind) with WeChat's OAuth, inside WeChat."""
    community = _community(slug)
    provider = _wechat_oauth_provider()
    if provider is None:
        abort(404)
    purpose = "bind" if request.args.get("bind") and logged_in_member(community) else "login"
    state = sign(
        "wechat-login",
        {
            "community": community.id,
            "purpose": purpose,
            "next": same_site_path(request.args.get("next")),
        },
    )
    oauth = provider.oauth(url_for(".login_wechat_return", slug=slug, _external=True), state)
    return redirect(oauth.authorize_url)


@bp.get("/join/<slug>/login/wechat/return")
def login_wechat_return(slug: str):
    community = _community(slug)
    provider = _wechat_oauth_provider()
    state = unsign("wechat-login", request.args.get("state", ""))
    if provider is None or not isinstance(state, dict) or state.get("community") != community.id:
        abort(400)
    end_transaction_keeping_objects()
    try:
        openid = provider.openid_from_code(
            url_for(".login_wechat_return", slug=slug, _external=True),
            request.args.get("code", ""),
        )
    except ProviderError:
        flash("微信授权失败，请重试 · WeChat authorisation failed, please try again", "error")
        return redirect(url_for(".login", slug=slug))
    session[OPENID_SESSION_KEY] = openid
    owner = find_member_by_openid(community.id, openid)
    if state["purpose"] == "bind":
        member = logged_in_member(community)
        if member is not None and owner is None and not member.wechat_openid:
            member.wechat_openid = openid
            audit.record("member.wechat_bound", member, actor=f"member:{member.id}")
            db.session.commit()
            flash("已绑定微信，以后可在微信内直接登录 · WeChat linked", "ok")
        elif owner is not None and owner != member:
            flash("这个微信已绑定其他成员 · This WeChat belongs to another member", "error")
        return redirect(url_for(".me"))
    if owner is None:
        flash(
            "没有找到绑定这个微信的成员，请用手机号或邮箱登录 · No member has this WeChat: "
            "log in with your phone or e-mail",
            "error",
        )
        return redirect(url_for(".login", slug=slug, next=state.get("next")))
    session[MEMBER_SESSION_KEY] = owner.id
    audit.record("member.logged_in", owner, actor=f"member:{owner.id}", data={"by": "wechat"})
    db.session.commit()
    return redirect(state.get("next") or url_for(".me"))
