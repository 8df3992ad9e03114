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
from flask_login import current_user, login_required
from sqlalchemy.orm import selectinload
from wtforms import SelectChoice

from core import audit
from core.auth import requires
from core.clock import utcnow
from core.db import begin_snapshot, db, end_transaction_keeping_objects
from core.exporters import csv_lines, write_xlsx
from core.money import Money
from membership.access import complete_removal, queue_group_task, retry
from membership.exports import MembersExport, community_revenue, community_stats, day_start
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
from membership.imports import check_import, run_import
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
    LISTED_ORDER,
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
)
from membership.platforms import WECOM, PlatformError
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


def _changes(obj, form, fields: list[str]) -> dict[str, str]:
    """Copy ``fields`` from the form to ``obj``; the ones that changed, for the audit log."""
    return audit.apply_changes(obj, {name: getattr(form, name).data for name in fields})


@bp.get("/")
@requires("members.view")
def dashboard():
    communities = db.session.scalars(sa.select(Community).order_by(Community.id)).all()
    waiting = dict(
        db.session.execute(
            sa.select(Member.community_id, sa.func.count())
            .join(Invitation, Invitation.member_id == Member.id)
            .where(Invitation.status == InvitationStatus.WAITING)
            .group_by(Member.community_id)
        ).all()
    )
    members = dict(
        db.session.execute(
            sa.select(Member.community_id, sa.func.count()).group_by(Member.community_id)
        ).all()
    )
    attention = {
        "failed_webhooks": db.session.scalar(
            sa.select(sa.func.count(WebhookEvent.id)).where(inbox.needs_replay(utcnow()))
        ),
        "failed_platform_calls": db.session.scalar(
            sa.select(sa.func.count(PlatformTask.id)).where(
                PlatformTask.status == TaskStatus.FAILED
            )
        ),
        "queued_platform_calls": db.session.scalar(
            sa.select(sa.func.count(PlatformTask.id)).where(
                PlatformTask.status == TaskStatus.PENDING
            )
        ),
        "removals": db.session.scalar(
            sa.select(sa.func.count(RemovalTask.id)).where(RemovalTask.done_at.is_(None))
        ),
    }
    now = utcnow()
    taken = seats_taken([g.id for c in communities for g in c.groups])
    group_alerts = [w for c in communities for w in group_warnings(c, taken, now=now)]
    return render_template(
        "admin/dashboard.html",
        communities=communities,
        waiting=waiting,
        members=members,
        attention=attention,
        group_alerts=group_alerts,
    )


@bp.route("/communities/new", methods=["GET", "POST"])
@bp.route("/communities/<int:community_id>/edit", methods=["GET", "POST"])
@requires("community.manage")
def community_form(community_id: int | None = None):
    community = db.get_or_404(Community, community_id) if community_id else None
    form = CommunityForm(obj=community)
    if form.validate_on_submit():
        taken = db.session.scalar(
            sa.select(Community.id).where(
                Community.slug == form.slug.data, Community.id != (community_id or 0)
            )
        )
        if taken:
            form.slug.errors.append("链接名已被使用 · Slug already taken")
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
            flash("已保存 · Saved", "ok")
            return redirect(url_for(".community", community_id=community.id))
    return render_template("admin/community_form.html", form=form, community=community)


@bp.get("/communities/<int:community_id>")
@requires("members.view")
def community(community_id: int):
    community = db.get_or_404(Community, community_id)
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
    tier = db.get_or_404(Tier, tier_id) if tier_id else None
    community = tier.community if tier else db.get_or_404(Community, community_id)
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
    if form.validate_on_submit():
        try:
            price = form.price_in(community.currency)
        except ValueError:
            form.price.errors.append("价格格式不正确，例如 99 或 99.00 · Enter a price like 99.00")
            price = None
        renewal = None
        if form.renewal_price.data:
            try:
                renewal = Money.parse_major(form.renewal_price.data, community.currency)
            except ValueError:
                form.renewal_price.errors.append("价格格式不正确 · Enter a price like 99.00")
                price = None
        kind = TierKind(form.kind.data)
        if price is not None and (kind is TierKind.FREE) != (price.amount == 0):
            form.price.errors.append(
                "免费档价格为0，付费档价格大于0 · Free tiers cost 0, paid tiers more than 0"
            )
            price = None
        code_taken = db.session.scalar(
            sa.select(Tier.id).where(
                Tier.community_id == community.id,
                Tier.code == form.code.data,
                Tier.id != (tier_id or 0),
            )
        )
        if code_taken:
            form.code.errors.append("代号已被使用 · Code already taken")
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
                changed["price"] = str(price)
            tier.price, tier.currency = price.amount, price.currency
            tier.renewal_price = renewal.amount if renewal else None
            tier.groups = [g for g in community.groups if g.id in set(form.groups.data or [])]
            audit.record("tier.saved", tier, actor=current_user.actor, data=changed, now=now)
            place_waiting_invitations(community, actor=current_user.actor, now=now)
            db.session.commit()
            flash("已保存 · Saved", "ok")
            return redirect(url_for(".community", community_id=community.id))
    return render_template("admin/tier_form.html", form=form, community=community, tier=tier)


