"""Admin pages for the team (staff, roles) and for the audit log."""

from __future__ import annotations

import sqlalchemy as sa
from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    redirect,
    render_template,
    request,
    url_for,
)
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_babel import lazy_pgettext
from flask_login import current_user, login_required
from wtforms import EmailField, PasswordField, SelectChoice, SelectField, StringField
from wtforms.validators import DataRequired, Email, Length, Optional

from core import audit
from core.audit import AuditEntry
from core.auth import (
    PASSWORD_MAX,
    PASSWORD_MIN,
    ROLES,
    StaffRole,
    StaffUser,
    create_staff_user,
    end_sessions,
    in_visible_communities,
    requires,
    reset_password,
    set_install_owner,
    set_role,
    visible_communities,
)
from core.clock import utcnow
from core.db import db, row_id, row_ids
from core.forms import Form
from core.i18n import LOCALES
from core.labels import code_reader, label
from core.outbox import CHANNEL_LABELS, OutboxMessage, OutboxStatus, retry_message

bp = Blueprint("core_admin", __name__, url_prefix="/admin")

PAGE_SIZE = 50

#: The tables of ``membership`` this package reads by name (it imports nothing above it).
_COMMUNITIES = sa.table("communities", sa.column("id"), sa.column("name"))
_MEMBERS = sa.table("members", sa.column("id"), sa.column("community_id"))


@bp.before_request
@login_required
def _staff_only() -> None:
    """Every page here is for logged-in staff."""


#: What each role is called.
ROLE_NAMES = {role: name for role, (name, _permissions) in ROLES.items()}


class StaffForm(Form):
    email = EmailField(_l("E-mail"), validators=[DataRequired(), Email(), Length(max=254)])
    name = StringField(lazy_pgettext("staff", "Name"), validators=[Optional(), Length(max=80)])
    community = SelectField(_l("Community"), coerce=int)
    role = SelectField(_l("Role"), choices=[SelectChoice(*role) for role in ROLE_NAMES.items()])
    password = PasswordField(
        _l(
            "First password (%(least)s–%(most)s characters, changed at the first login; "
            "not needed for someone on the team already)",
            least=PASSWORD_MIN,
            most=PASSWORD_MAX,
        ),
        validators=[Optional(), Length(min=PASSWORD_MIN, max=PASSWORD_MAX)],
    )


class RoleForm(Form):
    community = SelectField(_l("Community"), coerce=int)
    #: Empty: the role is taken away.
    role = SelectField(
        _l("Role"),
        choices=[SelectChoice("", _l("No role"))]
        + [SelectChoice(*role) for role in ROLE_NAMES.items()],
    )


def _communities_to_manage() -> list[tuple[int, str]]:
    """The communities whose team the logged-in person manages: (id, name)."""
    managed = current_user.community_ids("staff.manage")
    query = sa.select(_COMMUNITIES.c.id, _COMMUNITIES.c.name).order_by(_COMMUNITIES.c.id)
    if managed is not None:
        query = query.where(_COMMUNITIES.c.id.in_(sorted(managed)))
    return [tuple(row) for row in db.session.execute(query)]


def _may_manage_account(user: StaffUser) -> bool:
    """Whether the logged-in person may disable, enable or reset the password of
    ``user``: install owners may; a community's owner may when every role of the account
    is in a community they manage (so no one takes over an account that acts in another
    community)."""
    if current_user.install_owner:
        return True
    managed = current_user.community_ids("staff.manage")
    return (
        not user.install_owner
        and bool(user.roles)
        and {role.community_id for role in user.roles} <= managed
    )


def _team(communities: list[tuple[int, str]]) -> list[StaffUser]:
    """The accounts listed on the team page: every account for an install owner, else
    those holding a role in a community the person manages."""
    query = sa.select(StaffUser).order_by(StaffUser.id)
    if not current_user.install_owner:
        holders = sa.select(StaffRole.staff_user_id).where(
            StaffRole.community_id.in_([community_id for community_id, _name in communities])
        )
        query = query.where(StaffUser.id.in_(holders))
    return list(db.session.scalars(query))


def _add_to_team(form: StaffForm, *, now) -> str | None:
    """Called when the team page's form is sent: gives the role to the account with that
    e-mail, or makes the account (its password chosen again at the first login). None,
    or what is wrong."""
    email = form.email.data.strip().lower()
    user = db.session.scalar(sa.select(StaffUser).where(StaffUser.email == email))
    if user is not None:
        if user.role_in(form.community.data) is not None:
            return _("This person has a role in this community already.")
        set_role(user, form.community.data, form.role.data, actor=current_user.actor, now=now)
        return None
    if not (form.name.data and form.password.data):
        return _("A new account needs a name and a first password.")
    try:
        create_staff_user(
            email,
            form.name.data,
            form.password.data,
            actor=current_user.actor,
            role=form.role.data,
            community_id=form.community.data,
            must_change_password=True,
            now=now,
        )
    except ValueError as error:
        return str(error)
    return None


