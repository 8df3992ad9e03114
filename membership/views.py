"""The prospect's and member's pages: join, payment status, the member page, invitations.

Mobile first, no JavaScript needed. One commit per request, after the services ran.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_babel import gettext as _
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import joinedload
from sqlalchemy.orm.attributes import set_committed_value
from wtforms import SelectChoice

from core import audit
from core.clock import utcnow
from core.db import db, end_transaction_keeping_objects, take_write_lock
from core.events import record_event
from core.i18n import CommunityPreferences, page_community_id, settle_locale_at_login
from core.limits import Limit, TooManyTries, claim, client_network
from core.money import Money
from core.security import (
    new_token,
    same_site_path,
    sign,
    sign_for_this_browser,
    unsign,
    unsign_for_this_browser,
)
from membership.access import queue_platform_task
from membership.forms import (
    ChannelForm,
    JoinForm,
    LoginCodeForm,
    MemberLoginForm,
    PayAgainForm,
    PayForm,
    answers_of,
    with_questions,
)
from membership.fresh_application import submit_fresh_application, takes
from membership.lifecycle import RenewalRefused, start_renewal
from membership.login import (
    JOIN_CODE_CHECKS,
    JOIN_CODE_REQUESTS,
    SENDABLE,
    TOO_MANY,
    LoginRefused,
    claim_code_check,
    claim_code_request,
    code_request_checks,
    request_application_code,
    request_channel_code,
    request_code,
    verify_application_code,
    verify_channel_code,
    verify_code,
)
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
    TaskAction,
    Tier,
    TierAudience,
    TierKind,
)
from membership.renewal import endings_of, renewable, renewal_offers, renewal_price
from membership.screening import (
    ScreeningRefused,
    apply_again,
    auto_approve,
    order_for_pay_link,
)
from membership.services import (
    JOIN_SUBMISSIONS,
    AlreadyAMember,
    JoinRefused,
    Proof,
    check_tier_open,
    coupon_buyer,
    find_member_by_openid,
    keep_coupon_for_proof,
    needs_proof,
    normalise_contact,
    notify_member_of_their_contact,
    prove_application,
    sent_before_and_whose,
    submit_application,
)
from membership.share import wechat_share_config
from membership.visits import count_visit
from payments.accounts import holds_accounts, holds_none
from payments.discounts import DiscountRefused, PriceCheck, Purchase, Sale, check_price
from payments.models import Order, OrderStatus
from payments.providers import ProviderError, enabled_providers, get_provider
from payments.providers.wechatpay import WeChatPayBase
from payments.services import open_flags
from payments.views import (
    apply_discount_code,
    claim_discount_code_try,
    current_payer,
    openid_key,
    refuse_discount_code,
    send_to_provider,
)

bp = Blueprint("membership", __name__)
#: The join pages' WeChat share settings (``templates/join/_share.html``).
bp.add_app_template_global(wechat_share_config)

#: The session key that holds the member this browser is logged in as: their id, their
#: credential version, whether the login was proven, and when it was made.
MEMBER_SESSION_KEY = "member"
#: The session key that lists the applications made in this browser (their public ids).
APPLICATIONS_SESSION_KEY = "applications"
#: How long a member login lasts; a status-page login (not proven) lasts a day.
MEMBER_LOGIN_LIFETIME = timedelta(days=30)
STATUS_LOGIN_LIFETIME = timedelta(days=1)
#: The status page logs its browser in only this soon after the application was made.
STATUS_LOGIN_WINDOW = timedelta(hours=2)
#: Member links (``/me/link/…``) travel in URLs: they work this long.
MEMBER_LINK_LIFETIME = timedelta(hours=24)
#: Where a WeChat waits, between WeChat's OAuth and the member confirming on ``/me``.
WECHAT_BIND_SESSION_KEY = "wechat_bind"


#: Pages whose URL or content carries a token or a member's own data: no cache keeps them.
_PRIVATE_PAGES = frozenset(
    {
        "membership.status",
        "membership.member_link",
        "membership.me",
        "membership.invitation",
        "membership.pay_link",
        "membership.login_code",
        "membership.login_wechat_return",
        "membership.verify",
        "membership.verify_wechat_return",
        "membership.channel_code",
    }
)


#: The join path's lookups, built once (building a statement cost more than running it).
#: The community, and whether it holds payment accounts of its own (most hold none: then
#: its payment pages ask nothing more about them).
_COMMUNITY_BY_SLUG = sa.select(Community, holds_accounts(Community.id)).where(
    Community.slug == sa.bindparam("slug")
)
#: A tier's pages: the community and the tier in one statement (see ``_COMMUNITY_BY_SLUG``).
_TIER_PAGE = (
    sa.select(Community, Tier, holds_accounts(Community.id))
    .join(Tier, Tier.community_id == Community.id)
    .where(Community.slug == sa.bindparam("slug"), Tier.code == sa.bindparam("code"))
)
_APPLICATION_BY_SUBMISSION = sa.select(Application).where(
    Application.submission_key == sa.bindparam("key")
)
#: The application with its community (its pages check the slug and show its name), and
#: whether the community holds payment accounts (see ``_COMMUNITY_BY_SLUG``).
_APPLICATION_BY_PUBLIC_ID = (
    sa.select(Application, holds_accounts(Application.community_id))
    .where(Application.public_id == sa.bindparam("public_id"))
    .options(joinedload(Application.community))
)
_APPLICATIONS = Application.__table__
#: On the table (no ORM statement handling; the loaded application is kept in step by hand).
_FIRST_STATUS_LOGIN = (
    _APPLICATIONS.update()
    .where(
        _APPLICATIONS.c.id == sa.bindparam("application_id"),
        _APPLICATIONS.c.status_login_at.is_(None),
    )
    .values(status_login_at=sa.bindparam("now", type_=_APPLICATIONS.c.status_login_at.type))
)
_LATEST_APPLICATION_CODE = (
    sa.select(LoginCode)
    .where(LoginCode.application_id == sa.bindparam("application_id"))
    .order_by(LoginCode.id.desc())
    .limit(1)
)


@bp.after_request
def _never_cached(response: Response) -> Response:
    if request.endpoint in _PRIVATE_PAGES:
        response.headers["Cache-Control"] = "no-store"
    return response


def _community(slug: str) -> Community:
    """The community of the page; its language and time zone are the page's defaults."""
    found = db.session.execute(_COMMUNITY_BY_SLUG, {"slug": slug}).first()
    if found is None:
        abort(404)
    community, held = found
    if not held:
        holds_none(community.id)
    g.community = community
    return community


