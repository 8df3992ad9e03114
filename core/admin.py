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
from flask_login import current_user, login_required
from flask_wtf import FlaskForm
from wtforms import EmailField, PasswordField, SelectChoice, SelectField, StringField
from wtforms.validators import DataRequired, Email, Length

from core import audit
from core.audit import AuditEntry
from core.auth import (
    PASSWORD_MAX,
    PASSWORD_MIN,
    ROLES,
    StaffUser,
    create_staff_user,
    end_sessions,
    requires,
    reset_password,
)
from core.clock import utcnow
from core.db import db
from core.labels import label
from core.outbox import CHANNEL_LABELS, OutboxMessage, OutboxStatus, retry_message

bp = Blueprint("core_admin", __name__, url_prefix="/admin")

PAGE_SIZE = 50


@bp.before_request
@login_required
def _staff_only() -> None:
    """Every page here is for logged-in staff."""


class StaffForm(FlaskForm):
    email = EmailField(_l("E-mail"), validators=[DataRequired(), Email(), Length(max=254)])
    name = StringField(_l("Name"), validators=[DataRequired(), Length(max=80)])
    role = SelectField(_l("Role"), choices=[SelectChoice(k, v[0]) for k, v in ROLES.items()])
    password = PasswordField(
        _l(
            "First password (%(min)s–%(max)s characters, changed at first login)",
            min=PASSWORD_MIN,
            max=PASSWORD_MAX,
        ),
        validators=[DataRequired(), Length(min=PASSWORD_MIN, max=PASSWORD_MAX)],
    )


class RoleForm(FlaskForm):
    role = SelectField(_l("Role"), choices=[SelectChoice(k, v[0]) for k, v in ROLES.items()])


@bp.route("/staff", methods=["GET", "POST"])
@requires("staff.manage")
def staff():
    """The team: add someone with a role and a first password, which they must change
    at their first login."""
    form = StaffForm()
    if form.validate_on_submit():
        try:
            create_staff_user(
                form.email.data,
                form.name.data,
                form.password.data,
                actor=current_user.actor,
                role=form.role.data,
                must_change_password=True,
            )
        except ValueError as error:
            form.email.errors.append(str(error))
        else:
            db.session.commit()
            flash(_("Added"), "ok")
            return redirect(url_for(".staff"))
    team = db.session.scalars(sa.select(StaffUser).order_by(StaffUser.id)).all()
    return render_template(
        "admin/staff.html", form=form, team=team, roles=ROLES, role_form=RoleForm()
    )


@bp.post("/staff/<int:user_id>")
@requires("staff.manage")
def change_staff(user_id: int):
    """Change someone's role, disable or enable their account, or reset their password.
    A new role, disabling and a reset end the account's sessions. Owners cannot change
    themselves this way (a team always keeps an owner)."""
    user = db.session.get(StaffUser, user_id)
    if user is None:
        abort(404)
    form = RoleForm()
    action = request.form.get("action")
    now = utcnow()
    if user.id == current_user.id:
        flash(_("You cannot change yourself"), "error")
    elif action == "role" and form.validate_on_submit():
        audit.record(
            "staff.role_changed",
            user,
            actor=current_user.actor,
            data={"from": user.role, "to": form.role.data},
            now=now,
        )
        user.role = form.role.data
        end_sessions(user)
        db.session.commit()
    elif action in ("disable", "enable") and form.validate_on_submit():
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
    query = sa.select(AuditEntry).order_by(AuditEntry.id.desc())
    filters = {
        key: request.args.get(key, "").strip()
        for key in ("target_type", "target_id", "actor", "action")
    }
    if filters["target_type"]:
        query = query.where(AuditEntry.target_type == filters["target_type"])
    if filters["target_id"].isdigit():
        query = query.where(AuditEntry.target_id == int(filters["target_id"]))
    if filters["actor"]:
        query = query.where(AuditEntry.actor == filters["actor"])
    if filters["action"]:
        query = query.where(AuditEntry.action.startswith(filters["action"]))
    page = db.paginate(
        query, page=max(request.args.get("page", 1, type=int), 1), per_page=PAGE_SIZE
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
    see why, and queue them again."""
    if request.method == "POST":
        message = db.session.get(OutboxMessage, request.form.get("message", type=int))
        if message is None or message.status is not OutboxStatus.FAILED:
            abort(404)
        retry_message(message, actor=current_user.actor)
        db.session.commit()
        flash(_("Queued again"), "ok")
        return redirect(url_for(".failed_messages"))
    failed = db.session.scalars(
        sa.select(OutboxMessage)
        .where(OutboxMessage.status == OutboxStatus.FAILED)
        .order_by(OutboxMessage.id.desc())
        .limit(500)
    ).all()
    return render_template("admin/messages.html", failed=failed, channel_labels=CHANNEL_LABELS)


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


def _staff_names(ids: list[str]) -> dict[str, str]:
    """The audit log's names for ``staff:<id>`` actors: the staff member's name."""
    wanted = [int(staff_id) for staff_id in ids if staff_id.isdigit()]
    rows = db.session.execute(
        sa.select(StaffUser.id, StaffUser.name).where(StaffUser.id.in_(wanted))
    )
    return {str(staff_id): name for staff_id, name in rows}


audit.register_actor_names("staff", _staff_names)
bp.add_app_template_filter(label, "label")
bp.add_app_template_global(audit.action_label, "audit_action")
bp.add_app_template_global(audit.target_label, "audit_target")
bp.add_app_template_global(audit.detail_lines, "audit_details")
