"""The application factory: config → extensions → blueprints → CLI → signal handlers."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, has_request_context, render_template, request
from flask_migrate import Migrate
from flask_wtf.csrf import CSRFError
from sqlalchemy.exc import OperationalError
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import MapAdapter
from werkzeug.wrappers import Request

import config as settings
from api import admin as api_admin
from api.views import init_api
from core import events, i18n, limits, outbox  # noqa: F401 (their models are part of the schema)
from core.admin import bp as core_admin_bp
from core.auth import bp as auth_bp
from core.auth import keep_locale_choice as auth_keep_locale_choice
from core.auth import login_manager
from core.checks import check_command
from core.clock import local_time
from core.db import db, init_db
from core.observability import init_observability
from core.security import SignedCookieSessions, csrf, init_security_headers
from core.static_files import init_static_files
from demo import demo_command
from membership import admin as membership_admin
from membership import checks as membership_checks  # noqa: F401 (registers its checks)
from membership import cli as membership_cli
from membership import telegram as membership_telegram
from membership import views as membership_views
from membership import wecom as membership_wecom
from membership.access import start_in_process_worker
from membership.paid_join import apply_paid_join
from membership.services import (
    admit_paid_application,
    restore_paid_access,
    withdraw_paid_access,
)
from membership.visits import init_visits
from payments import admin as payments_admin
from payments import checks as payments_checks  # noqa: F401 (registers its checks)
from payments.cli import payments_cli
from payments.discounts import register_discount_quote, register_discount_rule
from payments.providers import check_community_secrets, init_providers
from payments.services import register_fast_path
from payments.signals import access_restored, access_withdrawn, order_paid
from payments.views import fake_cashier, webhooks, wechatpay
from perks import admin as perks_admin
from perks import cli as perks_cli
from perks import views as perks_views
from perks.coupons import (
    consume_paid_coupon,
    quote_coupon,
    release_refunded_coupon,
    reserve_coupon,
)
from perks.courses import activate_paid_enrolment, restore_enrolment, withdraw_enrolment

migrate = Migrate()


class Qunmen(Flask):
    """Flask, with every external URL on ``PUBLIC_BASE_URL``.

    Payment callbacks, return URLs and links in messages are built with
    ``url_for(..., _external=True)`` in requests, and with plain ``url_for`` in the CLI and
    the worker, where Flask makes them external by default. Both end here, so none of them
    is ever built from the Host header a client sent.
    """

    def create_url_adapter(self, request: Request | None) -> MapAdapter | None:
        """Outside a request (CLI, worker): URLs are built on ``PUBLIC_BASE_URL``, with its
        path prefix. In a request: Flask's adapter, which routes the request."""
        if request is not None:
            return super().create_url_adapter(request)
        base = urlsplit(self.config["PUBLIC_BASE_URL"])
        return self.url_map.bind(base.netloc, script_name=base.path or "/", url_scheme=base.scheme)

    def url_for(
        self,
        endpoint: str,
        *,
        _scheme: str | None = None,
        _external: bool | None = None,
        **values: Any,
    ) -> str:
        """Flask's ``url_for``; in a request, an external URL is the path under
        ``PUBLIC_BASE_URL`` (the scheme is the base's: ``_scheme`` is refused)."""
        if _scheme is not None:
            raise ValueError("external URLs take PUBLIC_BASE_URL's scheme; no _scheme")
        if not (_external and has_request_context()):
            return super().url_for(endpoint, _external=_external, **values)
        path = super().url_for(endpoint, _external=False, **values)
        return self.config["PUBLIC_BASE_URL"] + path.removeprefix(request.script_root)


