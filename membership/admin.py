"""Admin pages for communities, tiers, groups and members, activity and purges."""

from __future__ import annotations

import re
import tempfile
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from flask import (
    Blueprint,
    Response,
    abort,
    flash,
    redirect,
    render_template,
    request,
    stream_with_context,
    url_for,
)
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_babel import ngettext
from flask_login import current_user, login_required
from sqlalchemy.orm import selectinload
from sqlalchemy.orm.attributes import set_committed_value
from wtforms import SelectChoice

from core import audit
from core.auth import (
    in_visible_communities,
    load_for,
    requires,
    visible_communities,
)
from core.clock import utcnow
from core.db import (
    begin_snapshot,
    db,
    end_transaction_keeping_objects,
    row_id,
    row_ids,
    session_dialect,
    take_write_lock,
)
from core.exporters import csv_lines, write_xlsx
from core.forms import UnreadableFile, field_labels
from core.labels import code_reader, label
from core.money import Money
from membership.access import complete_removal, queue_group_task, retry
from membership.dashboard import BUCKETS, DEFAULT_PERIOD, PERIODS, dashboard_charts
from membership.exports import (
    MembersExport,
    community_revenue,
    community_stats,
    date_presets,
    day_start,
)
from membership.forms import (
    AccessForm,
    ActivityForm,
    CommunityForm,
    ExportForm,
    GroupForm,
    ImportForm,
    PurgeForm,
    QuestionForm,
    ReviewForm,
    SeasonForm,
    TierForm,
)
from membership.imports import HEADERS, check_import, run_import, sample_csv
from membership.lifecycle import (
    PurgeRefused,
    end_by_hand,
    grant_by_hand,
    identifiers_from_csv,
    mark_active,
    open_season,
    purge_candidates,
    run_purge,
)
from membership.live_codes import group_warnings, seats_of
from membership.models import (
    CONTACT_KIND_LABELS,
    LISTED_ORDER,
    MEMBER_SEARCH,
    SEARCHED_MEMBER_COLUMNS,
    SORTED_ORDER,
    TIER_AUDIENCE_LABELS,
    TIER_KIND_LABELS,
    Application,
    ApplicationStatus,
    Community,
    ContactKind,
    Group,
    Invitation,
    InvitationStatus,
    Member,
    Membership,
    MembershipStatus,
    PlatformTask,
    Purge,
    QuestionKind,
    RemovalTask,
    ScreeningQuestion,
    TaskAction,
    TaskStatus,
    Tier,
    TierAudience,
    TierKind,
    tier_groups,
)
from membership.platforms import PLATFORMS, WECOM, PlatformError
from membership.renewal import RenewalBand
from membership.screening import ScreeningRefused, approve, reject
from membership.services import (
    JoinRefused,
    give_staff_number,
    normalise_contact,
    place_waiting_invitations,
    seats_taken,
    waiting_invitations,
)
from membership.wecom import (
    chat_choices,
    freeloaders,
    group_headcounts,
    queue_reconciliation,
    removal_details,
)
from membership.wecom import configured as wecom_configured
from payments import inbox
from payments.admin import visible_webhook_events
from payments.models import WebhookEvent

bp = Blueprint("membership_admin", __name__, url_prefix="/admin")

PAGE_SIZE = 50

#: Image types a group QR may be, by their first bytes (the file name proves nothing).
_IMAGE_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "image/png",
    b"\xff\xd8\xff": "image/jpeg",
}


def sniff_image(data: bytes) -> str | None:
    """The MIME type of a PNG, JPEG or WebP image, or None for anything else."""
    for signature, mime in _IMAGE_SIGNATURES.items():
        if data.startswith(signature):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


@bp.before_request
@login_required
def _staff_only() -> None:
    """Every page here is for logged-in staff."""


def _visible_platform_tasks() -> sa.ColumnElement[bool]:
    """The platform calls the logged-in person may see and retry: those about an
    invitation or a WeCom group of a community where they may (install owners: all)."""
    visible = visible_communities("platform.tasks")
    if visible is None:
        return sa.true()
    communities = sorted(visible)
    invitations = (
        sa.select(Invitation.id)
        .join(Member, Invitation.member_id == Member.id)
        .where(Member.community_id.in_(communities))
    )
    chats = sa.select(Group.wecom_chat_id).where(
        Group.community_id.in_(communities), Group.wecom_chat_id.is_not(None)
    )
    return sa.or_(PlatformTask.invitation_id.in_(invitations), PlatformTask.chat_id.in_(chats))


def _changes(obj, form, fields: list[str]) -> dict[str, str | bool | None]:
    """Copy ``fields`` from the form to ``obj``; the ones that changed, for the audit log."""
    return audit.apply_changes(obj, {name: getattr(form, name).data for name in fields})


def _communities_with_groups(shown: sa.ColumnElement[bool]) -> list[Community]:
    """The communities ``shown``, in order, with their groups and their tiers' groups loaded
    (what the group warnings and the seats read): four statements whatever their number,
    as ``selectinload`` makes, without its loaders' cost (their building was a sixth of the
    dashboard's CPU, twice the statements' own)."""
    communities = db.session.scalars(sa.select(Community).where(shown).order_by(Community.id)).all()
    if not communities:
        return []
    ids = [community.id for community in communities]
    groups = db.session.scalars(
        sa.select(Group).where(Group.community_id.in_(ids)).order_by(Group.id)
    ).all()
    tiers = db.session.scalars(
        sa.select(Tier).where(Tier.community_id.in_(ids)).order_by(Tier.sort_order, Tier.id)
    ).all()
    groups_of_tier: dict[int, list[Group]] = {tier.id: [] for tier in tiers}
    for tier_id, group in db.session.execute(
        sa.select(tier_groups.c.tier_id, Group)
        .join(Group, Group.id == tier_groups.c.group_id)
        .where(tier_groups.c.tier_id.in_(list(groups_of_tier)))
        .order_by(Group.id)
    ):
        groups_of_tier[tier_id].append(group)
    for community in communities:
        set_committed_value(
            community, "groups", [g for g in groups if g.community_id == community.id]
        )
        set_committed_value(
            community, "tiers", [t for t in tiers if t.community_id == community.id]
        )
    for tier in tiers:
        set_committed_value(tier, "groups", groups_of_tier[tier.id])
    return communities


