"""Languages: which one a request is answered in, the switch between them, and the catalogs.

Text lives in gettext catalogs under ``translations/`` (``bin/translations`` extracts,
updates, compiles and checks them). Message ids are English; ``zh_CN`` is the default
locale and its catalog is complete, as is ``en``'s. A page is in one language at a time.

The locale of a request is, in order: the choice made with the switch in this browser
(kept in the session, and copied from the member's or staff member's account when they
log in), the default of the community the page belongs to, the browser's
``Accept-Language``, and ``zh_CN``. Packages say which community a request belongs to
through :func:`register_community_source`; ``core`` knows no communities. A page found by
what it shows rather than by its address (a cashier, a course, a member's page) names its
community with :func:`belongs_to_community`, so one journey speaks one language.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache, cached_property
from typing import NamedTuple

from babel import Locale, support
from flask import (
    Blueprint,
    Flask,
    Request,
    abort,
    current_app,
    g,
    has_request_context,
    redirect,
    request,
    session,
)
from flask_babel import Babel, Domain, _get_current_context, get_locale, lazy_ngettext
from flask_babel import lazy_gettext as _l
from wtforms.i18n import messages_path

from core.security import same_site_path

#: The locales there are catalogs for, with their own names (what the switch shows).
LOCALES: dict[str, str] = {"zh_CN": "简体中文", "en": "English"}
DEFAULT_LOCALE = "zh_CN"
#: Where the switch keeps this browser's choice.
LOCALE_SESSION_KEY = "locale"


class RequestCatalog(Domain):
    """Flask-Babel's message domain, with the catalog of a request (or of an app context:
    a command, the worker) looked up once and kept in its Babel context. Flask-Babel looks
    it up on every message (the locale, its name, a dictionary keyed by them): a third of
    the cost of each of the sixty-odd messages of an admin page. Kept in
    ``babel_translations``, the attribute Flask-Babel's ``refresh`` and ``force_locale``
    reset and restore with the locale, so a page still speaks one language and a message
    written inside ``force_locale`` speaks the forced one."""

    def get_translations(self):
        context = _get_current_context()
        if context is None:
            return super().get_translations()
        translations = getattr(context, "babel_translations", None)
        if translations is None:
            translations = context.babel_translations = super().get_translations()
        return translations


class _Babel(Babel):
    @cached_property
    def domain_instance(self) -> Domain:
        return RequestCatalog(domain=self.domain)


babel = _Babel()
bp = Blueprint("i18n", __name__)


class CommunityPreferences(NamedTuple):
    """What a community says about the pages that belong to it."""

    locale: str | None
    time_zone: str


#: Callables answering "which community's page is this?" with its preferences, or None.
_community_sources: list[Callable[[], CommunityPreferences | None]] = []
#: Callables told of a choice made with the switch, to keep it on the account logged in.
_choice_keepers: list[Callable[[str], None]] = []
#: Blueprints answered in the language the client's ``Accept-Language`` asks for, else in
#: the blueprint's own default (:func:`answer_in_accepted_language`).
_client_chosen: dict[str, str] = {}


def register_community_source(source: Callable[[], CommunityPreferences | None]) -> None:
    """Called once at start-up by a package whose pages belong to a community."""
    if source not in _community_sources:
        _community_sources.append(source)


def belongs_to_community(community_id: int) -> None:
    """Called by a page that belongs to a community it knows from what it shows (an order,
    a member), not from its address: the community sources (:func:`page_community_id`)
    answer for it, so that a journey through several pages stays in one language. Before
    any text of the request is translated."""
    g.page_community_id = community_id


def page_community_id() -> int | None:
    """The community :func:`belongs_to_community` named for this request, if any."""
    return g.get("page_community_id")


def register_choice_keeper(keeper: Callable[[str], None]) -> None:
    """Called once at start-up by a package with accounts that remember their language.
    ``keeper(locale)`` runs in the request that made the choice; it flushes, the switch
    commits."""
    if keeper not in _choice_keepers:
        _choice_keepers.append(keeper)


def answer_in_accepted_language(blueprint: str, default: str) -> None:
    """Called once at start-up by a blueprint that serves programs, not people's pages (an
    API): no switch and no community decide, only the request's ``Accept-Language``;
    ``default`` when it names none of :data:`LOCALES` (or is absent), and for ``*``."""
    _client_chosen[blueprint] = default


def _community() -> CommunityPreferences | None:
    if "i18n_community" not in g:
        g.i18n_community = next(
            (found for source in _community_sources if (found := source()) is not None), None
        )
    return g.i18n_community


def select_locale() -> str:
    """Flask-Babel's locale selector (see the module's docstring for the order). Outside
    a request (a ``flask`` command, the worker): the ``QUNMEN_LOCALE`` setting."""
    if not has_request_context():
        return current_app.config.get("QUNMEN_LOCALE", DEFAULT_LOCALE)
    if request.blueprint in _client_chosen:
        return accepted_locale(_client_chosen[request.blueprint])
    chosen = session.get(LOCALE_SESSION_KEY)
    if chosen in LOCALES:
        return chosen
    community = _community()
    if community is not None and community.locale in LOCALES:
        return community.locale
    return accepted_locale(DEFAULT_LOCALE)


def accepted_locale(default: str) -> str:
    """The first of the request's ``Accept-Language`` languages, best quality first, that
    one of :data:`LOCALES` speaks (``en-US`` is ``en``; ``zh``, ``zh-Hans`` are
    ``zh_CN``); ``default`` for ``*``, for none, or when the header is absent. (Werkzeug's
    ``best_match`` would prefer ``zh-CN;q=0.5`` to ``en-US``, an exact match to a better
    one.)"""
    for value, _quality in request.accept_languages:
        if value == "*":
            return default
        language = value.replace("_", "-").lower().split("-")[0]
        for code in LOCALES:
            if code.replace("_", "-").lower().split("-")[0] == language:
                return code
    return default


def select_time_zone() -> str | None:
    """Times are shown in the zone of the community the page belongs to, else the
    install's default (``BABEL_DEFAULT_TIMEZONE``)."""
    if not has_request_context():
        return None
    community = _community()
    return community.time_zone if community is not None else None


