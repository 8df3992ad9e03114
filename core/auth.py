"""Staff accounts (the admin team), their roles, passwords, second factor and sessions.

Roles follow a community's class committee: the owner (班长) assigns them. Every admin
view declares the permission it needs with :func:`requires`; a role grants a fixed set of
permissions. Passwords are hashed with Werkzeug's scrypt. Login tries are counted with
:mod:`core.limits` per client and account, per client and in all, claimed before the
password is checked. A staff session carries the account's ``session_epoch``; logging out,
changing the password or the role and disabling the account bump it, which ends every
session of the account at its next request. A TOTP authenticator is optional.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import datetime, timedelta
from functools import cache, wraps

import click
import pyotp
import qrcode
import qrcode.image.svg
import sqlalchemy as sa
from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
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
from sqlalchemy.orm.attributes import set_committed_value
from werkzeug.security import check_password_hash, generate_password_hash
from wtforms import EmailField, PasswordField, StringField
from wtforms.validators import DataRequired, Email, EqualTo, Length, Optional

from core import audit
from core.clock import utcnow
from core.db import UTCDateTime, db
from core.i18n import settle_locale_at_login
from core.limits import AttemptCounter, Limit, TooManyTries, claim, client_network
from core.security import new_token, same_secret, same_site_path

#: What each permission lets staff do.
PERMISSIONS = {
    "members.view": _l("See communities and members"),
    "community.manage": _l("Manage communities, tiers, groups"),
    "members.review": _l("Review applications"),
    "members.activity": _l("Mark members active"),
    "members.purge": _l("Purge members"),
    "members.removals": _l("Remove members from groups"),
    "members.manage": _l("Grant or end access by hand, export"),
    "payments.view": _l("See orders and payments"),
    "payments.refund": _l("Refund"),
    "finance.export": _l("Export revenue"),
    "perks.manage": _l("Manage perks, coupons, courses, offers"),
    "platform.tasks": _l("Retry failed platform calls"),
    "audit.view": _l("See the audit log"),
    "staff.manage": _l("Manage the team and roles"),
}

#: Roles, what they are called, and what they may do.
ROLES: dict[str, tuple[str, frozenset[str]]] = {
    "owner": (_l("Owner"), frozenset(PERMISSIONS)),
    "admin": (
        _l("Admin"),
        frozenset(PERMISSIONS) - {"staff.manage", "payments.refund", "finance.export"},
    ),
    "finance": (
        _l("Finance"),
        frozenset(
            {"members.view", "payments.view", "payments.refund", "finance.export", "audit.view"}
        ),
    ),
    "moderator": (
        _l("Moderator"),
        frozenset({"members.view", "members.review", "members.activity", "members.removals"}),
    ),
}


#: Password length (ASVS 5.0 L2: at least 8, at least 64 allowed, no composition rules).
PASSWORD_MIN, PASSWORD_MAX = 8, 128

LOGIN_WINDOW = timedelta(minutes=15)
#: Tries from one client at one account: a stranger elsewhere does not lock the owner out.
LOGINS_PER_CLIENT_AND_ACCOUNT = Limit("staff-login:client-account", 5, LOGIN_WINDOW)
#: Tries from one client over all accounts.
LOGINS_PER_CLIENT = Limit("staff-login:client", 30, LOGIN_WINDOW)
#: Tries in all, claimed only by tries within the two limits above, so that one client
#: cannot use them up alone.
LOGINS_IN_ALL = Limit("staff-login:all", 300, LOGIN_WINDOW)
#: Password checks of a logged-in member of staff (changing the password, turning off
#: the second factor): a stolen session cannot guess its way to the password.
PASSWORD_CONFIRMATIONS = Limit("staff-password-check", 5, LOGIN_WINDOW)

TOTP_ISSUER = "Qunmen"
#: Time steps of clock drift accepted either side of the current one.
TOTP_DRIFT_STEPS = 1

TOO_MANY_TRIES = _l("Too many tries: wait 15 minutes")
WRONG_LOGIN = _l("Wrong e-mail or password, or a wrong code")

login_manager = LoginManager()
login_manager.login_view = "auth.login"
login_manager.login_message = _l("Please log in")


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
    #: Carried in every session of the account; bumping it ends them all.
    session_epoch: Mapped[int] = mapped_column(default=1, server_default="1")
    #: Set on passwords someone else chose (a new account, a reset): the admin pages wait
    #: until the member of staff chooses their own.
    must_change_password: Mapped[bool] = mapped_column(default=False, server_default=sa.false())
    #: Base32 TOTP secret, set when enrolment starts; in force once ``totp_enabled_at``.
    totp_secret: Mapped[str | None] = mapped_column(sa.String(32))
    totp_enabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    #: The time step of the last code accepted; a code of it or before is refused.
    totp_last_step: Mapped[int | None]
    #: The language they chose with the switch; their logins start in it.
    locale: Mapped[str | None] = mapped_column(sa.String(10))

    @property
    def is_active(self) -> bool:
        return self.active

    def get_id(self) -> str:
        """What the session holds: the account and its session epoch."""
        return f"{self.id}:{self.session_epoch}"

    @property
    def actor(self) -> str:
        """How this user appears in the audit log."""
        return f"staff:{self.id}"

    def can(self, permission: str) -> bool:
        return permission in ROLES.get(self.role, ("", frozenset()))[1]

    @property
    def role_label(self) -> str:
        return ROLES.get(self.role, (self.role,))[0]

    @property
    def uses_totp(self) -> bool:
        return self.totp_enabled_at is not None

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)


@login_manager.user_loader
def _load_user(session_id: str) -> StaffUser | None:
    """Called by Flask-Login on every request with a session: the account, if it is
    still active and the session's epoch is still its own."""
    user_id, _, epoch = session_id.partition(":")
    if not (user_id.isdigit() and epoch.isdigit()):
        return None
    user = db.session.get(StaffUser, int(user_id))
    if user is None or not user.active or user.session_epoch != int(epoch):
        return None
    return user


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