@bp.route("/communities/<int:community_id>/groups/new", methods=["GET", "POST"])
@bp.route("/groups/<int:group_id>/edit", methods=["GET", "POST"])
@requires("community.manage")
def group_form(community_id: int | None = None, group_id: int | None = None):
    group = db.get_or_404(Group, group_id) if group_id else None
    community = group.community if group else db.get_or_404(Community, community_id)
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
            form.qr_image.errors.append("不是有效的图片 · Not a PNG, JPEG or WebP image")
        elif chat_taken:
            form.wecom_chat_id.errors.append("该客户群已属于另一个群 · Another group has it")
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
            flash(f"已保存，{placed} 位等待中的成员获得邀请 · Saved; {placed} waiting placed", "ok")
            return redirect(url_for(".community", community_id=community.id))
    wecom_chats, wecom_error = [], None
    if wecom_configured() and request.method == "GET":
        end_transaction_keeping_objects()
        try:
            wecom_chats = chat_choices()
        except (PlatformError, OSError):
            wecom_error = "暂时无法读取企业微信客户群列表 · WeCom's group list is unavailable now"
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
#: A whole mainland phone number or e-mail address.
_WHOLE_CONTACT = re.compile(r"(\+?86)?1\d{10}|[^@\s]+@[^@\s]+\.\w+")


def _matching(text: str) -> sa.ColumnElement[bool]:
    """What a search box's ``text`` finds. A number, or a whole phone number or e-mail
    address, is looked up by its index (one row among 100,000); anything else is a part
    of a name, contact or WeChat ID, read through the community's members."""
    if number := _NUMBER.fullmatch(text):
        return sa.or_(Member.number == int(number.group(1)), Member.number_label == number.group(1))
    if _WHOLE_CONTACT.fullmatch(text):
        kind = ContactKind.EMAIL if "@" in text else ContactKind.PHONE
        return sa.and_(
            Member.contact_kind == kind,
            Member.contact_value == normalise_contact(kind, text),
        )
    return sa.or_(
        Member.display_name.icontains(text, autoescape=True),
        Member.contact_value.icontains(text, autoescape=True),
        Member.wechat_id.icontains(text, autoescape=True),
    )


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
    tier_id = request.args.get("tier", type=int)
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


@bp.get("/communities/<int:community_id>/members")
@requires("members.view")
def members(community_id: int):
    """Search and filter the community's members."""
    community = db.get_or_404(Community, community_id)
    page = db.paginate(
        _member_search(community).options(
            # A page's memberships and invitations in two statements, not two per row.
            selectinload(Member.memberships).joinedload(Membership.tier),
            selectinload(Member.invitations).joinedload(Invitation.group),
        ),
        page=max(request.args.get("page", 1, type=int), 1),
        per_page=PAGE_SIZE,
    )
    return render_template(
        "admin/members.html", community=community, page=page, states=list(MembershipStatus)
    )