def create_app(config: Mapping[str, object] | None = None) -> Flask:
    """Build the app. Raises :class:`config.SettingError`, naming the setting, when the
    settings are malformed or production lacks one it must not run without."""
    # INSTANCE_PATH: an instance folder of its own for each of several instances run from
    # one checkout (Flask's default is instance/ beside app.py).
    app = Qunmen(
        __name__, instance_relative_config=True, instance_path=os.environ.get("INSTANCE_PATH")
    )
    app.session_interface = SignedCookieSessions()
    app.config.from_mapping(settings.from_environment(app.instance_path))
    if config:
        app.config.from_mapping(config)
    settings.complete(app.config, app.instance_path)

    if proxies := app.config["TRUSTED_PROXIES"]:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies)
    init_observability(app)
    init_security_headers(app)
    init_db(app)
    i18n.init_i18n(app)
    i18n.register_community_source(membership_views.community_preferences)
    i18n.register_choice_keeper(membership_views.keep_locale_choice)
    i18n.register_choice_keeper(auth_keep_locale_choice)
    migrate.init_app(app, db, directory=str(app.root_path + "/migrations"))
    login_manager.init_app(app)
    csrf.init_app(app)
    init_providers(app)
    check_community_secrets(app)
    register_discount_rule(app, reserve_coupon)
    register_discount_quote(app, quote_coupon)
    init_visits(app)
    init_static_files(app)

    app.register_blueprint(membership_views.bp)
    app.register_blueprint(membership_admin.bp)
    app.register_blueprint(membership_telegram.bp)
    app.register_blueprint(membership_wecom.bp)
    app.register_blueprint(payments_admin.bp)
    app.register_blueprint(perks_views.bp)
    app.register_blueprint(perks_admin.bp)
    app.register_blueprint(webhooks)
    app.register_blueprint(fake_cashier)
    app.register_blueprint(wechatpay)
    app.register_blueprint(auth_bp)
    app.register_blueprint(core_admin_bp)
    init_api(app)
    app.register_blueprint(api_admin.bp)

    app.cli.add_command(membership_cli.seed_demo_command)
    app.cli.add_command(membership_cli.expire_memberships_command)
    app.cli.add_command(membership_cli.worker_command)
    app.cli.add_command(membership_cli.watch_groups_command)
    app.cli.add_command(membership_cli.export_revenue_command)
    app.cli.add_command(membership_cli.figures_rebuild_command)
    app.cli.add_command(payments_cli)
    app.cli.add_command(perks_cli.seed_demo_perks_command)
    app.cli.add_command(check_command)
    app.cli.add_command(demo_command)

    if app.config["QUEUE_IN_PROCESS"] and not app.testing:
        start_in_process_worker(app)

    order_paid.connect(admit_paid_application)
    order_paid.connect(consume_paid_coupon)
    order_paid.connect(activate_paid_enrolment)
    access_withdrawn.connect(withdraw_paid_access)
    access_withdrawn.connect(release_refunded_coupon)
    access_withdrawn.connect(withdraw_enrolment)
    access_restored.connect(restore_paid_access)
    access_restored.connect(restore_enrolment)
    # A new member's paid join, by statements built once (the rest through order_paid).
    register_fast_path(apply_paid_join)

    app.add_template_filter(local_time, "localtime")
    _register_error_pages(app)
    return app


def _register_error_pages(app: Flask) -> None:
    """Called once by :func:`create_app`: each HTTP error answers with a page in the
    reader's language (lazy messages, translated when the page is drawn)."""
    from flask_babel import lazy_gettext as _l

    messages = {
        400: _l("Bad request"),
        403: _l("You may not do this"),
        404: _l("Page not found"),
        405: _l("This action is not supported"),
        413: _l("What you sent is too large"),
        500: _l("Something went wrong, please try again later"),
        503: _l("Temporarily unavailable, please try again shortly"),
    }
    for code, message in messages.items():

        def handler(error, code=code, message=message):
            if code == 500:
                # What failed may have left the session unusable (a flush refused by the
                # database): the page's own reads start afresh.
                db.session.rollback()
            return render_template("errors/error.html", code=code, message=message), code

        app.register_error_handler(code, handler)

    @app.errorhandler(CSRFError)
    def form_not_from_its_page(error):
        """A form sent without the token of the page that drew it: the page was drawn for
        another session (which has ended, or whose cookie the browser did not keep) or by
        another site. The reader is told to open the page again, with a link when it has
        one."""
        rule = request.url_rule
        again = request.full_path.rstrip("?") if rule and "GET" in rule.methods else None
        message = _l("This form has expired: open its page again and send it from there")
        return render_template("errors/error.html", code=400, message=message, again=again), 400

    @app.errorhandler(OperationalError)
    def database_unreachable(error):
        """The database is down or unreachable: a friendly page, and a 503 so that
        clients and load balancers retry."""
        app.logger.error("database unreachable: %s", error.orig)
        db.session.rollback()
        return render_template("errors/error.html", code=503, message=messages[503]), 503
