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
from core.auth import ROLES, StaffUser, create_staff_user, requires
from core.db import db

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
        "初始密码（至少8位）· First password (8+)", validators=[DataRequired(), Length(min=8)]
    )


class RoleForm(FlaskForm):
    role = SelectField("角色 · Role", choices=[SelectChoice(k, v[0]) for k, v in ROLES.items()])


@bp.route("/staff", methods=["GET", "POST"])
@requires("staff.manage")
def staff():
    """The team: add someone with a role."""
    form = StaffForm()
    if form.validate_on_submit():
        try:
            create_staff_user(
                form.email.data,
                form.name.data,
                form.password.data,
                actor=current_user.actor,
                role=form.role.data,
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
    """Change someone's role, or disable / enable their account. Owners cannot demote
    or disable themselves (a team always keeps an owner)."""
    user = db.session.get(StaffUser, user_id)
    if user is None:
        abort(404)
    form = RoleForm()
    action = request.form.get("action")
    if user.id == current_user.id:
        flash("不能修改自己的角色或停用自己 · You cannot change yourself", "error")
    elif action == "role" and form.validate_on_submit():
        audit.record(
            "staff.role_changed",
            user,
            actor=current_user.actor,
            data={"from": user.role, "to": form.role.data},
        )
        user.role = form.role.data
        db.session.commit()
    elif action in ("disable", "enable") and form.validate_on_submit():
        user.active = action == "enable"
        audit.record(f"staff.{action}d", user, actor=current_user.actor)
        db.session.commit()
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