@bp.get("/")
@requires("members.view")
def dashboard():
    """The first page after logging in: what needs attention, the communities, and one
    community's figures (``?community=``, the first by default) over ``?days=`` 7, 30 or
    90, revenue by ``?by=`` day, week or month. Reads only; only the communities where
    the person may see members."""
    communities = _communities_with_groups(in_visible_communities(Community.id, "members.view"))
    waiting = dict(
        db.session.execute(
            sa.select(Member.community_id, sa.func.count())
            .join(Invitation, Invitation.member_id == Member.id)
            .where(Invitation.status == InvitationStatus.WAITING)
            .where(in_visible_communities(Member.community_id, "members.view"))
            .group_by(Member.community_id)
        ).all()
    )
    tasks = (
        sa.select(
            sa.func.count().filter(PlatformTask.status == TaskStatus.FAILED).label("failed"),
            sa.func.count().filter(PlatformTask.status == TaskStatus.PENDING).label("queued"),
        )
        .where(_visible_platform_tasks())
        .subquery()
    )
    # The four counts in one statement: one round trip, not three.
    counts = db.session.execute(
        sa.select(
            sa.select(sa.func.count(WebhookEvent.id))
            .where(inbox.needs_replay(utcnow()), visible_webhook_events())
            .scalar_subquery(),
            tasks.c.failed,
            tasks.c.queued,
            sa.select(sa.func.count(RemovalTask.id))
            .join(Group)
            .where(
                RemovalTask.done_at.is_(None),
                in_visible_communities(Group.community_id, "members.removals"),
            )
            .scalar_subquery(),
        ).select_from(tasks)
    ).one()
    attention = dict(
        zip(
            ("failed_webhooks", "failed_platform_calls", "queued_platform_calls", "removals"),
            counts,
            strict=True,
        )
    )
    now = utcnow()
    taken = {g.id: g.seats_taken for c in communities for g in c.groups}
    group_alerts = [w for c in communities for w in group_warnings(c, taken, now=now)]
    chosen = next(
        (c for c in communities if str(c.id) == request.args.get("community")),
        communities[0] if communities else None,
    )
    days = request.args.get("days", type=row_id)
    days = days if days in PERIODS else DEFAULT_PERIOD
    by = request.args.get("by") if request.args.get("by") in BUCKETS else "day"
    return render_template(
        "admin/dashboard.html",
        communities=communities,
        waiting=waiting,
        attention=attention,
        group_alerts=group_alerts,
        chosen=chosen,
        days=days,
        by=by,
        charts=dashboard_charts(
            chosen, days, by, now=now, money=current_user.can("finance.export", chosen.id)
        )
        if chosen
        else None,
    )


@bp.route("/communities/new", methods=["GET", "POST"])
@requires("install.manage")
def new_community():
    """The install's owners create communities; each gets its first owner on the team
    page."""
    return community_form.__wrapped__()


@bp.route("/communities/<int:community_id>/edit", methods=["GET", "POST"])
@requires("community.manage")
def community_form(community_id: int | None = None):
    community = load_for(Community, community_id, "community.manage") if community_id else None
    form = CommunityForm(obj=community)
    if form.validate_on_submit():
        taken = db.session.scalar(
            sa.select(Community.id).where(
                Community.slug == form.slug.data, Community.id != (community_id or 0)
            )
        )
        if taken:
            form.slug.errors.append(_("Slug already taken"))
        else:
            now = utcnow()
            if community is None:
                community = Community(created_at=now)
                db.session.add(community)
            changed = _changes(
                community,
                form,
                [
                    "name",
                    "slug",
                    "pitch",
                    "rules",
                    "currency",
                    "time_zone",
                    "locale",
                    "member_number_pattern",
                    "staff_number_pattern",
                    "pay_link_days",
                    "reminder_days",
                ],
            )
            audit.record(
                "community.saved", community, actor=current_user.actor, data=changed, now=now
            )
            db.session.commit()
            flash(_("Saved"), "ok")
            return redirect(url_for(".community", community_id=community.id))
    return render_template("admin/community_form.html", form=form, community=community)


@bp.get("/communities/<int:community_id>")
@requires("members.view")
def community(community_id: int):
    community = load_for(Community, community_id, "members.view")
    seats = seats_taken([group.id for group in community.groups])
    waiting = waiting_invitations(community.id)
    return render_template(
        "admin/community.html",
        community=community,
        seats=seats,
        waiting=waiting,
        stats=community_stats(community),
        soon=utcnow() + timedelta(days=2),  # QR codes expiring by then are flagged
        room={group.id: seats_of(group) for group in community.groups},
    )


