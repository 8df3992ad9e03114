"""Labels: what a person reads for a value the code keeps as a code (a status, a kind, a
provider). Each package writes the label table of its enums next to them with
:func:`enum_labels`; pages show a value through the ``label`` template filter, never the
raw value."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import Enum
from typing import TypeVar

E = TypeVar("E", bound=Enum)

#: Every registered table, by the enum it labels.
_TABLES: dict[type[Enum], Mapping[Enum, object]] = {}


def enum_labels(kind: type[E], table: Mapping[E, object]) -> Mapping[E, object]:
    """Called at import, next to the enum ``kind``, with a label (a lazy string) for each of
    its members. Refuses a table that leaves a member out, so a new status cannot reach a
    page unlabelled. Returns the table."""
    missing = [member.value for member in kind if member not in table]
    if missing:
        raise ValueError(f"{kind.__name__}: no label for {', '.join(missing)}")
    _TABLES[kind] = table
    return table


def label(value: object) -> str:
    """The label of ``value`` (an enum member with a registered table) in the reader's
    language; other values as they are. The ``label`` template filter."""
    table = _TABLES.get(type(value)) if isinstance(value, Enum) else None
    return str(table[value]) if table is not None else ("" if value is None else str(value))


def code_reader(*tables: Mapping[str, object]) -> Callable[[str], str | None]:
    """How to read a code kept as text (an audit entry's detail): its label in the first of
    ``tables`` that has it (an enum's label table, whose members are their codes, or a
    table of codes), or None for a code none of them has."""

    def read(code: str) -> str | None:
        for table in tables:
            if (text := table.get(code)) is not None:
                return str(text)
        return None

    return read