def community_preferences() -> CommunityPreferences | None:
    """For ``core.i18n``: the language and time zone of the community whose page this is:
    found by its address, by the application or member it shows, or named by another
    package's page (:func:`core.i18n.belongs_to_community`)."""
    community = g.get("community")
    if community is None and (community_id := page_community_id()) is not None:
        community = db.session.get(Community, community_id)
    return (
        None if community is None else CommunityPreferences(community.locale, community.time_zone)
    )


def keep_locale_choice(locale: str) -> None:
    """The language switch, used by a logged-in member: their pages and messages use it."""
    if (member := logged_in_member(proven=False)) is not None:
        member.locale = locale


def member_login(member_id: int, version: int, *, proven: bool, now: datetime) -> dict:
    """What a member session holds (see :func:`logged_in_member`)."""
    return {"id": member_id, "version": version, "proven": proven, "at": int(now.timestamp())}


def log_member_in(member: Member, *, by: str, now: datetime) -> None:
    """Remember ``member`` in this browser's session (audited). ``by`` says how they
    proved who they are: ``code``, ``wechat`` or ``link`` are proof and open ``/me``;
    ``status`` (the status page of the application they just made) is not, and only lets
    the join pages know them."""
    session[MEMBER_SESSION_KEY] = member_login(
        member.id, member.credential_version, proven=by != "status", now=now
    )
    settle_locale_at_login(member)
    audit.record("member.logged_in", member, actor=f"member:{member.id}", data={"by": by}, now=now)


def logged_in_member(community: Community | None = None, *, proven: bool = True) -> Member | None:
    """The member this browser is logged in as (of ``community``, when given), while the
    login lasts and the member's credential version is the one it was made with; with
    ``proven`` (the default), only a login that proved who they are counts."""
    login = session.get(MEMBER_SESSION_KEY)
    if not isinstance(login, dict) or not isinstance(login.get("id"), int):
        return None
    lifetime = MEMBER_LOGIN_LIFETIME if login.get("proven") else STATUS_LOGIN_LIFETIME
    made = datetime.fromtimestamp(login.get("at", 0), UTC)
    if (proven and not login.get("proven")) or made + lifetime <= utcnow():
        return None
    member = db.session.get(Member, login["id"])
    if member is None or member.credential_version != login.get("version"):
        return None
    if community is not None and member.community_id != community.id:
        return None
    # A member's pages are their community's: its language and time zone by default.
    g.setdefault("community", member.community)
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
    member = logged_in_member(community, proven=False)
    count_visit(community)
    return render_template(
        "join/community.html",
        community=community,
        tiers=_listed_tiers(community, member),
        member=member,
    )


def offer_providers(form: JoinForm | PayAgainForm, community_id: int) -> None:
    """Fill the form's provider choice with the providers the community takes payments
    with (its own accounts, else the install's), the first preselected."""
    form.provider.choices = [
        SelectChoice(p.name, p.label) for p in enabled_providers(community_id).values()
    ]
    if form.provider.data is None and form.provider.choices:
        form.provider.data = form.provider.choices[0].value


def _wechat_proves_here(community_id: int) -> bool:
    """Whether this browser's applicant can prove themselves by WeChat's silent OAuth:
    it gave this browser an openid under the community's official account already, or it
    is WeChat's and OAuth is configured."""
    return bool(_join_openid(community_id)) or _wechat_proves_at_join(community_id)


def _join_openid(community_id: int) -> str | None:
    """The openid this browser was given under the official account the community's WeChat
    logins go through (see :func:`_wechat_oauth_provider`): an openid under another
    account is nobody's identity here."""
    provider = _wechat_oauth_provider(community_id)
    return session.get(openid_key(provider)) if provider is not None else None


def _join_form(tier: Tier, member: Member | None) -> JoinForm:
    form_class = JoinForm
    if tier.requires_screening:
        form_class = with_questions(JoinForm, tier.community.active_questions)
    form = form_class()
    form.channel_optional = _wechat_proves_here(tier.community_id)
    if member is not None:
        # A member joins as themselves: their contact is known (and proven, or the code
        # step asks for it).
        del form.contact_kind, form.contact_value, form.wechat_id
        if not form.is_submitted():
            form.display_name.data = member.display_name
    if tier.kind is TierKind.FREE or tier.requires_screening:
        del form.coupon  # nothing to pay now
    if tier.kind is TierKind.FREE:
        del form.provider  # nothing to pay
    else:
        offer_providers(form, tier.community_id)
    if not form.submission_key.data:
        form.submission_key.data = new_token(24)
    if not form.shown_price.data:
        form.shown_price.data = str(tier.price)
    return form


def _price_moved(form: JoinForm, tier: Tier) -> bool:
    """Whether the tier's price is no longer the one the form showed (an admin changed it
    while the payer had it open). Then the form says so, showing the new price, and
    nothing is made: the payer pays what they last saw."""
    if tier.kind is TierKind.FREE or tier.requires_screening or not form.shown_price.data:
        return False
    if int(form.shown_price.data) == tier.price:
        return False
    form.shown_price.data = str(tier.price)
    form.provider.errors.append(
        _("The price is now %(price)s: check it, then pay", price=tier.price_money)
    )
    return True