@bp.route("/communities/<int:community_id>/tiers/new", methods=["GET", "POST"])
@bp.route("/tiers/<int:tier_id>/edit", methods=["GET", "POST"])
@requires("community.manage")
def tier_form(community_id: int | None = None, tier_id: int | None = None):
    tier = load_for(Tier, tier_id, "community.manage") if tier_id else None
    community = tier.community if tier else load_for(Community, community_id, "community.manage")
    form = TierForm(obj=tier)
    if tier is not None and request.method == "GET":
        form.price.data = tier.price_money.major_str()
        form.renewal_price.data = (
            ""
            if tier.renewal_price is None
            else Money(tier.renewal_price, tier.currency).major_str()
        )
        form.groups.data = [g.id for g in tier.groups]
    form.groups.choices = [SelectChoice(g.id, g.name) for g in community.groups]
    form.price.currency = form.renewal_price.currency = community.currency
    if form.validate_on_submit():
        price = form.price.money
        renewal = form.renewal_price.money
        kind = TierKind(form.kind.data)
        if price is not None and (kind is TierKind.FREE) != (price.amount == 0):
            form.price.errors.append(_("Free tiers cost 0, paid tiers more than 0"))
            price = None
        code_taken = db.session.scalar(
            sa.select(Tier.id).where(
                Tier.community_id == community.id,
                Tier.code == form.code.data,
                Tier.id != (tier_id or 0),
            )
        )
        if code_taken:
            form.code.errors.append(_("Code already taken"))
        if price is not None and not code_taken:
            now = utcnow()
            if tier is None:
                tier = Tier(community=community)
                db.session.add(tier)
            form.kind.data = kind
            form.audience.data = TierAudience(form.audience.data)
            form.sort_order.data = form.sort_order.data or 0
            changed = _changes(
                tier,
                form,
                [
                    "code",
                    "name",
                    "includes",
                    "kind",
                    "duration_days",
                    "audience",
                    "active",
                    "sort_order",
                    "requires_screening",
                    "is_lobby",
                    *TierForm.renewal_fields,
                ],
            )
            if (tier.price, tier.currency) != (price.amount, price.currency):
                changed["price"] = price.iso_str()
            tier.price, tier.currency = price.amount, price.currency
            tier.renewal_price = renewal.amount if renewal else None
            tier.groups = [g for g in community.groups if g.id in set(form.groups.data or [])]
            audit.record("tier.saved", tier, actor=current_user.actor, data=changed, now=now)
            place_waiting_invitations(community, actor=current_user.actor, now=now)
            db.session.commit()
            flash(_("Saved"), "ok")
            return redirect(url_for(".community", community_id=community.id))
    return render_template("admin/tier_form.html", form=form, community=community, tier=tier)


@bp.route("/communities/<int:community_id>/groups/new", methods=["GET", "POST"])
@bp.route("/groups/<int:group_id>/edit", methods=["GET", "POST"])
@requires("community.manage")
def group_form(community_id: int | None = None, group_id: int | None = None):
    group = load_for(Group, group_id, "community.manage") if group_id else None
    community = group.community if group else load_for(Community, community_id, "community.manage")
    form = GroupForm(obj=group)
    if group is not None and group.qr_expires_at and request.method == "GET":
        local = group.qr_expires_at.astimezone(ZoneInfo(community.time_zone))
        form.qr_expires_at.data = (local - timedelta(days=1)).date()
    if form.validate_on_submit():
        upload = form.qr_image.data
        image = upload.read() if upload else None
        mime = sniff_image(image) if image else None
        chat_taken = form.wecom_chat_id.data and db.session.scalar(
            sa.select(Group.id).where(
                Group.wecom_chat_id == form.wecom_chat_id.data, Group.id != (group_id or 0)
            )
        )
        if image and mime is None:
            form.qr_image.errors.append(_("Not a PNG, JPEG or WebP image"))
        elif chat_taken:
            form.wecom_chat_id.errors.append(_("Another group has it"))
        else:
            now = utcnow()
            if group is None:
                group = Group(community=community, created_at=now)
                db.session.add(group)
            form.wecom_chat_id.data = form.wecom_chat_id.data or None
            changed = _changes(
                group,
                form,
                ["name", "platform", "capacity", "join_link", "telegram_chat_id", "wecom_chat_id"],
            )
            if "wecom_chat_id" in changed and group.wecom_chat_id:
                # Its owner and members are read by the worker, not in this request.
                queue_group_task(TaskAction.SYNC, chat_id=group.wecom_chat_id, now=now)
            expires = form.qr_expires_at.data
            group.qr_expires_at = (
                day_start(community, expires + timedelta(days=1)) if expires else None
            )
            if image:
                group.qr_image, group.qr_mime = image, mime
                changed["qr_image"] = f"{len(image)} bytes"
            audit.record("group.saved", group, actor=current_user.actor, data=changed, now=now)
            placed = place_waiting_invitations(community, actor=current_user.actor, now=now)
            db.session.commit()
            flash(_("Saved; %(count)s waiting members placed", count=placed), "ok")
            return redirect(url_for(".community", community_id=community.id))
    wecom_chats, wecom_error = [], None
    if wecom_configured() and request.method == "GET":
        end_transaction_keeping_objects()
        try:
            wecom_chats = chat_choices()
        except (PlatformError, OSError):
            wecom_error = _("WeCom's group list is unavailable now")
    return render_template(
        "admin/group_form.html",
        form=form,
        community=community,
        group=group,
        wecom_chats=wecom_chats,
        wecom_error=wecom_error,
    ), 422 if form.errors else 200


#: A member number as admins type it: ``42``, ``0042`` or ``#0042``.
_NUMBER = re.compile(r"#?(\d{1,6})")
#: A nickname in the group, copied from it: the number first (``0002-小猫``, see
#: :func:`membership.views.group_nickname`).
_GROUP_NICKNAME = re.compile(r"#?(\d{1,6})\s*[-_\u00b7.\u3001\s]\s*\S.*")
#: A staff number (``LS-07``): letters, then its number.
_STAFF_NUMBER = re.compile(r"[^\W\d_]+[-_\s]?(\d{1,6})")
#: A whole mainland phone number or e-mail address.
_WHOLE_CONTACT = re.compile(r"(\+?86)?1\d{10}|[^@\s]+@[^@\s]+\.\w+")


