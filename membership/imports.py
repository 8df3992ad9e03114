"""Bringing an existing community's members in from a CSV: their numbers and join dates
kept. A dry run lists each row's problems; the real run is all or nothing, and numbering
carries on after the highest number imported.

Columns, with a header row in English or in Chinese, in any order (:data:`HEADERS`):
``number, display_name, contact_kind, contact_value, joined, tier`` — ``joined`` as
YYYY-MM-DD in the community's time zone, ``tier`` a tier code, ``contact_kind`` wechat,
phone or email (or their names in a catalog language). Problems are told in the
reader's language.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import sqlalchemy as sa
from email_validator import EmailNotValidError, validate_email
from flask_babel import force_locale, lazy_pgettext
from flask_babel import gettext as _

from core import audit
from core.clock import utcnow
from core.db import db
from core.forms import UnreadableFile, csv_delimiter, uploaded_text
from core.i18n import LOCALES
from membership.exports import day_start
from membership.forms import CONTACT_RULES, strip_text
from membership.models import (
    CONTACT_KIND_WORDS,
    Community,
    ContactKind,
    InvitationStatus,
    Member,
    Membership,
    MembershipStatus,
    format_member_number,
)
from membership.services import issue_invitation, normalise_contact

COLUMNS = ("number", "display_name", "contact_kind", "contact_value", "joined", "tier")
#: Each column's name in a header, in the catalogs' languages; the keys of
#: :data:`COLUMNS` are accepted too. Any language is read, whatever the page's.
HEADERS = {
    "number": lazy_pgettext("import column", "number"),
    "display_name": lazy_pgettext("import column", "display_name"),
    "contact_kind": lazy_pgettext("import column", "contact_kind"),
    "contact_value": lazy_pgettext("import column", "contact_value"),
    "joined": lazy_pgettext("import column", "joined"),
    "tier": lazy_pgettext("import column", "tier"),
}
MAX_ROWS = 20_000


@dataclass
class ImportRow:
    number: int
    display_name: str
    contact_kind: ContactKind
    contact_value: str
    joined: date
    tier_code: str


@dataclass
class ImportCheck:
    """What a CSV would import, and every problem found, by line."""

    rows: list[ImportRow] = field(default_factory=list)
    problems: list[tuple[int, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and bool(self.rows)


def check_import(community: Community, data: bytes) -> ImportCheck:
    """Read and check a CSV against the community (a dry run: nothing changes)."""
    check = ImportCheck()
    try:
        text = uploaded_text(data)
    except UnreadableFile as unreadable:
        check.problems.append((0, str(unreadable)))
        return check
    reader = csv.DictReader(io.StringIO(text), delimiter=csv_delimiter(text))
    columns = _columns(reader.fieldnames or ())
    if columns is None:
        names = ", ".join(str(name) for name in HEADERS.values())
        check.problems.append((1, _("The header must name these columns: %(names)s.", names=names)))
        return check
    reader.fieldnames = columns
    tiers = {t.code: t for t in community.tiers}
    kinds = _in_every_language(CONTACT_KIND_WORDS)
    taken_numbers = set(
        db.session.scalars(
            sa.select(Member.number).where(
                Member.community_id == community.id, Member.number.is_not(None)
            )
        )
    )
    taken_contacts = {
        (kind, value)
        for kind, value in db.session.execute(
            sa.select(Member.contact_kind, Member.contact_value).where(
                Member.community_id == community.id
            )
        )
    }
    for line, record in enumerate(reader, start=2):
        if line - 1 > MAX_ROWS:
            check.problems.append((line, _("At most %(count)s rows.", count=MAX_ROWS)))
            break
        row, problems = _read(record, tiers, kinds)
        number = (record.get("number") or "").strip().lstrip("#")
        if number.isascii() and number.isdigit():
            # Checked even on a row with other problems: a later row may repeat it.
            if int(number) in taken_numbers:
                problems.append(_("Number %(number)s is taken.", number=int(number)))
            taken_numbers.add(int(number))
        if row is not None:
            if (row.contact_kind, row.contact_value) in taken_contacts:
                problems.append(_("The contact belongs to a member already."))
            taken_contacts.add((row.contact_kind, row.contact_value))
        check.problems.extend((line, problem) for problem in problems)
        if row is not None and not problems:
            check.rows.append(row)
    if not check.rows and not check.problems:
        check.problems.append((2, _("The file has no rows.")))
    return check


def _in_every_language(labels: dict) -> dict[str, object]:
    """Each key of ``labels`` by its own text and its label's text in every catalog
    language, case-folded: what a file may write."""
    names = {str(key).casefold(): key for key in labels}
    for locale in LOCALES:
        with force_locale(locale):
            names.update({str(label).strip().casefold(): key for key, label in labels.items()})
    return names


def _columns(header: Sequence[str]) -> list[str] | None:
    """The columns a header names, in its order, whichever language each name is in; None
    unless it names each column once and nothing else."""
    names = _in_every_language(HEADERS)
    columns = [names.get(name.strip().casefold()) for name in header]
    if None in columns or sorted(columns) != sorted(COLUMNS):
        return None
    return columns


def sample_csv() -> str:
    """A sample file in the reader's language (header, contact kinds, names): two members,
    for the import page's download. UTF-8 with a BOM, for Excel."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow([str(HEADERS[column]) for column in COLUMNS])
    phone, wechat = (
        str(CONTACT_KIND_WORDS[ContactKind.PHONE]),
        str(CONTACT_KIND_WORDS[ContactKind.WECHAT]),
    )
    writer.writerow(["1", _("Reader"), phone, "13800000001", "2024-01-15", "main"])
    writer.writerow(["2", _("Bookworm"), wechat, "bookworm_2", "2024-02-01", "main"])
    return "\ufeff" + buffer.getvalue()