@bp.route("/join/<slug>/<tier_code>", methods=["GET", "POST"])
def join(slug: str, tier_code: str):
    community, tier = _community_and_tier(slug, tier_code)
    member = logged_in_member(community, proven=False)
    try:
        check_tier_open(tier, member)
    except JoinRefused as refusal:
        return render_template(
            "join/closed.html", community=community, tier=tier, reason=str(refusal), member=member
        ), 403
    form = _join_form(tier, member)
    openid = _join_openid(community.id)
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
    if not form.validate_on_submit() or _price_moved(form, tier):
        status = 422 if form.is_submitted() else 200
        return render_template(
            "join/form.html", community=community, tier=tier, form=form, member=member
        ), status
    now = utcnow()
    contact_kind, contact_value = None, None
    if member is None and form.contact_value.data:
        contact_kind, contact_value = ContactKind(form.contact_kind.data), form.contact_value.data
    elif member is None:  # inside WeChat, which proves them: the WeChat ID names them
        contact_kind, contact_value = ContactKind.WECHAT, form.wechat_id.data
    # A form sent again (a double click) gets back its application, and no new code: only
    # the request that makes the application claims and sends one.
    sent_before, whose = sent_before_and_whose(
        form.submission_key.data, community.id, contact_kind, contact_value
    )
    code_to = None
    if sent_before is None:
        code_to = _join_code_contact(community, member, contact_kind, contact_value, openid)
    checks = _join_checks(community, code_to)
    coupon = form.coupon.data if "coupon" in form else None
    fresh = takes(tier, member, code_sent=code_to is not None, coupon=coupon)
    code_refused = False
    try:
        claim_discount_code_try(coupon)
        if whose is not None and member is None and sent_before is None:
            # Before the application makes a member (see :func:`admit`).
            notify_member_of_their_contact(
                community,
                whose,
                contact_kind,
                login_url=url_for(".login", slug=slug, _external=True),
                now=now,
            )
        if sent_before is not None:
            application = sent_before
        elif fresh:
            application = submit_fresh_application(
                tier,
                community,
                display_name=form.display_name.data,
                contact_kind=contact_kind,
                contact_value=contact_value,
                wechat_id=form.wechat_id.data,
                submission_key=form.submission_key.data,
                now=now,
            )
        else:
            application = submit_application(
                tier,
                display_name=form.display_name.data,
                contact_kind=contact_kind,
                contact_value=contact_value,
                wechat_id=form.wechat_id.data if "wechat_id" in form else None,
                wechat_openid=openid,
                awaiting_proof=needs_proof(member, wechat_openid=openid),
                submission_key=form.submission_key.data,
                member=member,
                answers=answers_of(form, community.active_questions)
                if tier.requires_screening
                else None,
                checked_new=True,
                now=now,
            )
        if tier.requires_screening:
            auto_approve(application)
        if "coupon" in form and form.coupon.data and application.order_id:
            order = db.session.get(Order, application.order_id)
            if application.status is ApplicationStatus.AWAITING_PROOF:
                keep_coupon_for_proof(application, order, form.coupon.data, now=now)
            else:
                apply_discount_code(
                    order,
                    form.coupon.data,
                    product=f"tier:{tier.id}",
                    buyer=coupon_buyer(application),
                    actor=f"member:{member.id}" if member else "prospect",
                )
        # The tries are claimed last, in the application's transaction (one commit, not
        # two): each counter stays locked from here to the commit only, so parallel joins
        # queue on the install's counter briefly. Any refusal rolls the request back and
        # counts its tries by themselves (see :func:`_count_tries`).
        try:
            claim(checks, now=now)
        except TooManyTries as refusal:
            if set(refusal.reached) & set(JOIN_SUBMISSIONS):
                _count_tries(checks, now=now)
                form.display_name.errors.append(TOO_MANY)
                return render_template(
                    "join/form.html", community=community, tier=tier, form=form, member=member
                ), 429
            code_refused = True  # the application is made; the code step says why no code came
        # The form made before gives back its application; only the request that made it
        # (stamped with this request's own ``now``) sends a code, whatever the race.
        made_here = application.created_at is now
        if (
            code_to is not None
            and made_here
            and not code_refused
            and application.status is ApplicationStatus.AWAITING_PROOF
        ):
            # Queued with the application, in its commit: the worker sends it after.
            request_application_code(application, now=now)
        end_transaction_keeping_objects()
    except JoinRefused as refusal:
        _count_tries(checks, now=now)
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
        _count_tries(checks, now=now)
        return render_template(
            "join/form.html", community=community, tier=tier, form=form, member=member
        ), 422
    except IntegrityError:
        # The same form, sent twice at once: the other request made the application (and
        # sent its code).
        _count_tries(checks, now=now)
        application = db.session.scalar(
            _APPLICATION_BY_SUBMISSION, {"key": form.submission_key.data}
        )
        if application is None:
            raise
        made_here = False
    provider = form.provider.data if "provider" in form else None
    if application.status is ApplicationStatus.AWAITING_PROOF:
        if code_refused and made_here:
            flash(str(TOO_MANY), "error")
        return _start_proof(application, provider)
    return _continue(application, provider)


def _count_tries(checks: list[tuple[Limit, str]], *, now: datetime) -> None:
    """Called when a join form is refused after its tries were claimed with what it made:
    the request is rolled back, and its tries are claimed again by themselves and
    committed, so that a refused form counts as any other (over a limit or not)."""
    db.session.rollback()
    # Over a limit or not, they are counted; the refusal being answered says more.
    with suppress(TooManyTries):
        claim(checks, now=now)
    db.session.commit()


def _join_code_contact(
    community: Community,
    member: Member | None,
    contact_kind: ContactKind | None,
    contact_value: str | None,
    openid: str | None,
) -> tuple[ContactKind, str] | None:
    """Called by the join form before it claims its tries: the contact its code step will
    send a code to (the member's own when one is logged in), or None when the applicant
    proves themselves otherwise (a proven member, WeChat's OAuth) or cannot be sent one."""
    if not needs_proof(member, wechat_openid=openid) or _wechat_proves_at_join(community.id):
        return None
    if member is not None:
        contact_kind, contact_value = member.contact_kind, member.contact_value
    return (contact_kind, contact_value) if contact_kind in SENDABLE else None


def _join_checks(
    community: Community, code_to: tuple[ContactKind, str] | None
) -> list[tuple[Limit, str]]:
    """The tries one join form claims, all in one statement: the join itself (per client,
    overall) and, when its code step sends a code to ``code_to``, the code request."""
    per_client, overall = JOIN_SUBMISSIONS
    client = client_network()
    checks = [(per_client, client), (overall, "")]
    if code_to is not None:
        checks += code_request_checks(
            *code_to, community_id=community.id, client=client, limits=JOIN_CODE_REQUESTS
        )
    return checks


def _remember_application(application: Application) -> None:
    """Remember this browser as the one that made ``application``: only it sees what the
    application buys, and only it proves its channel."""
    made_here = session.get(APPLICATIONS_SESSION_KEY, [])
    if application.public_id not in made_here:
        session[APPLICATIONS_SESSION_KEY] = [*made_here, application.public_id][-10:]