def _numbered(number: str) -> sa.ColumnElement[bool]:
    """The member numbered ``number`` (``42`` or ``0042``), by its index."""
    return sa.or_(Member.number == int(number), Member.number_label == number)


def _matching(text: str) -> sa.ColumnElement[bool]:
    """What a search box's ``text`` finds. A number, a group nickname (by its number), a
    staff number, or a whole phone number or e-mail address, is looked up by its index
    (one row among 100,000); anything else is a part of a name, contact or WeChat ID, read
    through the community's members (a nickname or staff number is also read as a part of
    a name: a name may look like one)."""
    if number := _NUMBER.fullmatch(text):
        return _numbered(number.group(1))
    if _WHOLE_CONTACT.fullmatch(text):
        kind = ContactKind.EMAIL if "@" in text else ContactKind.PHONE
        return sa.and_(
            Member.contact_kind == kind,
            Member.contact_value == normalise_contact(kind, text),
        )
    if nickname := _GROUP_NICKNAME.fullmatch(text):
        return sa.or_(_numbered(nickname.group(1)), _name_part(text))
    if staff := _STAFF_NUMBER.fullmatch(text):
        by_staff_number = sa.and_(
            Member.staff_number == int(staff.group(1)),
            sa.func.upper(Member.staff_number_label) == text.upper(),
        )
        return sa.or_(by_staff_number, _name_part(text))
    return _name_part(text)


#: Characters in a trigram: a shorter text has none, and no trigram index can find it.
TRIGRAM = 3


def _name_part(text: str) -> sa.ColumnElement[bool]:
    """Members whose nickname, contact or WeChat ID holds ``text``, ASCII letters in
    either case: what LIKE '%text%' finds, found through the columns' trigram indexes
    (see :data:`SEARCHED_MEMBER_COLUMNS`) rather than by reading every member.

    PostgreSQL's planner uses its ``pg_trgm`` indexes for the ILIKE itself. On SQLite the
    FTS5 table gives the candidates, a superset (it folds the case of every letter; LIKE
    only of ASCII ones), and LIKE keeps those it matches, so the answer is LIKE's to the
    row. A text of one or two characters has no trigram: it is LIKE over the community's
    members as before (a page of a common one fills quickly; a rare one reads them all)."""
    like = sa.or_(
        *(
            getattr(Member, column).icontains(text, autoescape=True)
            for column in SEARCHED_MEMBER_COLUMNS
        )
    )
    if len(text) < TRIGRAM or session_dialect() != "sqlite":
        return like
    # An FTS5 phrase: the text as one string, its double quotes doubled.
    phrase = '"' + text.replace('"', '""') + '"'
    candidates = (
        sa.select(sa.literal_column("rowid"))
        .select_from(sa.table(MEMBER_SEARCH))
        .where(sa.literal_column(MEMBER_SEARCH).op("MATCH")(phrase))
    )
    return sa.and_(Member.id.in_(candidates), like)


def _member_search(community: Community) -> sa.Select:
    """Members of ``community`` matching the list's filters: ``q`` (number, nickname or
    contact), ``tier``, ``state`` (of a membership; ``none`` for members without one) and
    ``reach=none`` (members with no proven channel: no WeChat openid, no phone or e-mail
    proven by a code)."""
    query = sa.select(Member).where(Member.community_id == community.id)
    text = request.args.get("q", "").strip()
    if text:
        query = query.where(_matching(text))
    if request.args.get("reach") == "none":
        query = query.where(~Member.reachable())
    tier_id = request.args.get("tier", type=row_id)
    state = request.args.get("state", "")
    if state == "none":
        query = query.where(~sa.exists().where(Membership.member_id == Member.id))
    elif tier_id or state in {s.value for s in MembershipStatus}:
        holds = sa.exists().where(Membership.member_id == Member.id)
        if tier_id:
            holds = holds.where(Membership.tier_id == tier_id)
        if state:
            holds = holds.where(Membership.status == state)
        query = query.where(holds)
    return query.order_by(*LISTED_ORDER)


#: How many members a list counts before it says "more than": see :func:`_count_up_to`.
COUNT_CAP = 10_000


def _count_up_to(search: sa.Select, limit: int) -> tuple[int, bool]:
    """How many members ``search`` finds, counting no further than ``limit``, and whether
    that is all of them. The list is called for every page and filter; an exact count
    made the database go through every matching member each time (at 100,000 members
    most of PostgreSQL's 65 ms a page), however few the page shows. So the count stops
    at a cap: exact below it, "10000+" above it, and always one past the page shown, so
    that "Next" is right however deep the admin goes. Chosen over an estimate (the
    planner's is wrong after a bulk import and SQLite has none) and over keyset pages
    (admins open page numbers; a capped count keeps them)."""
    found = search.with_only_columns(Member.id).order_by(None).limit(limit).subquery()
    counted = db.session.scalar(sa.select(sa.func.count()).select_from(found))
    return counted, counted < limit


#: Up to how many members found are sorted once found rather than found in order.
FEW_TO_SORT = 1_000