def check_password_rules(password: str) -> None:
    """Raise ValueError when ``password`` may not be chosen (only its length counts)."""
    if not PASSWORD_MIN <= len(password) <= PASSWORD_MAX:
        raise ValueError(f"a password has {PASSWORD_MIN} to {PASSWORD_MAX} characters")


def create_staff_user(
    email: str,
    name: str,
    password: str,
    *,
    actor: str,
    role: str = "owner",
    must_change_password: bool = False,
    now: datetime | None = None,
) -> StaffUser:
    """Create an active staff account (flushed); with ``must_change_password`` its owner
    chooses a password of their own at first login. Raises ValueError if the e-mail is
    taken, the role unknown or the password too short or too long."""
    email = email.strip().lower()
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}")
    check_password_rules(password)
    if db.session.scalar(sa.select(StaffUser.id).where(StaffUser.email == email)):
        raise ValueError(f"a staff account with e-mail {email} exists already")
    user = StaffUser(
        email=email,
        name=name,
        role=role,
        created_at=now or utcnow(),
        password_hash=generate_password_hash(password),
        session_epoch=1,
        must_change_password=must_change_password,
    )
    db.session.add(user)
    audit.record(
        "staff.created",
        user,
        actor=actor,
        data={"email": email, "role": role, "must_change_password": must_change_password},
        now=now,
    )
    return user


def end_sessions(user: StaffUser) -> None:
    """Called when the account logs out, changes its password or role, or is disabled:
    every session of it stops working at its next request."""
    user.session_epoch += 1


def set_own_password(user: StaffUser, password: str, *, now: datetime) -> None:
    """Called when a member of staff chooses their own password: sets it, ends their
    sessions (the caller logs the current one in again) and audits it. Raises ValueError
    if the password breaks the rules."""
    check_password_rules(password)
    user.password_hash = generate_password_hash(password)
    user.must_change_password = False
    end_sessions(user)
    audit.record("staff.password_changed", user, actor=user.actor, now=now)


def reset_password(user: StaffUser, *, actor: str, now: datetime) -> str:
    """Called when an owner resets someone's password (forgotten, or the authenticator
    lost): sets a temporary password that must be changed at the next login, turns the
    second factor off, ends the account's sessions and audits it. Returns the temporary
    password, to be shown once."""
    temporary = new_token(12)
    user.password_hash = generate_password_hash(temporary)
    user.must_change_password = True
    had_totp = user.totp_secret is not None
    user.totp_secret = user.totp_enabled_at = user.totp_last_step = None
    end_sessions(user)
    audit.record(
        "staff.password_reset", user, actor=actor, data={"totp_removed": had_totp}, now=now
    )
    return temporary