def _continue(
    application: Application, provider_name: str | None, order: Order | None = None
) -> Response:
    """Send the applicant on: to the code step while their channel is unproven, to the
    provider if their order awaits payment (``order``, when the caller loaded it), else
    to their status page."""
    _remember_application(application)
    if application.status is ApplicationStatus.AWAITING_PROOF:
        return redirect(
            url_for(
                "membership.verify",
                slug=application.community.slug,
                public_id=application.public_id,
            )
        )
    status_url = url_for(
        "membership.status",
        slug=application.community.slug,
        public_id=application.public_id,
        _external=True,
    )
    if application.status is not ApplicationStatus.AWAITING_PAYMENT:
        return redirect(status_url)
    return send_to_provider(
        order or db.session.get(Order, application.order_id),
        provider_name,
        return_url=status_url,
        cancel_url=status_url,
        actor="prospect",
    )


def _application(slug: str, public_id: str) -> Application:
    found = db.session.execute(_APPLICATION_BY_PUBLIC_ID, {"public_id": public_id}).first()
    if found is None or found[0].community.slug != slug:
        abort(404)
    application, held = found
    if not held:
        holds_none(application.community_id)
    g.community = application.community
    return application


def _send_application_code(application: Application) -> None:
    """Send a code to the application's contact, counted against the code limits (a
    refusal is flashed on the code page). Commits."""
    now = utcnow()
    try:
        try:
            claim_code_request(
                application.contact_kind,
                application.contact_value,
                community_id=application.community_id,
                client=client_network(),
                now=now,
                limits=JOIN_CODE_REQUESTS,
            )
        finally:
            db.session.commit()  # the request counts, refused or not
        request_application_code(application, now=now)
        db.session.commit()
    except LoginRefused as refusal:
        db.session.rollback()
        flash(str(refusal), "error")


def _wechat_proves_at_join(community_id: int) -> bool:
    """Whether the join's applicant proves themselves by WeChat's silent OAuth (inside
    WeChat, with OAuth configured for the community) rather than by a code. Answered once
    a request (the join POST asks three times: its form, its code, its next step)."""
    answers = g.setdefault("wechat_proves_at_join", {})
    if community_id not in answers:
        answers[community_id] = (
            current_payer().in_wechat and _wechat_oauth_provider(community_id) is not None
        )
    return answers[community_id]


def _start_proof(application: Application, provider: str | None) -> Response:
    """After the join form, an applicant with no proven channel proves one: inside WeChat
    by the silent OAuth (no prompt), elsewhere by the code the join form queued to their
    phone or e-mail. The way to pay they picked (``provider``) travels with them."""
    _remember_application(application)
    slug, public_id = application.community.slug, application.public_id
    if _wechat_proves_at_join(application.community_id):
        return redirect(
            url_for(".verify_wechat", slug=slug, public_id=public_id, provider=provider)
        )
    return redirect(url_for(".verify", slug=slug, public_id=public_id, provider=provider))


def _made_here(public_id: str) -> bool:
    """Whether this browser made the application ``public_id`` (see
    :func:`_remember_application`)."""
    return public_id in session.get(APPLICATIONS_SESSION_KEY, [])


def _this_browsers_application(slug: str, public_id: str) -> Application:
    """An application of this browser's, or a 404: only it proves the application's
    channel or pays its order (its public id travels in URLs, to providers and browser
    histories)."""
    application = _application(slug, public_id)
    if not _made_here(public_id):
        abort(404)
    return application


def _proven(
    application: Application, proof: Proof, provider: str | None, order: Order | None = None
) -> Response:
    """The applicant proved a channel (flushed by the caller): a screened application may
    be approved at once, then the applicant goes on to pay with ``provider`` (for its
    ``order``, when the caller loaded it); to their status page instead, told why, when
    the coupon code they typed no longer applies (the price is not what they expected).
    Commits."""
    if application.tier.requires_screening:
        auto_approve(application)
    # What this request loaded stays usable: the next steps read nothing it changed.
    end_transaction_keeping_objects()
    if proof.coupon_refused is not None:
        flash(
            _(
                "Your coupon %(code)s could not be used: %(reason)s. The order is at its "
                "full price.",
                code=application.coupon_code,
                reason=proof.coupon_refused,
            ),
            "error",
        )
        _remember_application(application)
        return redirect(
            url_for(".status", slug=application.community.slug, public_id=application.public_id)
        )
    return _continue(application, provider, order)


def _check_code(
    pending: LoginCode,
    form: LoginCodeForm,
    verify: Callable[..., Any],
    *,
    now: datetime,
    **limits: Any,
) -> tuple[bool, Any]:
    """One check of the code typed into ``form`` against ``pending``: claimed and
    committed first (the try counts whatever comes next), then ``verify(pending, code,
    now=)``. Returns (True, what ``verify`` returned), or (False, None) with the refusal
    on the form's code field and the rest rolled back."""
    try:
        try:
            claim_code_check(pending, client=client_network(), now=now, **limits)
        finally:
            # The code and what it proves are written by conditional UPDATEs: nothing
            # loaded needs reading again.
            end_transaction_keeping_objects()
        return True, verify(pending, form.code.data, now=now)
    except LoginRefused as refusal:
        db.session.rollback()
        form.code.errors.append(str(refusal))
        return False, None


@bp.route("/join/<slug>/verify/<public_id>", methods=["GET", "POST"])
def verify(slug: str, public_id: str):
    """The join's code step: the applicant types the code sent to their phone or e-mail
    before they pay (or, for a free tier, before they are admitted)."""
    application = _this_browsers_application(slug, public_id)
    if application.status is not ApplicationStatus.AWAITING_PROOF:
        return redirect(url_for(".status", slug=slug, public_id=public_id))
    pending = db.session.scalar(_LATEST_APPLICATION_CODE, {"application_id": application.id})
    form = LoginCodeForm()
    if pending is not None and form.validate_on_submit():
        # Loaded once, before the proof reads it: the payment then starts from it.
        order = db.session.get(Order, application.order_id) if application.order_id else None
        checked, proof = _check_code(
            pending, form, verify_application_code, now=utcnow(), limits=JOIN_CODE_CHECKS
        )
        if checked:
            return _proven(application, proof, request.args.get("provider"), order)
    elif pending is None and form.is_submitted():
        form.code.errors.append(_("Ask for a code first"))
    status = 422 if form.errors else 200
    return render_template(
        "join/verify.html",
        community=application.community,
        application=application,
        form=form,
        sendable=application.contact_kind in SENDABLE,
        wechat=_wechat_proves_at_join(application.community_id),
    ), status


