"""The language a message to a member or an applicant is written in, outside their request
(an admin's approval, an announcement): theirs when they chose one, else their community's,
else the default. Used with :func:`flask_babel.force_locale`."""

from __future__ import annotations

from core.i18n import DEFAULT_LOCALE, LOCALES
from membership.models import Community


def reader_locale(chosen: str | None, community: Community) -> str:
    """Called before writing a message that leaves through the outbox, with the locale
    the reader chose (``Member.locale``), if known; returns a locale there is a catalog
    for."""
    for locale in (chosen, community.locale):
        if locale in LOCALES:
            return locale
    return DEFAULT_LOCALE