@bp.get("/communities/<int:community_id>/members.csv")
@requires("members.manage")
def members_csv(community_id: int):
    """The members matching the list's filters, as CSV."""
    community = db.get_or_404(Community, community_id)
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
    member = db.get_or_404(Member, member_id)
    community = member.community
    form = AccessForm()
    form.tier.choices = [SelectChoice(t.id, t.name) for t in community.tiers]
    form.membership.choices = [
        SelectChoice(m.id, f"{m.tier.name} · {m.status}") for m in member.memberships
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
            flash("已保存 · Saved", "ok")
        return redirect(url_for(".member", member_id=member.id))
    return render_template("admin/member.html", member=member, community=community, form=form)


@bp.route("/communities/<int:community_id>/activity", methods=["GET", "POST"])
@requires("members.activity")
def activity(community_id: int):
    """Mark members active, by hand or from a CSV, before a purge."""
    community = db.get_or_404(Community, community_id)
    form = ActivityForm()
    result = None
    if form.validate_on_submit():
        identifiers = [line.strip() for line in (form.identifiers.data or "").splitlines()]
        if form.csv_file.data:
            identifiers += identifiers_from_csv(form.csv_file.data.read())
        identifiers = [i for i in identifiers if i]
        marked, unmatched = mark_active(community, identifiers, actor=current_user.actor)
        db.session.commit()
        result = {"marked": marked, "unmatched": unmatched}
    return render_template("admin/activity.html", community=community, form=form, result=result)


@bp.route("/communities/<int:community_id>/purge", methods=["GET", "POST"])
@requires("members.purge")
def purge(community_id: int):
    """Preview, then run, a purge of members not active since a date."""
    community = db.get_or_404(Community, community_id)
    form = PurgeForm(
        request.form if request.method == "POST" else request.args,
        meta={"csrf": request.method == "POST"},
    )
    candidates = None
    if form.inactive_since.data and form.validate():
        inactive_since = day_start(community, form.inactive_since.data)
        if request.method == "POST":
            try:
                done = run_purge(community, inactive_since, actor=current_user.actor)
            except PurgeRefused as refusal:
                db.session.rollback()
                flash(str(refusal), "error")
            else:
                db.session.commit()
                flash(f"已清退 {done.purged_count} 位成员 · {done.purged_count} purged", "ok")
            return redirect(url_for(".purge", community_id=community.id))
        candidates = purge_candidates(community, inactive_since)
    purges = db.session.scalars(
        sa.select(Purge).where(Purge.community_id == community.id).order_by(Purge.id.desc())
    ).all()
    return render_template(
        "admin/purge.html", community=community, form=form, candidates=candidates, purges=purges
    )


@bp.route("/communities/<int:community_id>/questions", methods=["GET", "POST"])
@requires("community.manage")
def questions(community_id: int):
    """The screening questions: add one; switch one off or on."""
    community = db.get_or_404(Community, community_id)
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
        flash("已添加 · Added", "ok")
        return redirect(url_for(".questions", community_id=community.id))
    return render_template("admin/questions.html", community=community, form=form)


@bp.post("/questions/<int:question_id>/toggle")
@requires("community.manage")
def toggle_question(question_id: int):
    question = db.get_or_404(ScreeningQuestion, question_id)
    question.active = not question.active
    audit.record(
        "question.toggled", question, actor=current_user.actor, data={"active": question.active}
    )
    db.session.commit()
    return redirect(url_for(".questions", community_id=question.community_id))


@bp.route("/communities/<int:community_id>/applications", methods=["GET", "POST"])
@requires("members.review")
def applications(community_id: int):
    """The screening queue: answers in full; approve or reject one or many at once."""
    community = db.get_or_404(Community, community_id)
    form = ReviewForm()
    if form.validate_on_submit():
        action = request.form.get("action")
        chosen = [int(i) for i in request.form.getlist("application") if i.isdigit()]
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
            flash(f"已处理 {len(messages)} 份申请 · {len(messages)} reviewed", "ok")
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
    community = db.get_or_404(Community, community_id)
    if request.method == "POST":
        task = db.session.get(RemovalTask, request.form.get("task", type=int))
        if task is None or task.group.community_id != community.id:
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
    """The WeCom customer groups: owner, people, freeloaders; queue a reconciliation."""
    if request.method == "POST":
        queue_reconciliation(actor=current_user.actor, now=utcnow())
        db.session.commit()
        flash("已排队核对 · Reconciliation queued", "ok")
        return redirect(url_for(".wecom"))
    groups = db.session.scalars(
        sa.select(Group).where(Group.platform == WECOM).order_by(Group.community_id, Group.id)
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
    group = db.get_or_404(Group, group_id)
    return render_template(
        "admin/freeloaders.html", group=group, community=group.community, rows=freeloaders(group)
    )


@bp.route("/platform-tasks", methods=["GET", "POST"])
@requires("platform.tasks")
def platform_tasks():
    """Platform calls that gave up after their retries: see why, and retry."""
    if request.method == "POST":
        task = db.session.get(PlatformTask, request.form.get("task", type=int))
        if task is None or task.status is not TaskStatus.FAILED:
            abort(404)
        retry(task, actor=current_user.actor)
        db.session.commit()
        flash("已重新排队 · Queued again", "ok")
        return redirect(url_for(".platform_tasks"))
    failed = db.session.scalars(
        sa.select(PlatformTask)
        .where(PlatformTask.status == TaskStatus.FAILED)
        .order_by(PlatformTask.id)
    ).all()
    return render_template("admin/platform_tasks.html", failed=failed)


@bp.route("/tiers/<int:tier_id>/season", methods=["GET", "POST"])
@requires("community.manage")
def season(tier_id: int):
    """Open a new season: invite another tier's current members to this tier's groups."""
    tier = db.get_or_404(Tier, tier_id)
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
        flash(f"已邀请 {invited} 位成员 · {invited} members invited", "ok")
        return redirect(url_for(".community", community_id=community.id))
    return render_template("admin/season.html", form=form, tier=tier, community=community)


@bp.route("/communities/<int:community_id>/export")
@requires("finance.export")
def export(community_id: int):
    """Revenue for a date range: CSV (streamed; ?sheet=totals for the totals) or XLSX
    (both sheets in one workbook)."""
    community = db.get_or_404(Community, community_id)
    form = ExportForm(request.args, meta={"csrf": False})
    if not (request.args and form.validate()):
        return render_template("admin/export.html", community=community, form=form)
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
    community = db.get_or_404(Community, community_id)
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
            flash(f"已导入 {count} 位成员 · {count} members imported", "ok")
            return redirect(url_for(".members", community_id=community.id))
        db.session.rollback()
    return render_template("admin/import.html", community=community, form=form, check=check)