def start_totp_enrolment(user: StaffUser, *, now: datetime) -> str:
    """Called when a member of staff without a second factor asks for one: gives the
    account a new secret, not yet in force, and returns its ``otpauth://`` URI (to be shown
    once, as a QR code and as text)."""
    if user.uses_totp:
        raise ValueError("the second factor is on already")
    user.totp_secret = pyotp.random_base32()
    user.totp_last_step = None
    audit.record("staff.totp_enrolment_started", user, actor=user.actor, now=now)
    return pyotp.TOTP(user.totp_secret).provisioning_uri(name=user.email, issuer_name=TOTP_ISSUER)


def accept_totp_code(user: StaffUser, code: str, *, now: datetime) -> bool:
    """Called at login and when enrolment is confirmed: whether ``code`` is a code of the
    account's secret for ``now`` (one step of drift either way) that was not accepted
    before. Accepting records the code's time step with one conditional UPDATE (flushed),
    so a code is accepted once, also by requests in parallel."""
    code = "".join(code.split())
    if user.totp_secret is None or not (len(code) == 6 and code.isdigit()):
        return False
    totp = pyotp.TOTP(user.totp_secret)
    current = totp.timecode(now)
    for step in range(current - TOTP_DRIFT_STEPS, current + TOTP_DRIFT_STEPS + 1):
        if same_secret(totp.generate_otp(step), code):
            fresh = sa.or_(StaffUser.totp_last_step.is_(None), StaffUser.totp_last_step < step)
            accepted = db.session.execute(
                sa.update(StaffUser)
                .where(StaffUser.id == user.id, fresh)
                .values(totp_last_step=step)
                .execution_options(synchronize_session=False)
            )
            if accepted.rowcount == 1:
                set_committed_value(user, "totp_last_step", step)
                return True
            return False
    return False


def enable_totp(user: StaffUser, code: str, *, now: datetime) -> bool:
    """Called when a member of staff confirms enrolment with a code from their app: puts
    the second factor in force and audits it. False (nothing changes) if the code is
    wrong."""
    if user.uses_totp or not accept_totp_code(user, code, now=now):
        return False
    user.totp_enabled_at = now
    audit.record("staff.totp_enabled", user, actor=user.actor, now=now)
    return True


def disable_totp(user: StaffUser, *, now: datetime) -> None:
    """Called when a member of staff turns their second factor off: forgets the secret
    and audits it."""
    user.totp_secret = user.totp_enabled_at = user.totp_last_step = None
    audit.record("staff.totp_disabled", user, actor=user.actor, now=now)


def totp_qr_code(uri: str) -> str:
    """The enrolment URI as a QR code, an SVG ``data:`` URL for an ``<img>``."""
    image = qrcode.make(uri, image_factory=qrcode.image.svg.SvgPathImage, box_size=10)
    return "data:image/svg+xml;base64," + base64.b64encode(image.to_string()).decode()


@cache
def _stand_in_hash() -> str:
    """A hash no password matches, checked when no account has the e-mail typed, so that
    unknown and known e-mails take as long."""
    return generate_password_hash(new_token())


def _login_limits(email: str) -> tuple[list[tuple[Limit, str]], list[tuple[Limit, str]]]:
    """The limits a login try claims: first those of its client, then the one of all
    tries. The e-mail is hashed: typed e-mails are not stored."""
    client = client_network()
    account = hashlib.sha256(email.encode()).hexdigest()[:32]
    own = [(LOGINS_PER_CLIENT_AND_ACCOUNT, f"{client}:{account}"), (LOGINS_PER_CLIENT, client)]
    return own, [(LOGINS_IN_ALL, "all")]


def _claim_login_try(email: str, user: StaffUser | None, *, now: datetime) -> bool:
    """Called by the login view before it checks anything: claims one try under each
    login limit and commits the claim. False if a limit is reached; the first refusal of
    each limit in its window is audited as a lockout."""
    own, shared = _login_limits(email)
    try:
        claim(own, now=now)
        claim(shared, now=now)
    except TooManyTries as refused:
        db.session.commit()
        subject = dict(own + shared)[refused.limit]
        counter = db.session.get(AttemptCounter, f"{refused.limit.name}:{subject}")
        if counter is not None and counter.count == refused.limit.tries + 1:
            _record_login_event("staff.login_limited", user, {"limit": refused.limit.name}, now)
            db.session.commit()
        return False
    db.session.commit()
    return True