@bp.post("/join/<slug>/verify/<public_id>/resend")
def verify_resend(slug: str, public_id: str):
    """Another code to the application's contact (within the code limits)."""
    application = _this_browsers_application(slug, public_id)
    if (
        application.status is ApplicationStatus.AWAITING_PROOF
        and application.contact_kind in SENDABLE
    ):
        _send_application_code(application)
    return redirect(
        url_for(".verify", slug=slug, public_id=public_id, provider=request.args.get("provider"))
    )


@bp.get("/join/<slug>/verify/<public_id>/wechat")
def verify_wechat(slug: str, public_id: str):
    """Prove the applicant by WeChat's silent OAuth (``snsapi_base``), in this browser
    only, once, within ten minutes (the ``state``)."""
    application = _this_browsers_application(slug, public_id)
    provider = _wechat_oauth_provider(application.community_id)
    if provider is None or application.status is not ApplicationStatus.AWAITING_PROOF:
        abort(404)
    state = sign_for_this_browser(
        "wechat-join",
        {"application": application.public_id, "provider": request.args.get("provider")},
    )
    oauth = provider.oauth(url_for(".verify_wechat_return", slug=slug, _external=True), state)
    return redirect(oauth.authorize_url)


@bp.get("/join/<slug>/verify/wechat/return")
def verify_wechat_return(slug: str):
    """WeChat sends the applicant back with a code for their openid: it proves them, and
    the join goes on. An openid that is a member's already asks them to log in."""
    community = _community(slug)
    provider = _wechat_oauth_provider(community.id)
    state = unsign_for_this_browser("wechat-join", request.args.get("state", ""))
    if provider is None or not isinstance(state, dict):
        abort(400)
    public_id = state.get("application", "")
    application = _this_browsers_application(slug, public_id)
    end_transaction_keeping_objects()
    try:
        openid = provider.openid_from_code(
            url_for(".verify_wechat_return", slug=slug, _external=True),
            request.args.get("code", ""),
        )
    except ProviderError:
        flash(_("WeChat authorisation failed, please try again"), "error")
        return redirect(
            url_for(".verify", slug=slug, public_id=public_id, provider=state.get("provider"))
        )
    session[openid_key(provider)] = openid
    take_write_lock()  # a GET that proves the application
    owner = find_member_by_openid(community.id, openid)
    if owner is not None and owner.id != application.member_id:
        flash(str(AlreadyAMember()), "error")
        return redirect(
            url_for(
                ".login",
                slug=slug,
                next=url_for(".join", slug=slug, tier_code=application.tier.code),
            )
        )
    proof = prove_application(application, wechat_openid=openid, now=utcnow())
    if not proof.went_on:
        db.session.rollback()
        return redirect(url_for(".status", slug=slug, public_id=public_id))
    return _proven(application, proof, state.get("provider"))


@bp.get("/join/<slug>/status/<public_id>")
def status(slug: str, public_id: str):
    """The applicant's own page: waiting for payment, or admitted with their number and
    invitation. Those show only in the browser that made the application (the URL also
    goes to payment providers and browser history); elsewhere the page says to log in.
    Soon after a newcomer is admitted, the page logs that browser in as them, once, with
    a login that is not proof (see :func:`log_member_in`)."""
    application = _application(slug, public_id)
    order = db.session.get(Order, application.order_id) if application.order_id else None
    member, invitations, whole_member = None, [], False
    made_here = _made_here(public_id)
    if made_here:
        member = application.member
    if member is not None:
        _status_login(application, member, now=utcnow())
        invitations = member.invitations
        whole_member = logged_in_member(proven=False) == member
        if not whole_member:
            # Not (or no longer) logged in as them: only what this application paid for.
            invitations = [
                i
                for i in member.invitations
                if application.order_id and i.membership.order_id == application.order_id
            ]
    order_open = (
        order is not None
        and order.status is OrderStatus.OPEN
        and application.status is not ApplicationStatus.AWAITING_PROOF
    )
    # Elsewhere the page says where to look instead: what was bought, or how to pay.
    made_elsewhere = not made_here and (application.member_id is not None or order_open)
    order_open = order_open and made_here
    # Only an open order shows its last payment and the form to pay again.
    pay_form = PayAgainForm() if order_open else None
    if pay_form is not None:
        offer_providers(pay_form, application.community_id)
    return render_template(
        "join/status.html",
        application=application,
        community=application.community,
        order=order,
        latest_payment=order.payments[-1] if order_open and order.payments else None,
        member=member,
        invitations=invitations_to_scan(invitations),
        group_nickname=group_nickname(member) if member is not None else None,
        whole_member=whole_member,
        made_elsewhere=made_elsewhere,
        member_link=_member_link(member) if member and member == logged_in_member() else None,
        order_open=order_open,
        flags=open_flags(order) if order is not None and member is not None else set(),
        pay_form=pay_form,
    )


def invitations_to_scan(invitations: list[Invitation]) -> list[Invitation]:
    """Called by the member's pages before they show how to join: a screened member who
    waited in the lobby and now holds a main group sees only the main group's invitation
    (the one to scan now), not both side by side. Changes nothing."""
    main = [i for i in invitations if i.is_valid and not i.membership.tier.is_lobby]
    if not main:
        return invitations
    return [i for i in invitations if not i.membership.tier.is_lobby]


def group_nickname(member: Member) -> str:
    """The nickname a member is asked to set in the group, their number first so that
    moderators know them (``0002-小猫``); just their name while they have no number."""
    if member.number_label:
        return f"{member.number_label}-{member.display_name}"
    return member.display_name


def _made_by(application: Application, member: Member) -> bool:
    """Whether admitting ``application`` made ``member`` (a newcomer, not a record that
    existed before under the contact typed)."""
    return member.created_at >= application.created_at


