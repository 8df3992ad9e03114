"""Bringing an existing community's members in from a CSV: their numbers and join dates
kept. A dry run lists each row's problems; the real run is all or nothing, and numbering
carries on after the highest number imported.

Columns, with a header row: ``number, display_name, contact_kind, contact_value, joined,
tier`` — ``joined`` as YYYY-MM-DD in the community's time zone, ``tier`` a tier code.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import sqlalchemy as sa
from email_validator import EmailNotValidError, validate_email

from core import audit
from core.clock import utcnow
from core.db import db
from membership.exports import day_start
from membership.forms import CONTACT_RULES
from membership.models import (
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
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        check.problems.append((0, "文件不是UTF-8编码 · The file is not UTF-8"))
        return check
    reader = csv.DictReader(io.StringIO(text))
    if tuple(reader.fieldnames or ()) != COLUMNS:
        check.problems.append((1, f"表头须为 · The header must be: {','.join(COLUMNS)}"))
        return check
    tiers = {t.code: t for t in community.tiers}
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
            check.problems.append((line, f"最多 {MAX_ROWS} 行 · At most {MAX_ROWS} rows"))
            break
        row, problems = _read(record, tiers)
        number = (record.get("number") or "").strip().lstrip("#")
        if number.isascii() and number.isdigit():
            # Checked even on a row with other problems: a later row may repeat it.
            if int(number) in taken_numbers:
                problems.append(f"编号 {int(number)} 已被使用 · Number {int(number)} is taken")
            taken_numbers.add(int(number))
        if row is not None:
            if (row.contact_kind, row.contact_value) in taken_contacts:
                problems.append("联系方式已属于一位成员 · The contact belongs to a member")
            taken_contacts.add((row.contact_kind, row.contact_value))
        check.problems.extend((line, problem) for problem in problems)
        if row is not None and not problems:
            check.rows.append(row)
    if not check.rows and not check.problems:
        check.problems.append((2, "没有数据行 · No rows"))
    return check


def _read(record: dict[str, str | None], tiers: dict) -> tuple[ImportRow | None, list[str]]:
    values = {key: (record.get(key) or "").strip() for key in COLUMNS}
    problems = []
    number = values["number"].lstrip("#")
    if not (number.isascii() and number.isdigit() and 0 < int(number) < 10**8):
        problems.append("编号须为正整数 · The number must be a positive whole number")
    if not values["display_name"] or len(values["display_name"]) > 40:
        problems.append("昵称须为1–40个字 · The name must be 1–40 characters")
    try:
        kind = ContactKind(values["contact_kind"])
    except ValueError:
        kind = None
        problems.append(
            "联系方式类型须为 wechat/phone/email · Contact kind: wechat, phone or email"
        )
    contact = values["contact_value"]
    if kind is ContactKind.EMAIL:
        try:
            validate_email(contact, check_deliverability=False)
        except EmailNotValidError:
            problems.append("邮箱格式不正确 · Not a valid e-mail address")
    elif kind is not None:
        pattern, message = CONTACT_RULES[kind]
        if not pattern.fullmatch(contact.replace(" ", "").replace("-", "")):
            problems.append(message)
    try:
        joined = date.fromisoformat(values["joined"])
    except ValueError:
        joined = None
        problems.append("加入日期须为 YYYY-MM-DD · The joined date must be YYYY-MM-DD")
    if values["tier"] not in tiers:
        problems.append(f"没有代号为 {values['tier']!r} 的档位 · No tier {values['tier']!r}")
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
