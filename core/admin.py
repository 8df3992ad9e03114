"""Admin pages for the team (staff, roles) and for the audit log."""

from __future__ import annotations

import sqlalchemy as sa
from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
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
from core.outbox import OutboxMessage, OutboxStatus, retry_message

bp = Blueprint("core_admin", __name__, url_prefix="/admin")

PAGE_SIZE = 50


@bp.before_request
@login_required
def _staff_only() -> None:
    """Every page here is for logged-in staff."""


class StaffForm(FlaskForm):
    email = EmailField("邮箱 · E-mail", validators=[DataRequired(), Email(), Length(max=254)])
    name = StringField("称呼 · Name", validators=[DataRequired(), Length(max=80)])
    role = SelectField("角色 · Role", choices=[SelectChoice(k, v[0]) for k, v in ROLES.items()])
    password = PasswordField(
        f"初始密码（{PASSWORD_MIN}–{PASSWORD_MAX}位，首次登录须更改）"
        f"· First password ({PASSWORD_MIN}–{PASSWORD_MAX}, changed at first login)",
        validators=[DataRequired(), Length(min=PASSWORD_MIN, max=PASSWORD_MAX)],
    )


class RoleForm(FlaskForm):
    role = SelectField("角色 · Role", choices=[SelectChoice(k, v[0]) for k, v in ROLES.items()])


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
            flash("已添加 · Added", "ok")
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
        flash("不能修改自己的角色或停用自己 · You cannot change yourself", "error")
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
    return render_template("admin/audit.html", page=page, filters=filters)


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
        flash("已重新排队 · Queued again", "ok")
        return redirect(url_for(".failed_messages"))
    failed = db.session.scalars(
        sa.select(OutboxMessage)
        .where(OutboxMessage.status == OutboxStatus.FAILED)
        .order_by(OutboxMessage.id.desc())
        .limit(500)
    ).all()
    return render_template("admin/messages.html", failed=failed)