@bp.route("/staff", methods=["GET", "POST"])
@requires("staff.manage")
def staff():
    """The team of the communities the person manages: add someone to a community with a
    role (a new account gets a first password, which they must change at their first
    login). Install owners see every account and may give any community its first
    owner."""
    communities = _communities_to_manage()
    form = StaffForm()
    form.community.choices = communities
    if form.validate_on_submit():
        error = _add_to_team(form, now=utcnow())
        if error:
            form.email.errors.append(error)
        else:
            db.session.commit()
            flash(_("Added"), "ok")
            return redirect(url_for(".staff"))
    role_form = RoleForm()
    role_form.community.choices = communities
    return render_template(
        "admin/staff.html",
        form=form,
        team=_team(communities),
        communities=communities,
        roles=ROLES,
        role_form=role_form,
        manages_account=_may_manage_account,
    )


@bp.post("/staff/<int:user_id>")
@requires("staff.manage")
def change_staff(user_id: int):
    """Change someone's role in a community the person manages (or take it away),
    disable or enable their account, reset their password, or (install owners) make
    them an owner of the install or stop that. Role changes, disabling and a reset end
    the account's sessions. No one changes themselves this way (a team always keeps an
    owner). Accounts outside the person's team answer 404."""
    communities = _communities_to_manage()
    user = db.session.get(StaffUser, user_id)
    if user is None or user not in _team(communities):
        abort(404)
    form = RoleForm()
    form.community.choices = communities
    action = request.form.get("action")
    now = utcnow()
    if user.id == current_user.id:
        flash(_("You cannot change yourself."), "error")
    elif action == "role" and form.validate_on_submit():
        set_role(
            user, form.community.data, form.role.data or None, actor=current_user.actor, now=now
        )
        db.session.commit()
    elif action in ("install_owner", "not_install_owner") and Form().validate_on_submit():
        if not current_user.install_owner:
            abort(403)
        set_install_owner(user, action == "install_owner", actor=current_user.actor, now=now)
        db.session.commit()
    elif action in ("disable", "enable", "reset_password") and not _may_manage_account(user):
        abort(403)
    elif action in ("disable", "enable") and Form().validate_on_submit():
        user.active = action == "enable"
        if not user.active:
            end_sessions(user)
        audit.record(f"staff.{action}d", user, actor=current_user.actor, now=now)
        db.session.commit()
    elif action == "reset_password":
        temporary = reset_password(user, actor=current_user.actor, now=now)
        db.session.commit()
        page = render_template("admin/staff_password.html", user=user, password=temporary)
        return page, 200, {"Cache-Control": "no-store"}
    else:
        abort(400)
    return redirect(url_for(".staff"))


@bp.get("/audit")
@requires("audit.view")
def audit_log():
    """Who did what and when, newest first; filter by object, actor or action."""
    query = (
        sa.select(AuditEntry)
        .where(in_visible_communities(AuditEntry.community_id, "audit.view"))
        .order_by(AuditEntry.id.desc())
    )
    filters = {
        key: request.args.get(key, "").strip()
        for key in ("target_type", "target_id", "actor", "action")
    }
    if filters["target_type"]:
        query = query.where(AuditEntry.target_type == filters["target_type"])
    if target_id := row_ids([filters["target_id"]]):
        query = query.where(AuditEntry.target_id == target_id[0])
    if filters["actor"]:
        query = query.where(AuditEntry.actor == filters["actor"])
    if filters["action"]:
        query = query.where(AuditEntry.action.startswith(filters["action"]))
    page = db.paginate(
        query, page=max(request.args.get("page", 1, type=row_id), 1), per_page=PAGE_SIZE
    )
    return render_template(
        "admin/audit.html",
        page=page,
        filters=filters,
        actors=audit.actor_names(
            [entry.actor for entry in page.items] + ([filters["actor"]] if filters["actor"] else [])
        ),
        actions=audit.registered_actions(),
        targets=audit.registered_targets(),
        zone=current_app.config["BABEL_DEFAULT_TIMEZONE"],
    )