def _listed(search: sa.Select, found: int) -> sa.Select:
    """``search`` (in the list's order), which finds ``found`` members, read the cheaper
    way: many are found soonest by walking the community's list in order, the index's,
    until a page is full; a few (a search for someone) are found first and then sorted
    (for a rare name at 100,000 members on SQLite: 0.2 ms against 11; for 11,000 found the
    walk is 1.7 ms against 9.7)."""
    return search.order_by(None).order_by(*SORTED_ORDER) if found <= FEW_TO_SORT else search


@bp.get("/communities/<int:community_id>/members")
@requires("members.view")
def members(community_id: int):
    """Search and filter the community's members."""
    community = load_for(Community, community_id, "members.view")
    search = _member_search(community)
    number = max(request.args.get("page", 1, type=row_id), 1)
    found, counted_all = _count_up_to(search, max(COUNT_CAP, number * PAGE_SIZE) + 1)
    page = db.paginate(
        _listed(search, found).options(
            # A page's memberships and invitations in two statements, not two per row.
            selectinload(Member.memberships).joinedload(Membership.tier),
            selectinload(Member.invitations).joinedload(Invitation.group),
        ),
        page=number,
        per_page=PAGE_SIZE,
        count=False,
    )
    page.total = found
    return render_template(
        "admin/members.html",
        community=community,
        page=page,
        counted_all=counted_all,
        states=list(MembershipStatus),
        # Each label translated once a page, not once a row.
        labels={value: label(value) for kind in (ContactKind, InvitationStatus) for value in kind},
    )


@bp.get("/communities/<int:community_id>/members.csv")
@requires("members.manage")
def members_csv(community_id: int):
    """The members matching the list's filters, as CSV."""
    take_write_lock()  # for its audit entry
    community = load_for(Community, community_id, "members.manage")
    exporter = MembersExport(_member_search(community), community.time_zone)
    audit.record(
        "community.members_exported", community, actor=current_user.actor, data=dict(request.args)
    )
    db.session.commit()
    return Response(
        stream_with_context(csv_lines(exporter)),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{community.slug}-members.csv"'},
    )


@bp.route("/members/<int:member_id>", methods=["GET", "POST"])
@requires("members.manage")
def member(member_id: int):
    """One member: their memberships and invitations; grant a tier by hand or end a
    membership, with a reason kept in the audit log."""
    member = load_for(Member, member_id, "members.manage")
    community = member.community
    form = AccessForm()
    form.tier.choices = [SelectChoice(t.id, t.name) for t in community.tiers]
    form.membership.choices = [
        SelectChoice(m.id, f"{m.tier.name} · {label(m.status)}") for m in member.memberships
    ]
    if form.validate_on_submit():
        try:
            if form.action.data == "staff":
                give_staff_number(member, actor=current_user.actor)
            elif form.action.data == "grant":
                grant_by_hand(
                    member,
                    db.get_or_404(Tier, form.tier.data),
                    reason=form.reason.data,
                    actor=current_user.actor,
                )
            else:
                membership = db.get_or_404(Membership, form.membership.data)
                if membership.member_id != member.id:
                    abort(404)  # another member's membership, posted to this member's page
                end_by_hand(membership, reason=form.reason.data, actor=current_user.actor)
        except JoinRefused as refusal:
            db.session.rollback()
            flash(str(refusal), "error")
        else:
            db.session.commit()
            flash(_("Saved"), "ok")
        return redirect(url_for(".member", member_id=member.id))
    return render_template("admin/member.html", member=member, community=community, form=form)


@bp.route("/communities/<int:community_id>/activity", methods=["GET", "POST"])
@requires("members.activity")
def activity(community_id: int):
    """Mark members active, by hand or from a CSV, before a purge."""
    community = load_for(Community, community_id, "members.activity")
    form = ActivityForm()
    result = None
    if form.validate_on_submit():
        identifiers = [line.strip() for line in (form.identifiers.data or "").splitlines()]
        if form.csv_file.data:
            try:
                identifiers += identifiers_from_csv(form.csv_file.data.read())
            except UnreadableFile as unreadable:
                form.csv_file.errors.append(str(unreadable))
                return render_template(
                    "admin/activity.html", community=community, form=form, result=None
                ), 422
        identifiers = [i for i in identifiers if i]
        marked, unmatched = mark_active(community, identifiers, actor=current_user.actor)
        db.session.commit()
        result = {"marked": marked, "unmatched": unmatched}
    return render_template("admin/activity.html", community=community, form=form, result=result)


@bp.route("/communities/<int:community_id>/purge", methods=["GET", "POST"])
@requires("members.purge")
def purge(community_id: int):
    """Preview, then run, a purge of members not active since a date."""
    community = load_for(Community, community_id, "members.purge")
    form = PurgeForm(
        request.form if request.method == "POST" else request.args,
        meta={"csrf": request.method == "POST"},
    )
    form.today = utcnow().astimezone(ZoneInfo(community.time_zone)).date()
    candidates = None
    submitted = request.method == "POST" or "inactive_since" in request.args
    if submitted and form.validate():
        inactive_since = day_start(community, form.inactive_since.data)
        if request.method == "POST":
            try:
                done = run_purge(community, inactive_since, actor=current_user.actor)
            except PurgeRefused as refusal:
                db.session.rollback()
                flash(str(refusal), "error")
            else:
                db.session.commit()
                flash(_("%(count)s members purged", count=done.purged_count), "ok")
            return redirect(url_for(".purge", community_id=community.id))
        candidates = purge_candidates(community, inactive_since)
    purges = db.session.scalars(
        sa.select(Purge).where(Purge.community_id == community.id).order_by(Purge.id.desc())
    ).all()
    return render_template(
        "admin/purge.html",
        community=community,
        form=form,
        candidates=candidates,
        purges=purges,
        actors=audit.actor_names(purge.run_by for purge in purges),
    )