def _record_login_event(
    action: str, user: StaffUser | None, data: dict[str, str], now: datetime
) -> None:
    """Audit a refused login: on the account tried if there is one (with its e-mail),
    else on no account in particular (the e-mail typed is not kept)."""
    if user is not None:
        data = {**data, "email": user.email}
    # A transient StaffUser stands for "no account": the entry's target_id stays empty.
    audit.record(action, user or StaffUser(), actor="system", data=data, now=now)


def _credentials_hold(user: StaffUser | None, password: str, code: str, now: datetime) -> bool:
    """Whether ``password`` (and the TOTP code, when the account uses one) let ``user``
    in. A password is checked even when there is no such account or it is disabled."""
    password_ok = check_password_hash(user.password_hash if user else _stand_in_hash(), password)
    if user is None or not user.active or not password_ok:
        return False
    return not user.uses_totp or accept_totp_code(user, code, now=now)


def _confirm_password(user: StaffUser, password: str, *, now: datetime) -> str | None:
    """Called before a logged-in member of staff changes their credentials: claims a try
    (committed), then checks their password. None if it is right, else the message."""
    try:
        claim([(PASSWORD_CONFIRMATIONS, str(user.id))], now=now)
    except TooManyTries:
        db.session.commit()
        return TOO_MANY_TRIES
    db.session.commit()
    if not user.check_password(password):
        return _("Wrong password")
    return None


bp = Blueprint("auth", __name__, cli_group=None)


def keep_locale_choice(locale: str) -> None:
    """The language switch, used by a logged-in member of staff: their logins start in it."""
    if current_user.is_authenticated:
        db.session.get(StaffUser, current_user.id).locale = locale


class LoginForm(FlaskForm):
    email = EmailField(_l("E-mail"), validators=[DataRequired(), Email(), Length(max=254)])
    password = PasswordField(_l("Password"), validators=[DataRequired(), Length(max=PASSWORD_MAX)])
    code = StringField(
        _l("Authenticator code (when two-step login is on)"),
        validators=[Optional(), Length(max=12)],
        render_kw={"autocomplete": "one-time-code", "inputmode": "numeric"},
    )


class NewPasswordMixin:
    password = PasswordField(
        _l("New password (%(min)s–%(max)s characters)", min=PASSWORD_MIN, max=PASSWORD_MAX),
        validators=[DataRequired(), Length(min=PASSWORD_MIN, max=PASSWORD_MAX)],
        render_kw={"autocomplete": "new-password"},
    )
    confirm = PasswordField(
        _l("Again"),
        validators=[
            DataRequired(),
            EqualTo("password", message=_l("The two do not match")),
        ],
        render_kw={"autocomplete": "new-password"},
    )


class ChangePasswordForm(NewPasswordMixin, FlaskForm):
    current = PasswordField(
        _l("Current password"),
        validators=[DataRequired(), Length(max=PASSWORD_MAX)],
        render_kw={"autocomplete": "current-password"},
    )


class EnableTotpForm(FlaskForm):
    code = StringField(
        _l("Code from the app"),
        validators=[DataRequired(), Length(max=12)],
        render_kw={"autocomplete": "one-time-code", "inputmode": "numeric"},
    )


class DisableTotpForm(FlaskForm):
    current = PasswordField(
        _l("Current password"),
        validators=[DataRequired(), Length(max=PASSWORD_MAX)],
        render_kw={"autocomplete": "current-password"},
    )


@bp.route("/admin/login", methods=["GET", "POST"])
def login():
    """Staff log in with e-mail, password and, once they turned it on, a TOTP code. Each
    try is claimed and committed first; then a success is audited and starts a session,
    a failure is audited."""
    form = LoginForm()
    if form.validate_on_submit():
        now = utcnow()
        email = form.email.data.strip().lower()
        user = db.session.scalar(sa.select(StaffUser).where(StaffUser.email == email))
        if not _claim_login_try(email, user, now=now):
            flash(str(TOO_MANY_TRIES), "error")
            return render_template("auth/login.html", form=form)
        # The claim's commit expired ``user``: what is checked below is read afresh.
        if _credentials_hold(user, form.password.data, form.code.data or "", now):
            audit.record("staff.logged_in", user, actor=user.actor, now=now)
            settle_locale_at_login(user)
            db.session.commit()
            login_user(user)
            if not user.uses_totp and user.role in ("owner", "finance"):
                flash(
                    _("Consider turning on two-step login (Two-step, at the top)"),
                    "ok",
                )
            target = same_site_path(request.args.get("next"))
            return redirect(target or url_for("membership_admin.dashboard"))
        _record_login_event("staff.login_failed", user, {}, now)
        db.session.commit()
        flash(str(WRONG_LOGIN), "error")
    return render_template("auth/login.html", form=form)