def _read(
    record: dict[str, str | None], tiers: dict, kinds: dict
) -> tuple[ImportRow | None, list[str]]:
    values = {key: strip_text(record.get(key) or "") for key in COLUMNS}
    problems: list[str] = []
    number = values["number"].lstrip("#")
    if not (number.isascii() and number.isdigit() and 0 < int(number) < 10**8):
        problems.append(_("The number must be a positive whole number."))
    if not values["display_name"] or len(values["display_name"]) > 40:
        problems.append(_("The name must be 1–40 characters."))
    kind = kinds.get(values["contact_kind"].casefold())
    if kind is None:
        kinds = ", ".join(str(name) for name in CONTACT_KIND_WORDS.values())
        problems.append(_("The contact kind must be one of: %(kinds)s.", kinds=kinds))
    contact = values["contact_value"]
    if kind is ContactKind.EMAIL:
        try:
            validate_email(contact, check_deliverability=False)
        except EmailNotValidError:
            problems.append(_("Not a valid e-mail address."))
    elif kind is not None:
        pattern, message = CONTACT_RULES[kind]
        if not pattern.fullmatch(contact.replace(" ", "").replace("-", "")):
            problems.append(str(message))
    try:
        joined = date.fromisoformat(values["joined"])
    except ValueError:
        joined = None
        problems.append(_("The joined date must be YYYY-MM-DD."))
    if values["tier"] not in tiers:
        problems.append(_("There is no tier with the code %(code)s.", code=repr(values["tier"])))
    if problems:
        return None, problems
    return (
        ImportRow(
            number=int(number),
            display_name=values["display_name"],
            contact_kind=kind,
            contact_value=normalise_contact(kind, contact),
            joined=joined,
            tier_code=values["tier"],
        ),
        [],
    )


def run_import(
    community: Community, check: ImportCheck, *, actor: str, now: datetime | None = None
) -> int:
    """Import the rows of a clean check: members with their numbers, a membership of
    their tier from their join date, an invitation marked joined (they are in the group).
    Numbering then carries on after the highest number. Returns how many."""
    if not check.ok:
        raise ValueError("only a check without problems can be imported")
    now = now or utcnow()
    tiers = {t.code: t for t in community.tiers}
    for row in check.rows:
        tier = tiers[row.tier_code]
        joined_at = day_start(community, row.joined)
        member = Member(
            community_id=community.id,
            display_name=row.display_name,
            contact_kind=row.contact_kind,
            contact_value=row.contact_value,
            number=row.number,
            number_label=format_member_number(community.member_number_pattern, row.number),
            created_at=joined_at,
        )
        membership = Membership(
            member=member,
            tier=tier,
            status=MembershipStatus.ACTIVE,
            starts_at=joined_at,
            ends_at=joined_at + timedelta(days=tier.duration_days) if tier.duration_days else None,
        )
        db.session.add_all([member, membership])
        invitation = issue_invitation(membership, actor=actor, now=now)
        if invitation.status is InvitationStatus.ISSUED:
            invitation.status = InvitationStatus.JOINED
    highest = max(row.number for row in check.rows)
    community.last_member_number = max(community.last_member_number, highest)
    audit.record(
        "community.members_imported",
        community,
        actor=actor,
        data={"count": len(check.rows), "highest_number": highest},
        now=now,
    )
    return len(check.rows)