@bp.route("/communities/<int:community_id>/questions", methods=["GET", "POST"])
@requires("community.manage")
def questions(community_id: int):
    """The screening questions: add one; switch one off or on."""
    community = load_for(Community, community_id, "community.manage")
    form = QuestionForm()
    if form.validate_on_submit():
        question = ScreeningQuestion(
            community=community,
            position=len(community.questions),
            prompt=form.prompt.data,
            kind=QuestionKind(form.kind.data),
            choices=form.choices.data or "",
            required=form.required.data,
            auto_approve_answer=form.auto_approve_answer.data or None,
        )
        db.session.add(question)
        audit.record(
            "question.created", question, actor=current_user.actor, data={"prompt": question.prompt}
        )
        db.session.commit()
        flash(_("Added"), "ok")
        return redirect(url_for(".questions", community_id=community.id))
    return render_template("admin/questions.html", community=community, form=form)


@bp.post("/questions/<int:question_id>/toggle")
@requires("community.manage")
def toggle_question(question_id: int):
    question = load_for(ScreeningQuestion, question_id, "community.manage")
    question.active = not question.active
    audit.record(
        "question.toggled", question, actor=current_user.actor, data={"active": question.active}
    )
    db.session.commit()
    return redirect(url_for(".questions", community_id=question.community_id))


def _review_decision(posted) -> tuple[str | None, list[int]]:
    """What the review form asks: a button on one applicant's card (``decide`` =
    ``approve:42``) decides for that applicant alone; the buttons below the queue
    (``action``) for every ticked ``application``."""
    verdict, _sep, one = posted.get("decide", "").partition(":")
    if verdict:
        return verdict, row_ids([one])
    return posted.get("action"), row_ids(posted.getlist("application"))


@bp.route("/communities/<int:community_id>/applications", methods=["GET", "POST"])
@requires("members.review")
def applications(community_id: int):
    """The screening queue: answers in full; approve or reject one applicant with the
    buttons on their card, or those ticked at once with the buttons below."""
    community = load_for(Community, community_id, "members.review")
    form = ReviewForm()
    if form.validate_on_submit():
        action, chosen = _review_decision(request.form)
        pending = db.session.scalars(
            sa.select(Application).where(
                Application.id.in_(chosen), Application.community_id == community.id
            )
        ).all()
        messages = []
        try:
            for application in pending:
                if action == "approve":
                    messages.append(approve(application, actor=current_user.actor))
                elif action == "reject":
                    messages.append(
                        reject(application, form.reason.data or "", actor=current_user.actor)
                    )
                else:
                    abort(400)
        except ScreeningRefused as refusal:
            db.session.rollback()
            flash(str(refusal), "error")
        else:
            db.session.commit()
            flash(
                ngettext(
                    "%(num)d application reviewed", "%(num)d applications reviewed", len(messages)
                ),
                "ok",
            )
        return redirect(url_for(".applications", community_id=community.id))
    queue = db.session.scalars(
        sa.select(Application)
        .where(
            Application.community_id == community.id,
            Application.status == ApplicationStatus.PENDING_REVIEW,
        )
        .order_by(Application.id)
    ).all()
    return render_template(
        "admin/applications.html",
        community=community,
        queue=queue,
        form=form,
        questions={str(q.id): q.prompt for q in community.questions},
    )


@bp.route("/communities/<int:community_id>/removals", methods=["GET", "POST"])
@requires("members.removals")
def removals(community_id: int):
    """Members moderators must remove by hand from QR-joined groups; tick them off."""
    community = load_for(Community, community_id, "members.removals")
    if request.method == "POST":
        task = db.session.scalar(
            sa.select(RemovalTask)
            .join(Group)
            .where(
                RemovalTask.id == request.form.get("task", type=row_id),
                Group.community_id == community.id,
            )
        )
        if task is None:
            abort(404)
        complete_removal(task, actor=current_user.actor)
        db.session.commit()
        return redirect(url_for(".removals", community_id=community.id))
    pending = db.session.scalars(
        sa.select(RemovalTask)
        .join(Group)
        .where(Group.community_id == community.id, RemovalTask.done_at.is_(None))
        .order_by(RemovalTask.id)
    ).all()
    return render_template(
        "admin/removals.html",
        community=community,
        pending=pending,
        wecom_people=removal_details(pending),
    )


@bp.route("/wecom", methods=["GET", "POST"])
@requires("members.removals")
def wecom():
    """The WeCom customer groups of the person's communities: owner, people, freeloaders;
    queue a reconciliation (of the install's one WeCom corporation, so only for staff
    who may remove members in every community)."""
    if request.method == "POST":
        if not current_user.can_everywhere("members.removals"):
            abort(403)
        queue_reconciliation(actor=current_user.actor, now=utcnow())
        db.session.commit()
        flash(_("Reconciliation queued"), "ok")
        return redirect(url_for(".wecom"))
    groups = db.session.scalars(
        sa.select(Group)
        .where(
            Group.platform == WECOM,
            in_visible_communities(Group.community_id, "members.removals"),
        )
        .order_by(Group.community_id, Group.id)
    ).all()
    return render_template(
        "admin/wecom.html",
        groups=groups,
        people=group_headcounts([g.id for g in groups]),
        loaders={g.id: len(freeloaders(g)) for g in groups},
    )


@bp.get("/groups/<int:group_id>/freeloaders")
@requires("members.removals")
def group_freeloaders(group_id: int):
    """People in a WeCom group whom no valid invitation covers, when and how they came."""
    group = load_for(Group, group_id, "members.removals")
    return render_template(
        "admin/freeloaders.html", group=group, community=group.community, rows=freeloaders(group)
    )