@bp.route("/admin/logout", methods=["POST"])
@login_required
def logout():
    """Log out: ends every session of the account, copies of this one included."""
    user = db.session.get(StaffUser, current_user.id)
    end_sessions(user)
    audit.record("staff.logged_out", user, actor=user.actor)
    db.session.commit()
    logout_user()
    return redirect(url_for("auth.login"))


#: What a member of staff who must choose a password may still open.
_BEFORE_A_NEW_PASSWORD = {"auth.login", "auth.logout", "auth.change_password", "static"}


@bp.before_app_request
def _new_password_first():
    """Every admin page waits until a member of staff with a password chosen by someone
    else has chosen their own."""
    if (
        request.path.startswith("/admin")
        and request.endpoint not in _BEFORE_A_NEW_PASSWORD
        and current_user.is_authenticated
        and current_user.must_change_password
    ):
        flash(_("Choose your own password first"), "error")
        return redirect(url_for("auth.change_password"))
    return None


@bp.route("/admin/account/password", methods=["GET", "POST"])
@login_required
def change_password():
    """A member of staff changes their own password; their other sessions end."""
    form = ChangePasswordForm()
    user = db.session.get(StaffUser, current_user.id)
    if form.validate_on_submit():
        now = utcnow()
        error = _confirm_password(user, form.current.data, now=now)
        if error:
            form.current.errors.append(error)
        else:
            set_own_password(user, form.password.data, now=now)
            db.session.commit()
            login_user(user)  # this session carries the new epoch; the others end
            flash(_("Password changed"), "ok")
            return redirect(url_for("membership_admin.dashboard"))
    return render_template("auth/password.html", form=form, forced=user.must_change_password)


@bp.route("/admin/account/two-step", methods=["GET", "POST"])
@login_required
def two_step():
    """A member of staff turns the TOTP second factor on (start: the secret is shown once;
    confirm with a code from the app) or off (with their password)."""
    user = db.session.get(StaffUser, current_user.id)
    enable_form, disable_form = EnableTotpForm(), DisableTotpForm()
    action = request.form.get("action")
    now = utcnow()
    if request.method == "POST" and action == "start" and not user.uses_totp:
        uri = start_totp_enrolment(user, now=now)
        db.session.commit()
        page = render_template(
            "auth/two_step.html",
            user=user,
            enable_form=enable_form,
            disable_form=disable_form,
            uri=uri,
            qr_code=totp_qr_code(uri),
        )
        return page, 200, {"Cache-Control": "no-store"}
    if action == "confirm" and enable_form.validate_on_submit():
        if enable_totp(user, enable_form.code.data, now=now):
            db.session.commit()
            flash(_("Two-step login is on"), "ok")
            return redirect(url_for(".two_step"))
        db.session.commit()  # a code that matched is used up even if enrolment failed
        enable_form.code.errors.append(_("Wrong code"))
    elif action == "disable" and user.uses_totp and disable_form.validate_on_submit():
        error = _confirm_password(user, disable_form.current.data, now=now)
        if error:
            disable_form.current.errors.append(error)
        else:
            disable_totp(user, now=now)
            db.session.commit()
            flash(_("Two-step login is off"), "ok")
            return redirect(url_for(".two_step"))
    return render_template(
        "auth/two_step.html", user=user, enable_form=enable_form, disable_form=disable_form
    )


@bp.cli.command("create-admin")
@click.option("--email", prompt=True)
@click.option("--name", prompt=True)
@click.option("--role", default="owner", type=click.Choice(list(ROLES)), show_default=True)
@click.option(
    "--temporary",
    is_flag=True,
    help="The password is temporary: it must be changed at the first login.",
)
@click.password_option(envvar="ADMIN_PASSWORD", help="Prompted for unless ADMIN_PASSWORD is set.")
def create_admin_command(email: str, name: str, role: str, temporary: bool, password: str) -> None:
    """Create a staff account (the first one is the owner)."""
    try:
        create_staff_user(
            email, name, password, actor="cli", role=role, must_change_password=temporary
        )
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    db.session.commit()
    click.echo(f"Created admin {email}.")