def _status_login(application: Application, member: Member, *, now: datetime) -> None:
    """Log the browser that made ``application`` in as the newcomer it made, once, within
    :data:`STATUS_LOGIN_WINDOW` of the application (one conditional UPDATE, so two
    loads of the page cannot both do it). A member who existed before is never logged in
    this way: the contact typed may have been someone else's."""
    if not _made_by(application, member) or application.created_at + STATUS_LOGIN_WINDOW <= now:
        return
    if logged_in_member(proven=False) == member:
        return
    take_write_lock()  # a GET: the UPDATE decides, under the lock
    first = (
        db.session.connection()
        .execute(_FIRST_STATUS_LOGIN, {"application_id": application.id, "now": now})
        .rowcount
    )
    if first:
        set_committed_value(application, "status_login_at", now)
        log_member_in(member, by="status", now=now)
        end_transaction_keeping_objects()  # the page goes on with what it loaded


def _member_link(member: Member) -> str:
    """A link that opens the member's page in another browser for a day; shown only to a
    member who proved who they are, and ended by anything that ends their sessions."""
    token = sign("member-link", {"id": member.id, "version": member.credential_version})
    return url_for("membership.member_link", token=token, _external=True)


@bp.post("/join/<slug>/status/<public_id>/pay")
def pay_again(slug: str, public_id: str):
    """Try paying the application's order again, after a failure or a cancel: in the
    browser that made the application only."""
    application = _this_browsers_application(slug, public_id)
    form = PayAgainForm()
    offer_providers(form, application.community_id)
    if not form.validate_on_submit():
        abort(400)
    return _continue(application, form.provider.data)


@bp.get("/me/link/<token>")
def member_link(token: str):
    """A member link (see :func:`_member_link`): logs this browser in as the member."""
    take_write_lock()  # the login is recorded on the member
    signed = unsign("member-link", token, max_age=MEMBER_LINK_LIFETIME)
    member = db.session.get(Member, signed["id"]) if isinstance(signed, dict) else None
    if member is None or member.credential_version != signed.get("version"):
        abort(404)
    log_member_in(member, by="link", now=utcnow())
    db.session.commit()
    return redirect(url_for("membership.me"))


@bp.get("/me")
def me():
    member = logged_in_member()
    if member is None:
        known = logged_in_member(proven=False)
        communities = (
            [known.community]
            if known is not None
            else db.session.scalars(sa.select(Community).order_by(Community.id)).all()
        )
        return render_template(
            "me/anonymous.html",
            communities=communities,
            # The communities whose official account can log their members in here.
            wechat_login={
                c.id
                for c in communities
                if current_payer().in_wechat and _wechat_oauth_provider(c.id) is not None
            },
        ), 401
    return _member_page(member)


@bp.post("/me/channel")
def add_channel():
    """A member with no channel we can reach (one who joined before every join proved
    one) asks for a code at a phone or e-mail address of theirs."""
    member = logged_in_member()
    if member is None:
        abort(404)
    form = ChannelForm()
    if not form.validate_on_submit():
        flash(next(iter(form.errors.values()))[0], "error")
        return redirect(url_for(".me"))
    kind, now = ContactKind(form.contact_kind.data), utcnow()
    try:
        try:
            claim_code_request(
                kind,
                form.contact_value.data,
                community_id=member.community_id,
                client=client_network(),
                now=now,
            )
        finally:
            db.session.commit()  # the request counts, refused or not
        pending, _message_id = request_channel_code(member, kind, form.contact_value.data, now=now)
        db.session.commit()
    except LoginRefused as refusal:
        db.session.rollback()
        flash(str(refusal), "error")
        return redirect(url_for(".me"))
    return redirect(url_for(".channel_code", public_id=pending.public_id))


@bp.route("/me/channel/<public_id>", methods=["GET", "POST"])
def channel_code(public_id: str):
    """The member types the code sent to their new channel: it becomes their contact,
    proven."""
    member = logged_in_member()
    pending = db.session.scalar(sa.select(LoginCode).where(LoginCode.public_id == public_id))
    if member is None or pending is None or pending.member_id != member.id:
        abort(404)
    form = LoginCodeForm()
    if form.validate_on_submit():
        now = utcnow()
        proven, _member = _check_code(
            pending,
            form,
            lambda login, code, *, now: verify_channel_code(member, login, code, now=now),
            now=now,
        )
        if proven:
            log_member_in(member, by="code", now=now)  # proving ended the old sessions
            db.session.commit()
            flash(_("Proven: we will reach you there"), "ok")
            return redirect(url_for(".me"))
    status = 422 if form.errors else 200
    return render_template(
        "me/channel_code.html", community=member.community, form=form, pending=pending
    ), status


@bp.post("/me/wechat")
def bind_wechat():
    """The member confirms linking the WeChat they just authorised (kept in this
    session by :func:`login_wechat_return`): from now on it logs them in."""
    member = logged_in_member()
    bind = session.pop(WECHAT_BIND_SESSION_KEY, None)
    if member is None or not isinstance(bind, dict) or bind.get("member") != member.id:
        abort(404)
    if (
        member.wechat_openid is None
        and find_member_by_openid(member.community_id, bind["openid"]) is None
    ):
        member.wechat_openid = bind["openid"]
        audit.record("member.wechat_bound", member, actor=f"member:{member.id}")
        db.session.commit()
        flash(_("WeChat linked: from now on it logs you in inside WeChat"), "ok")
    else:
        flash(_("This WeChat belongs to another member"), "error")
    return redirect(url_for(".me"))


@bp.post("/me/logout-everywhere")
def logout_everywhere():
    """End every session and link of the member, this browser's included."""
    member = logged_in_member()
    if member is None:
        abort(404)
    member.credential_version += 1
    audit.record("member.logged_out_everywhere", member, actor=f"member:{member.id}")
    db.session.commit()
    session.pop(MEMBER_SESSION_KEY, None)
    return redirect(url_for(".me"))