@bp.route("/platform-tasks", methods=["GET", "POST"])
@requires("platform.tasks")
def platform_tasks():
    """Platform calls that gave up after their retries: see why, and retry."""
    if request.method == "POST":
        task = db.session.scalar(
            sa.select(PlatformTask).where(
                PlatformTask.id == request.form.get("task", type=row_id), _visible_platform_tasks()
            )
        )
        if task is None or task.status is not TaskStatus.FAILED:
            abort(404)
        retry(task, actor=current_user.actor)
        db.session.commit()
        flash(_("Queued again"), "ok")
        return redirect(url_for(".platform_tasks"))
    failed = db.session.scalars(
        sa.select(PlatformTask)
        .where(PlatformTask.status == TaskStatus.FAILED, _visible_platform_tasks())
        .order_by(PlatformTask.id)
    ).all()
    return render_template("admin/platform_tasks.html", failed=failed)


@bp.route("/tiers/<int:tier_id>/season", methods=["GET", "POST"])
@requires("community.manage")
def season(tier_id: int):
    """Open a new season: invite another tier's current members to this tier's groups."""
    tier = load_for(Tier, tier_id, "community.manage")
    community = tier.community
    form = SeasonForm()
    form.from_tier.choices = [
        SelectChoice(t.id, t.name) for t in community.tiers if t.id != tier.id
    ]
    if form.validate_on_submit():
        from_tier = db.get_or_404(Tier, form.from_tier.data)
        invited = open_season(
            tier, from_tier, free=form.mode.data == "free", actor=current_user.actor
        )
        db.session.commit()
        flash(ngettext("%(num)d member invited", "%(num)d members invited", invited), "ok")
        return redirect(url_for(".community", community_id=community.id))
    return render_template("admin/season.html", form=form, tier=tier, community=community)


@bp.route("/communities/<int:community_id>/export")
@requires("finance.export")
def export(community_id: int):
    """Revenue for a date range: CSV (streamed; ?sheet=totals for the totals) or XLSX
    (both sheets in one workbook), in the page's language. ``?preset=`` (this month, last
    month …, on the community's calendar) fills the form in without exporting."""
    community = load_for(Community, community_id, "finance.export")
    today = utcnow().astimezone(ZoneInfo(community.time_zone)).date()
    presets = date_presets(today)
    chosen = next((p for p in presets if p[0] == request.args.get("preset")), None)
    if chosen is not None:
        form = ExportForm(
            data={"first_day": chosen[2], "last_day": chosen[3]}, meta={"csrf": False}
        )
    else:
        form = ExportForm(request.args, meta={"csrf": False})
    if chosen is not None or not (request.args and form.validate()):
        return render_template("admin/export.html", community=community, form=form, presets=presets)
    take_write_lock()  # for its audit entry
    audit.record(
        "finance.exported",
        community,
        actor=current_user.actor,
        data={
            "from": str(form.first_day.data),
            "to": str(form.last_day.data),
            "format": form.format.data,
        },
    )
    begin_snapshot()  # the totals and the movements read the same ledger
    rows, totals = community_revenue(community, form.first_day.data, form.last_day.data)
    name = f"{community.slug}-{form.first_day.data}-{form.last_day.data}"
    if form.format.data == "xlsx":
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"{name}.xlsx"
            write_xlsx(path, rows, totals)
            data = path.read_bytes()
        return Response(
            data,
            mimetype="application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            headers={"Content-Disposition": f'attachment; filename="{name}.xlsx"'},
        )
    if request.args.get("sheet") == "totals":
        rows, name = totals, f"{name}-totals"
    return Response(
        stream_with_context(csv_lines(rows)),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
    )


@bp.route("/communities/<int:community_id>/import", methods=["GET", "POST"])
@requires("members.manage")
def import_members(community_id: int):
    """Bring in an existing community's members from a CSV: dry run, then all or nothing."""
    community = load_for(Community, community_id, "members.manage")
    form = ImportForm()
    check = None
    if form.validate_on_submit():
        # The row lock on the community keeps numbering consistent with admissions.
        db.session.scalar(
            sa.select(Community).where(Community.id == community.id).with_for_update()
        )
        check = check_import(community, form.csv_file.data.read())
        if form.run.data and check.ok:
            count = run_import(community, check, actor=current_user.actor)
            db.session.commit()
            flash(ngettext("%(num)d member imported", "%(num)d members imported", count), "ok")
            return redirect(url_for(".members", community_id=community.id))
        db.session.rollback()
    columns = ", ".join(str(name) for name in HEADERS.values())
    return render_template(
        "admin/import.html", community=community, form=form, check=check, columns=columns
    )


@bp.get("/communities/<int:community_id>/import/sample.csv")
@requires("members.manage")
def import_sample(community_id: int):
    """A sample import file in the page's language, to fill in and send back."""
    community = load_for(Community, community_id, "members.manage")
    return Response(
        sample_csv(),
        mimetype="text/csv",
        headers={
            "Content-Disposition": f'attachment; filename="{community.slug}-members-sample.csv"'
        },
    )


@bp.app_template_filter("platform")
def platform_label(key: str) -> str:
    """A group's platform as the reader calls it."""
    platform = PLATFORMS.get(key)
    return str(platform.label) if platform is not None else key


def _member_names(ids: list[str]) -> dict[str, str]:
    """The audit log's names for ``member:<id>`` actors: "member 0042", or the member's
    name before they have a number."""
    wanted = row_ids(ids)
    rows = db.session.execute(
        sa.select(Member.id, Member.number_label, Member.display_name).where(Member.id.in_(wanted))
    )
    return {
        str(member_id): _("member %(number)s", number=number)
        if number
        else _("member %(name)s", name=name)
        for member_id, number, name in rows
    }