@bp.route("/messages", methods=["GET", "POST"])
@requires("platform.tasks")
def failed_messages():
    """Messages the worker gave up on after their retries (or that no channel reaches):
    see why, and queue them again. Staff see the messages to members of their
    communities; messages to no member are the install owners'."""
    visible = _visible_messages()
    if request.method == "POST":
        message = db.session.scalar(
            sa.select(OutboxMessage).where(
                OutboxMessage.id == request.form.get("message", type=row_id), visible
            )
        )
        if message is None or message.status is not OutboxStatus.FAILED:
            abort(404)
        retry_message(message, actor=current_user.actor)
        db.session.commit()
        flash(_("Queued again"), "ok")
        return redirect(url_for(".failed_messages"))
    failed = db.session.scalars(
        sa.select(OutboxMessage)
        .where(OutboxMessage.status == OutboxStatus.FAILED, visible)
        .order_by(OutboxMessage.id.desc())
        .limit(500)
    ).all()
    return render_template("admin/messages.html", failed=failed, channel_labels=CHANNEL_LABELS)


def _visible_messages() -> sa.ColumnElement[bool]:
    """The outbox messages the logged-in person may see: to members of the communities
    they may retry platform calls in (all, for an install owner who picked none)."""
    visible = visible_communities("platform.tasks")
    if visible is None:
        return sa.true()
    members = sa.select(_MEMBERS.c.id).where(_MEMBERS.c.community_id.in_(sorted(visible)))
    return OutboxMessage.member_id.in_(members)


#: What this package's audit actions and tables are called on the audit log.
audit.register_labels(
    {
        "staff.created": _l("Team member added"),
        "staff.logged_in": _l("Logged in"),
        "staff.logged_out": _l("Logged out"),
        "staff.password_changed": _l("Password changed"),
        "staff.password_reset": _l("Password reset"),
        "staff.totp_disabled": _l("Two-step login turned off"),
        "staff.totp_enabled": _l("Two-step login turned on"),
        "staff.totp_enrolment_started": _l("Two-step login being set up"),
        "staff.role_changed": _l("Role changed"),
        "staff.install_owner_changed": _l("Install owner changed"),
        "staff.enabled": _l("Team member enabled"),
        "staff.disabled": _l("Team member disabled"),
        "message.failed": _l("Message not delivered"),
        "message.retried": _l("Message retried"),
        "webhook_endpoint.created": _l("Webhook endpoint added"),
        "webhook_endpoint.enabled": _l("Webhook endpoint turned on"),
        "webhook_endpoint.disabled": _l("Webhook endpoint turned off"),
        "webhook_endpoint.secret_rolled": _l("Webhook signing secret changed"),
        "event.replayed": _l("Event sent again"),
    },
    {
        "staff_users": _l("Team member"),
        "outbox_messages": _l("Message"),
        "webhook_endpoints": _l("Webhook endpoint"),
        "events": _l("Event"),
    },
)

#: What the details of entries are called, for the keys core records and those every
#: package's entries share; the roles a role change names, and languages, by their names.
audit.register_details(
    {
        "name": _l("Name"),
        "code": _l("Code"),
        "kind": _l("Kind"),
        "count": _l("Count"),
        "reason": _l("Reason"),
        "error": _l("Error"),
        "detail": _l("Details"),
        "from": _l("From"),
        "to": _l("To"),
        "amount": _l("Amount"),
        "description": _l("Description"),
        "title": _l("Title"),
        "active": _l("Turned on"),
        "currency": _l("Currency"),
        "locale": _l("Language"),
        "email": _l("E-mail"),
        "install_owner": _l("Install owner"),
        "must_change_password": _l("Must change the password"),
        "totp_removed": _l("Two-step login removed"),
        "limit": _l("Limit reached"),
        "community": _l("Community"),
        "url": _l("URL"),
        "event_types": _l("Event types"),
        "deliveries": _l("Deliveries"),
        "failing_since": _l("Failing since"),
    },
    {
        "from": code_reader(ROLE_NAMES),
        "to": code_reader(ROLE_NAMES),
        "locale": code_reader(LOCALES),
    },
)


def _staff_names(ids: list[str]) -> dict[str, str]:
    """The audit log's names for ``staff:<id>`` actors: the staff member's name."""
    wanted = row_ids(ids)
    rows = db.session.execute(
        sa.select(StaffUser.id, StaffUser.name).where(StaffUser.id.in_(wanted))
    )
    return {str(staff_id): name for staff_id, name in rows}


audit.register_actor_names("staff", _staff_names)
bp.add_app_template_filter(label, "label")
bp.add_app_template_global(audit.action_label, "audit_action")
bp.add_app_template_global(audit.target_label, "audit_target")
bp.add_app_template_global(audit.detail_lines, "audit_details")
