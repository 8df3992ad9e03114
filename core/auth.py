"""Staff accounts (admins) and their login. Roles beyond ``owner`` come with the admin team.

Passwords are hashed with Werkzeug's scrypt; sessions go through Flask-Login.
"""

from __future__ import annotations

from datetime import datetime

import click
import sqlalchemy as sa
from flask import Blueprint, flash, redirect, render_template, request, url_for
from flask_login import LoginManager, UserMixin, login_required, login_user, logout_user
from flask_wtf import FlaskForm
from sqlalchemy.orm import Mapped, mapped_column
from werkzeug.security import check_password_hash, generate_password_hash
from wtforms import EmailField, PasswordField
from wtforms.validators import DataRequired, Email, Length

from core import audit
from core.clock import utcnow
from core.db import UTCDateTime, db
from core.security import same_site_path

login_manager = LoginManager()
login_manager.login_view = "auth.login"
login_manager.login_message = "请先登录 · Please log in"


class StaffUser(UserMixin, db.Model):
    __tablename__ = "staff_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(sa.String(254), unique=True)
    name: Mapped[str] = mapped_column(sa.String(80))
    password_hash: Mapped[str] = mapped_column(sa.String(255))
    #: ``owner`` for now; the admin-team issue adds the other roles.
    role: Mapped[str] = mapped_column(sa.String(20), default="owner")
    active: Mapped[bool] = mapped_column(default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    @property
    def is_active(self) -> bool:
        return self.active

    @property
    def actor(self) -> str:
        """How this user appears in the audit log."""
        return f"staff:{self.id}"

    def set_password(self, password: str) -> None:
        self.password_hash = generate_password_hash(password)

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)


@login_manager.user_loader
def _load_user(user_id: str) -> StaffUser | None:
    return db.session.get(StaffUser, int(user_id)) if user_id.isdigit() else None


def create_staff_user(
    email: str, name: str, password: str, *, actor: str, now: datetime | None = None
) -> StaffUser:
    """Create an active staff account (flushed). Raises ValueError if the e-mail is taken."""
    email = email.strip().lower()
    if db.session.scalar(sa.select(StaffUser.id).where(StaffUser.email == email)):
        raise ValueError(f"a staff account with e-mail {email} exists already")
    user = StaffUser(email=email, name=name, created_at=now or utcnow())
    user.set_password(password)
    db.session.add(user)
    audit.record("staff.created", user, actor=actor, data={"email": email}, now=now)
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
        if user and user.active and user.check_password(form.password.data):
            login_user(user)
            target = same_site_path(request.args.get("next"))
            return redirect(target or url_for("membership_admin.dashboard"))
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
@click.password_option(envvar="ADMIN_PASSWORD", help="Prompted for unless ADMIN_PASSWORD is set.")
def create_admin_command(email: str, name: str, password: str) -> None:
    """Create a staff account with the owner role (the first admin)."""
    if len(password) < 8:
        raise click.BadParameter("at least 8 characters", param_hint="password")
    try:
        create_staff_user(email, name, password, actor="cli")
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    db.session.commit()
    click.echo(f"Created admin {email}.")