audit.register_actor_names("member", _member_names)

#: What this package's audit actions and tables are called on the audit log.
audit.register_labels(
    {
        "community.seeded": _l("Demo community made"),
        "community.saved": _l("Community saved"),
        "community.members_exported": _l("Members exported"),
        "community.members_imported": _l("Members imported"),
        "community.activity_marked": _l("Members marked active"),
        "community.purged": _l("Inactive members purged"),
        "finance.exported": _l("Revenue exported"),
        "tier.saved": _l("Tier saved"),
        "tier.season_opened": _l("New season opened"),
        "group.saved": _l("Group saved"),
        "group.adopted": _l("WeCom group linked"),
        "question.created": _l("Question added"),
        "question.toggled": _l("Question turned on or off"),
        "application.submitted": _l("Application sent"),
        "application.channel_proven": _l("Applicant's contact proven"),
        "application.coupon_refused": _l("Coupon no longer applied once the contact was proven"),
        "application.approved": _l("Application approved"),
        "application.rejected": _l("Application rejected"),
        "invitation.issued": _l("Invited to a group"),
        "invitation.joined": _l("Joined the group"),
        "invitation.revoked": _l("Invitation revoked"),
        "invitation.expired": _l("Invitation expired"),
        "invitation.waiting": _l("Waiting for a group seat"),
        "invitation.link_renewed": _l("Invite link renewed"),
        "member.admitted": _l("Became a member"),
        "member.claim_reset": _l("Contact claim reset"),
        "member.contact_proven": _l("Contact proven"),
        "member.staff_numbered": _l("Staff number given"),
        "member.login_code_sent": _l("Login code sent"),
        "member.logged_in": _l("Member logged in"),
        "member.logged_out": _l("Member logged out"),
        "member.logged_out_everywhere": _l("Member logged out everywhere"),
        "member.wechat_bound": _l("WeChat linked"),
        "membership.granted": _l("Access granted by hand"),
        "membership.renewed": _l("Membership renewed"),
        "membership.renewal_taken_back": _l("Renewal taken back"),
        "membership.renewal_started": _l("Renewal started"),
        "membership.reminded": _l("Renewal reminder sent"),
        "membership.restored": _l("Membership restored"),
        "membership.pay_link": _l("Pay link sent"),
        "membership.active": _l("Membership active"),
        "membership.suspended": _l("Membership suspended"),
        "membership.ended": _l("Membership ended"),
        "membership.expired": _l("Membership expired"),
        "membership.purged": _l("Membership purged"),
        "platform_task.failed": _l("Platform call failed"),
        "platform_task.retried": _l("Platform call retried"),
        "removal.done": _l("Removed from the group"),
        "wecom.member_left": _l("Left the WeCom group"),
        "wecom.reconcile_queued": _l("WeCom check queued"),
    },
    {
        "communities": _l("Community"),
        "tiers": _l("Tier"),
        "groups": _l("Group"),
        "members": _l("Member"),
        "memberships": _l("Membership"),
        "applications": _l("Application"),
        "invitations": _l("Invitation"),
        "screening_questions": _l("Question"),
        "platform_tasks": _l("Platform call"),
        "removal_tasks": _l("Removal"),
        "purges": _l("Purge"),
    },
)

#: What the details of this package's entries are called: an edit's fields as its form
#: names them, and the rest; tiers' kinds, platforms, renewal bands, ways of logging in
#: and reasons a membership ended by their names.
audit.register_details(
    {
        **field_labels(CommunityForm, TierForm, GroupForm),
        "application": _l("Application"),
        "again": _l("Earlier application"),
        "band": _l("Renewal band"),
        "by": _l("Through"),
        "contact": _l("Contact kind"),
        "wechat_unbound": _l("WeChat unlinked"),
        "chat_id": _l("WeCom group ID"),
        "user_id": _l("Platform user ID"),
        "ends_at": _l("Ends"),
        "format": _l("Format"),
        "free": _l("Free"),
        "from_tier": _l("From tier"),
        "group": _l("Group"),
        "highest_number": _l("Highest number"),
        "inactive_since": _l("Inactive since"),
        "invited": _l("Invited"),
        "member": _l("Member"),
        "members": _l("Members"),
        "number": _l("Number"),
        "percent": _l("Percent"),
        "price": _l("Price"),
        "prompt": _l("Question"),
        "qr_image": _l("Group QR code"),
        "restored": _l("Restored"),
        "staff_number": _l("Staff number"),
        "tier": _l("Tier"),
        "unmatched": _l("Not matched"),
    },
    {
        "kind": code_reader(TIER_KIND_LABELS),
        "audience": code_reader(TIER_AUDIENCE_LABELS),
        "platform": code_reader({key: platform.label for key, platform in PLATFORMS.items()}),
        "band": code_reader(
            {
                RenewalBand.EARLY: _l("Before the end"),
                RenewalBand.GRACE: _l("Within the grace days"),
                RenewalBand.LATE: _l("After the grace days"),
            }
        ),
        "by": code_reader(
            CONTACT_KIND_LABELS,
            {
                "code": _l("Login code"),
                "link": _l("Login link"),
                "status": _l("Status page"),
                "wechat": _l("WeChat"),
            },
        ),
        "contact": code_reader(CONTACT_KIND_LABELS),
        "reason": code_reader(
            {
                "purge": _l("Purged as inactive"),
                "term": _l("Term over"),
                "dispute_won": _l("Dispute won"),
            }
        ),
    },
)
