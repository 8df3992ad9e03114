"""The language a message to a member or an applicant is written in, outside their request
(an admin's approval, an announcement): theirs when they chose one, else their community's,
else the default. Used with :func:`flask_babel.force_locale`."""

from __future__ import annotations

from core.i18n import DEFAULT_LOCALE, LOCALES
from membership.models import Community, Member


def reader_locale(member: Member | None, community: Community) -> str:
    """Called before writing a message that leaves through the outbox; returns a locale
    there is a catalog for."""
    for locale in (member.locale if member is not None else None, community.locale):
        if locale in LOCALES:
            return locale
    return DEFAULT_LOCALE