@bp.post("/me/renew/<int:membership_id>")
def renew(membership_id: int):
    """Pay to extend a membership with a term, from its current end."""
    member = logged_in_member()
    membership = db.session.get(Membership, membership_id)
    if member is None or membership is None or membership.member_id != member.id:
        abort(404)
    form = PayForm()
    offer_providers(form, member.community_id)
    if not form.validate_on_submit():
        if not form.coupon.errors:
            abort(400)
        flash(form.coupon.errors[0], "error")
        return redirect(url_for(".me"))
    try:
        claim_discount_code_try(form.coupon.data)
        renewal = start_renewal(membership, with_coupon=bool(form.coupon.data))
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
        form.coupon.errors.append(refuse_discount_code(refusal))
        return _member_page(member, pay_form=form, checked_membership=membership.id), 422
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
    if not group.qr_image or not group.qr_valid(utcnow()):
        abort(404)  # an expired QR code is never shown
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
        kind, value, now = ContactKind(form.contact_kind.data), form.contact_value.data, utcnow()
        try:
            try:
                claim_code_request(
                    kind, value, community_id=community.id, client=client_network(), now=now
                )
            finally:
                db.session.commit()  # the request counts, refused or not
            pending, _message_id = request_code(community, kind, value, now=now)
            db.session.commit()
        except LoginRefused as refusal:
            db.session.rollback()
            form.contact_value.errors.append(str(refusal))
        else:
            return redirect(
                url_for(
                    ".login_code",
                    slug=slug,
                    public_id=pending.public_id,
                    next=request.args.get("next"),
                )
            )
    status = 422 if form.errors else 200
    wechat = _wechat_proves_at_join(community.id)
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
        now = utcnow()
        proven, member = _check_code(pending, form, verify_code, now=now)
        if proven:
            log_member_in(member, by="code", now=now)
            db.session.commit()
            return redirect(same_site_path(request.args.get("next")) or url_for(".me"))
    status = 422 if form.errors else 200
    return render_template(
        "join/login_code.html", community=community, form=form, pending=pending
    ), status


@bp.post("/me/logout")
def logout():
    member = logged_in_member(proven=False)
    session.pop(MEMBER_SESSION_KEY, None)
    if member is not None:
        audit.record("member.logged_out", member, actor=f"member:{member.id}")
        db.session.commit()
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
    take_write_lock()  # a GET too: it makes the order to pay
    community = _community(slug)
    application = _approved_application(community, token)
    member = logged_in_member(community, proven=False)
    form = PayForm()
    offer_providers(form, community.id)
    if application.status is ApplicationStatus.ADMITTED:
        # Paid: the link says so and leads to the result, and a POST sent again is a GET.
        if request.method == "POST":
            return redirect(request.path)
        return render_template(
            "join/pay_link.html", community=community, application=application, paid=True
        )
    refusal, status, limited = None, 200, None
    if request.method == "POST":  # counted before the order can be made
        try:
            claim_discount_code_try(request.form.get("coupon", "").strip())
        except DiscountRefused as error:
            limited = error
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
                if limited is not None:
                    raise limited
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
    if application.member != logged_in_member(community, proven=False):
        abort(404)
    try:
        again = apply_again(application)
    except ScreeningRefused as refusal:
        db.session.rollback()
        flash(str(refusal), "error")
        return redirect(url_for(".pay_link", slug=slug, token=token))
    db.session.commit()
    return redirect(url_for(".status", slug=slug, public_id=again.public_id))


@bp.post("/me/invitations/<token>/new-link")
def new_join_link(token: str):
    """A member's own join link (Telegram's lasts 7 days) ran out unused: a new one is
    queued. Asking again before it is made, or for a link still valid, changes nothing."""
    member = logged_in_member()
    invitation = db.session.scalar(sa.select(Invitation).where(Invitation.token == token))
    if member is None or invitation is None or invitation.member_id != member.id:
        abort(404)
    now = utcnow()
    # One conditional UPDATE: of two clicks at once, one queues the new link.
    renewed = (
        invitation.link_expired(now)
        and db.session.execute(
            sa.update(Invitation)
            .where(
                Invitation.id == invitation.id,
                Invitation.status == InvitationStatus.ISSUED,
                Invitation.join_link_expires_at <= now,
            )
            .values(join_link=None, join_link_expires_at=None)
            .execution_options(synchronize_session="fetch")
        ).rowcount
    )
    if renewed:
        queue_platform_task(invitation, TaskAction.GRANT, now=now)
        audit.record("invitation.link_renewed", invitation, actor=f"member:{member.id}", now=now)
        db.session.commit()
        flash(_("A new join link is on its way; refresh in a moment"), "ok")
    return redirect(url_for(".me"))


@bp.post("/invitations/<token>/joined")
def mark_joined(token: str):
    """The member tells us they are in the group."""
    invitation = _valid_invitation(token)
    if invitation.status is InvitationStatus.ISSUED:
        invitation.status = InvitationStatus.JOINED
        audit.record("invitation.joined", invitation, actor=f"member:{invitation.member_id}")
        record_event(
            invitation.member.community_id,
            "invitation.joined",
            {
                "invitation": invitation.id,
                "member": invitation.member_id,
                "group": invitation.group_id,
            },
            now=utcnow(),
        )
        db.session.commit()
    return redirect(url_for(".invitation", token=token))


def _wechat_oauth_provider(community_id: int | None = None) -> WeChatPayBase | None:
    """WeChat Pay's provider, when it can do OAuth (the app secret is set): for
    ``community_id``, its own official account when it has one (an openid is an id under
    one official account: its members' WeChat logins go through the account that gave
    them), else the install's. None too when the community's keys cannot be read."""
    try:
        provider = get_provider(WeChatPayBase.name, community_id)
    except ProviderError:
        return None
    return provider if provider is not None and provider.can_oauth else None


@bp.get("/join/<slug>/login/wechat")
def login_wechat(slug: str):
    """Log in with WeChat's OAuth inside WeChat, or (``bind=1``, from the member page of
    a member who proved who they are) link their WeChat. The ``state`` works once, for ten
    minutes, in this browser only, and names the member a link is for."""
    community = _community(slug)
    provider = _wechat_oauth_provider(community.id)
    if provider is None:
        abort(404)
    member = logged_in_member(community) if request.args.get("bind") else None
    state = sign_for_this_browser(
        "wechat-login",
        {
            "community": community.id,
            "bind": member.id if member else None,
            "next": same_site_path(request.args.get("next")),
        },
    )
    oauth = provider.oauth(url_for(".login_wechat_return", slug=slug, _external=True), state)
    return redirect(oauth.authorize_url)


