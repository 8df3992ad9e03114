"""Staff accounts (the admin team), their roles and login.

Roles follow a community's class committee: the owner (班长) assigns them. Every admin
view declares the permission it needs with :func:`requires`; a role grants a fixed set of
permissions. Passwords are hashed with Werkzeug's scrypt; five wrong passwords lock an
account for 15 minutes; sessions go through Flask-Login.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import wraps

import click
import sqlalchemy as sa
from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import (
    LoginManager,
    UserMixin,
    current_user,
    login_required,
    login_user,
    logout_user,
)
from flask_wtf import FlaskForm
from sqlalchemy.orm import Mapped, mapped_column
from werkzeug.security import check_password_hash, generate_password_hash
from wtforms import EmailField, PasswordField
from wtforms.validators import DataRequired, Email, Length

from core import audit
from core.clock import utcnow
from core.db import UTCDateTime, db
from core.security import same_site_path

#: What each permission lets staff do.
PERMISSIONS = {
    "members.view": "查看社群与成员 · See communities and members",
    "community.manage": "管理社群、档位、群、问答、新一季 · Manage communities, tiers, groups",
    "members.review": "审核申请 · Review applications",
    "members.activity": "登记活跃 · Mark members active",
    "members.purge": "清退 · Purge members",
    "members.removals": "移出群 · Remove members from groups",
    "members.manage": "手动开通或取消资格、导出成员 · Grant or end access by hand, export",
    "payments.view": "查看订单与支付 · See orders and payments",
    "payments.refund": "退款 · Refund",
    "finance.export": "导出财务报表 · Export revenue",
    "perks.manage": "管理福利、优惠券、课程与推荐 · Manage perks, coupons, courses, offers",
    "platform.tasks": "处理平台调用失败 · Retry failed platform calls",
    "audit.view": "查看操作日志 · See the audit log",
    "staff.manage": "管理团队与角色 · Manage the team and roles",
}

#: Roles, what they are called, and what they may do.
ROLES: dict[str, tuple[str, frozenset[str]]] = {
    "owner": ("班长 · Owner", frozenset(PERMISSIONS)),
    "admin": (
        "管理员 · Admin",
        frozenset(PERMISSIONS) - {"staff.manage", "payments.refund", "finance.export"},
    ),
    "finance": (
        "财务 · Finance",
        frozenset(
            {"members.view", "payments.view", "payments.refund", "finance.export", "audit.view"}
        ),
    ),
    "moderator": (
        "组织委员 · Moderator",
        frozenset({"members.view", "members.review", "members.activity", "members.removals"}),
    ),
}

MAX_FAILED_LOGINS = 5
LOCKOUT = timedelta(minutes=15)

login_manager = LoginManager()
login_manager.login_view = "auth.login"
login_manager.login_message = "请先登录 · Please log in"


class StaffUser(UserMixin, db.Model):
    __tablename__ = "staff_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(254), unique=True)
    name: Mapped[str] = mapped_column(sa.String(80))
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    #: A key of :data:`ROLES`.
    role: Mapped[str] = mapped_column(sa.String(20), default="owner")
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: Wrong passwords in a row; at MAX_FAILED_LOGINS the account locks until then.
    failed_logins: Mapped[int] = mapped_column(default=0)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)

    @property
    def is_active(self) -> bool:
        return self.active

    @property
    def actor(self) -> str:
        """How this user appears in the audit log."""
        return f"staff:{self.id}"

    def can(self, permission: str) -> bool:
        return permission in ROLES.get(self.role, ("", frozenset()))[1]

    @property
    def role_label(self) -> str:
        return ROLES.get(self.role, (self.role,))[0]

    def set_password(self, password: str) -> None:
        self.password_hash = generate_password_hash(password)

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)


@login_manager.user_loader
def _load_user(user_id: str) -> StaffUser | None:
    return db.session.get(StaffUser, int(user_id)) if user_id.isdigit() else None


def requires(permission: str):
    """Mark an admin view as needing ``permission``; staff without it get a 403."""
    if permission not in PERMISSIONS:
        raise ValueError(f"unknown permission {permission!r}")

    def decorate(view):
        @wraps(view)
        def checked(*args, **kwargs):
            if not current_user.is_authenticated or not current_user.can(permission):
                abort(403)
            return view(*args, **kwargs)

        checked.required_permission = permission
        return checked

    return decorate


def create_staff_user(
    email: str,
    name: str,
    password: str,
    *,
    actor: str,
    role: str = "owner",
    now: datetime | None = None,
) -> StaffUser:
    """Create an active staff account (flushed). Raises ValueError if the e-mail is taken
    or the role unknown."""
    email = email.strip().lower()
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    if db.session.scalar(sa.select(StaffUser.id).where(StaffUser.email == email)):
        raise ValueError(f"a staff account with e-mail {email} exists already")
    user = StaffUser(email=email, name=name, role=role, created_at=now or utcnow())
    user.set_password(password)
    db.session.add(user)
    audit.record("staff.created", user, actor=actor, data={"email": email, "role": role}, now=now)
    return user


bp = Blueprint("auth", __name__, cli_group=None)


class LoginForm(FlaskForm):
    email = EmailField("邮箱 · E-mail", validators=[DataRequired(), Email(), Length(max=254)])
    password = PasswordField("密码 · Password", validators=[DataRequired(), Length(max=200)])


@bp.route("/admin/login", methods=["GET", "POST"])
def login():
    form = LoginForm()
    if form.validate_on_submit():
        user = db.session.scalar(
            sa.select(StaffUser).where(StaffUser.email == form.email.data.strip().lower())
        )
        now = utcnow()
        if user is not None and user.locked_until is not None and user.locked_until > now:
            flash("尝试次数过多，请15分钟后再试 · Too many tries: wait 15 minutes", "error")
        elif user and user.active and user.check_password(form.password.data):
            user.failed_logins, user.locked_until = 0, None
            audit.record("staff.logged_in", user, actor=user.actor, now=now)
            db.session.commit()
            login_user(user)
            target = same_site_path(request.args.get("next"))
            return redirect(target or url_for("membership_admin.dashboard"))
        else:
            if user is not None:
                user.failed_logins += 1
                if user.failed_logins >= MAX_FAILED_LOGINS:
                    user.failed_logins, user.locked_until = 0, now + LOCKOUT
                    audit.record("staff.locked", user, actor="system", now=now)
                db.session.commit()
            flash("邮箱或密码不正确 · Wrong e-mail or password", "error")
    return render_template("auth/login.html", form=form)


@bp.route("/admin/logout", methods=["POST"])
@login_required
def logout():
    logout_user()
    return redirect(url_for("auth.login"))


@bp.cli.command("create-admin")
@click.option("--email", prompt=True)
@click.option("--name", prompt=True)
@click.option("--role", default="owner", type=click.Choice(list(ROLES)), show_default=True)
@click.password_option(envvar="ADMIN_PASSWORD", help="Prompted for unless ADMIN_PASSWORD is set.")
def create_admin_command(email: str, name: str, role: str, password: str) -> None:
    """Create a staff account (the first one is the owner)."""
    if len(password) < 8:
        raise click.BadParameter("at least 8 characters", param_hint="password")
    try:
        create_staff_user(email, name, password, actor="cli", role=role)
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    db.session.commit()
    click.echo(f"Created admin {email}.")