def current_locale() -> str:
    """The locale this request is answered in, as the catalogs name it: ``zh_CN`` (Babel
    spells it ``zh_Hans_CN``)."""
    return _catalog_name(str(get_locale()))


@cache
def _catalog_name(locale: str) -> str:
    """The catalog's name for Babel's spelling of a locale (parsing one is slow, and every
    page asks several times)."""
    parsed = Locale.parse(locale)
    return next((code for code in LOCALES if Locale.parse(code) == parsed), DEFAULT_LOCALE)


def html_lang() -> str:
    """The locale as HTML's ``lang`` attribute wants it (BCP 47): ``zh-CN``, ``en``."""
    return current_locale().replace("_", "-")


def remember_locale(locale: str) -> None:
    """Make ``locale`` this browser's choice (the member's or staff member's login copies
    theirs here when they have one)."""
    if locale in LOCALES:
        session[LOCALE_SESSION_KEY] = locale


def settle_locale_at_login(account) -> None:
    """At a login (``account`` has a ``locale`` column): a choice this browser made becomes
    the account's; else the account's becomes this browser's. Flushes nothing itself."""
    chosen = session.get(LOCALE_SESSION_KEY)
    if chosen in LOCALES:
        account.locale = chosen
    elif account.locale in LOCALES:
        session[LOCALE_SESSION_KEY] = account.locale


@bp.get("/lang/<locale>")
def switch(locale: str):
    """The language switch on every page: a link, so it works without JavaScript inside
    WeChat. Keeps the choice in this browser and on the account logged in, then returns
    to the page it was clicked on."""
    from core.db import db, take_write_lock

    if locale not in LOCALES:
        abort(404)
    take_write_lock()  # the choice is kept on the account
    remember_locale(locale)
    for keeper in _choice_keepers:
        keeper(locale)
    db.session.commit()
    return redirect(same_site_path(request.args.get("next")) or "/")


#: WTForms' messages that its own Chinese catalog leaves untranslated (marked fuzzy there,
#: so they are not in its compiled catalog): named here so that ours carries them.
WTFORMS_GAPS = (
    _l("This field cannot be edited."),
    _l("This field is disabled and cannot have a value."),
    _l("Not a valid week value."),
    lazy_ngettext(
        "'%(value)s' is not a valid choice for this field.",
        "'%(value)s' are not valid choices for this field.",
        1,
    ),
)


@cache
def _wtforms_catalog(locale: str, ours: str) -> support.NullTranslations:
    """WTForms' own catalog (its validators' messages) for ``locale``, loaded once, with
    ours (in the folder ``ours``) behind it for the messages it leaves untranslated
    (:data:`WTFORMS_GAPS`)."""
    catalog = support.Translations.load(messages_path(), [locale], domain="wtforms")
    catalog.add_fallback(support.Translations.load(ours, [locale]))
    return catalog


class LocalizedRequest(Request):
    """The app's request. Flask-WTF asks it for ``wtforms_translations`` before it loads
    WTForms' catalog itself, from disk, on every request that validates a form (a tenth
    of a join form's time): the catalog of the request's locale comes from memory."""

    @property
    def wtforms_translations(self) -> support.NullTranslations:
        return _wtforms_catalog(
            str(get_locale()), current_app.config["BABEL_TRANSLATION_DIRECTORIES"]
        )


def init_i18n(app: Flask) -> None:
    app.request_class = LocalizedRequest
    app.config.setdefault("BABEL_DEFAULT_LOCALE", DEFAULT_LOCALE)
    app.config.setdefault("BABEL_DEFAULT_TIMEZONE", "Asia/Shanghai")
    app.config.setdefault("BABEL_TRANSLATION_DIRECTORIES", app.root_path + "/translations")
    babel.init_app(app, locale_selector=select_locale, timezone_selector=select_time_zone)
    app.register_blueprint(bp)
    app.add_template_global(html_lang)
    app.add_template_global(current_locale)
    app.add_template_global(LOCALES, "LOCALES")