@bp.get("/join/<slug>/login/wechat/return")
def login_wechat_return(slug: str):
    """WeChat sends the browser back with a code for its openid. A link only waits here
    for the member to confirm it on ``/me`` (a POST): a GET never binds."""
    community = _community(slug)
    provider = _wechat_oauth_provider(community.id)
    state = unsign_for_this_browser("wechat-login", request.args.get("state", ""))
    if provider is None or not isinstance(state, dict) or state.get("community") != community.id:
        abort(400)
    binding = state.get("bind")
    if binding is not None:
        member = logged_in_member(community)
        if member is None or member.id != binding:
            abort(400)
    end_transaction_keeping_objects()
    try:
        openid = provider.openid_from_code(
            url_for(".login_wechat_return", slug=slug, _external=True),
            request.args.get("code", ""),
        )
    except ProviderError:
        flash(_("WeChat authorisation failed, please try again"), "error")
        return redirect(url_for(".login", slug=slug))
    # Kept as the openid under that official account (a JSAPI payment through it needs
    # no second OAuth).
    session[openid_key(provider)] = openid
    take_write_lock()  # a GET that logs the member in
    owner = find_member_by_openid(community.id, openid)
    if binding is not None:
        if owner is not None and owner.id != binding:
            flash(_("This WeChat belongs to another member"), "error")
        elif owner is None:
            session[WECHAT_BIND_SESSION_KEY] = {"member": binding, "openid": openid}
        return redirect(url_for(".me"))
    if owner is None:
        flash(_("No member has this WeChat: log in with your phone or e-mail"), "error")
        return redirect(url_for(".login", slug=slug, next=state.get("next")))
    log_member_in(owner, by="wechat", now=utcnow())
    db.session.commit()
    return redirect(state.get("next") or url_for(".me"))


# The price before paying, and renewal by band ---------------------------------------------


def _community_and_tier(slug: str, tier_code: str) -> tuple[Community, Tier]:
    """The community and the tier of a tier's page (read together), or a 404 (in the
    community's language when the community is found); see :func:`_community`."""
    found = db.session.execute(_TIER_PAGE, {"slug": slug, "code": tier_code}).first()
    if found is None:
        _community(slug)
        abort(404)
    community, tier, held = found
    if not held:
        holds_none(community.id)
    g.community = community
    return community, tier


def check_typed_price(
    list_price: Money,
    code: str | None,
    *,
    community_id: int,
    member_id: int | None,
    product: str,
    buyer: str,
) -> PriceCheck:
    """A page's "check price" button: the price with the coupon code typed, checked by the
    same rules as the order (:func:`payments.discounts.check_price`). The code counts as a
    coupon try (claimed and committed first, as when an order is made); over the limit, the
    undiscounted price and the limit's message. Creates nothing else."""
    try:
        claim_discount_code_try(code)
    except DiscountRefused as refusal:
        return PriceCheck(list_price, Money(0, list_price.currency), str(refusal))
    purchase = Purchase(product=product, buyer=buyer)
    return check_price(
        Sale(community_id, member_id, list_price), code or "", purchase, now=utcnow()
    )


def _join_buyer(form: JoinForm, member: Member | None) -> str:
    """Whom a price check on the join form counts per-person coupon limits for: the member,
    or the contact typed (spelt as the application will keep it)."""
    if member is not None:
        return f"member:{member.id}"
    if form.contact_value.data and form.contact_kind.data in set(ContactKind):
        kind = ContactKind(form.contact_kind.data)
        return f"{kind}:{normalise_contact(kind, form.contact_value.data)}"
    return "prospect"


@bp.post("/join/<slug>/<tier_code>/price")
def join_price(slug: str, tier_code: str):
    """The join form's "check price" button: the same form again, as it was typed, with
    the price the coupon code gives ("You save ¥X, you pay ¥Y") or its refusal beside it.
    Nothing is made (no application, no order); the other fields are not checked yet."""
    community, tier = _community_and_tier(slug, tier_code)
    member = logged_in_member(community, proven=False)
    try:
        check_tier_open(tier, member)
    except JoinRefused:
        abort(404)
    form = _join_form(tier, member)
    if "coupon" not in form or not form.coupon.validate(form):
        return render_template(
            "join/form.html", community=community, tier=tier, form=form, member=member
        ), 422
    priced = check_typed_price(
        tier.price_money,
        form.coupon.data,
        community_id=community.id,
        member_id=member.id if member else None,
        product=f"tier:{tier.id}",
        buyer=_join_buyer(form, member),
    )
    if priced.refusal:
        form.coupon.errors.append(priced.refusal)
    return render_template(
        "join/form.html",
        community=community,
        tier=tier,
        form=form,
        member=member,
        price_check=priced,
    ), 422 if priced.refusal else 200


def _member_page(member: Member, **checked: Any) -> str:
    """The member's page: memberships with their days left, renewal bands and renew
    buttons (or why they ended), invitations, perks. ``checked`` carries a renewal's price
    check (:func:`renew_price`): the form it was typed in and its answer."""
    now = utcnow()
    pay_form = checked.pop("pay_form", None) or PayForm(formdata=None)
    offer_providers(pay_form, member.community_id)
    bind = session.get(WECHAT_BIND_SESSION_KEY)
    return render_template(
        "me/member.html",
        member=member,
        invitations=invitations_to_scan(member.invitations),
        community=member.community,
        pay_form=pay_form,
        confirm_wechat=isinstance(bind, dict) and bind.get("member") == member.id,
        channel_form=None if member.is_reachable else ChannelForm(),
        wechat_oauth=_wechat_oauth_provider(member.community_id) is not None
        and current_payer().in_wechat,
        renewals=renewal_offers(member, now),
        endings=endings_of(member),
        **checked,
    )


@bp.post("/me/renew/<int:membership_id>/price")
def renew_price(membership_id: int):
    """The renewal's "check price" button on ``/me``: the page again, with the price of
    the renewal band now and the coupon code typed ("You save ¥X, you pay ¥Y"), or the
    code's refusal beside it. Nothing is made (no renewal, no order)."""
    member = logged_in_member()
    membership = db.session.get(Membership, membership_id)
    if member is None or membership is None or membership.member_id != member.id:
        abort(404)
    now = utcnow()
    if not renewable(membership, now):
        abort(404)
    form = PayForm()
    if not form.coupon.validate(form):
        return _member_page(member, pay_form=form, checked_membership=membership.id), 422
    priced = check_typed_price(
        renewal_price(membership, now).price,
        form.coupon.data,
        community_id=member.community_id,
        member_id=member.id,
        product=f"tier:{membership.tier_id}",
        buyer=f"member:{member.id}",
    )
    if priced.refusal:
        form.coupon.errors.append(priced.refusal)
    page = _member_page(member, pay_form=form, price_check=priced, checked_membership=membership.id)
    return page, 422 if priced.refusal else 200
