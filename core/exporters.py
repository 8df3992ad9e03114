"""Exporters: classes that yield rows, written out as CSV (streamed) or XLSX (written
row by row with XlsxWriter's constant-memory mode). One base for every export. An
exporter that can give its rows as a query of text cells has the database write its CSV,
a few times faster than reading the rows into Python: PostgreSQL with ``COPY``, SQLite by
joining the cells into lines, a part of the rows per query, parts in parallel if asked.

CSV cells that a spreadsheet would read as a formula (starting with = + - @, a tab or a
carriage return) are prefixed with an apostrophe: an exported nickname never runs. A query
that writes the CSV does that itself (:func:`defused`). A workbook's cells are written as
they are: its strings are string cells, which no spreadsheet runs, so an order number that
starts with "-" reads as the provider's.
"""

from __future__ import annotations

import csv
import io
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from itertools import islice
from pathlib import Path

import sqlalchemy as sa
import xlsxwriter
from sqlalchemy.types import TypeDecorator
from xlsxwriter.utility import xl_col_to_name

from core.db import copy_csv, is_postgresql, read_parts

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class Exporter(ABC):
    """A table: a title, its column headers, and its rows (generated, never all held).
    Titles and headers may be lazy strings: they are read in the language of the request
    (or ``force_locale`` block) that writes the export."""

    title: str
    headers: Sequence[str]
    #: Column widths in a workbook, in characters (the rest keep the default).
    widths: Sequence[int] = ()

    @abstractmethod
    def rows(self) -> Iterator[Sequence[object]]: ...

    def footer(self) -> Iterator[Sequence[object]]:
        """Rows under the rows of a workbook (totals), bold; CSV has none. Cells may be
        :class:`ColumnTotal`."""
        return iter(())

    def text_query(self) -> sa.Select | None:
        """The rows as a query whose cells are the text the CSV shows, formula injection
        defused, or None when there is none. Cells that may hold any character (a comma,
        a quote, a line break) are typed :class:`FreeText`; the others never do."""
        return None

    def line_parts(self) -> tuple[sa.Select, list[dict[str, object]]]:
        """SQLite, for an exporter with a :meth:`text_query`: a query of one column, the
        CSV lines of its rows (no line end), and the values of its parts (see
        :func:`core.db.read_parts`), whose rows, one part after another, are its rows, to
        be written in parallel. One part, its cells joined by :func:`csv_line_sql`, unless
        an exporter knows better."""
        query = self.text_query()
        return query.with_only_columns(csv_line_sql(query.selected_columns).label("line")), [{}]


class FreeText(TypeDecorator):
    """Text from people or providers: a CSV cell that may need quoting."""

    impl = sa.String
    cache_ok = True


@dataclass(frozen=True)
class ColumnTotal:
    """A workbook cell summing its column over the rows whose ``criteria_column`` holds
    ``criteria`` (a SUMIFS, so the accountant sees how it is made), with its value."""

    value: Decimal
    criteria_column: int
    criteria: str


def defused(column: sa.ColumnElement[str]) -> sa.ColumnElement[str]:
    """SQL for ``column``'s text with formula injection defused as :func:`safe_row` does,
    for exports of millions of rows, where checking each cell in Python would cost more
    than reading it."""
    cell = sa.case(
        (sa.func.substr(column, 1, 1).in_(_FORMULA_START), sa.literal("'") + column),
        else_=column,
    )
    return sa.type_coerce(cell, FreeText)


@dataclass(frozen=True)
class Printed:
    """A CSV cell that the line's own ``printf`` writes (see :func:`csv_line_sql`): a
    format of SQLite's printf (never quoted, so no comma, quote or line break in what it
    writes) and the values it takes. One printf for the line instead of one per cell."""

    format: str
    values: tuple[sa.ColumnElement, ...] = ()


def csv_line_sql(cells: Sequence[sa.ColumnElement | Printed]) -> sa.ColumnElement[str]:
    """SQLite joining ``cells`` into a CSV line (no line end) in one ``printf``, which
    builds it once instead of a copy per cell: :class:`FreeText` cells are quoted, their
    quotes doubled (``%w``), as the csv module would write them; NULL is empty;
    :class:`Printed` cells are written by their own format."""
    formats: list[str] = []
    values: list[sa.ColumnElement] = []
    for cell in cells:
        if isinstance(cell, Printed):
            formats.append(cell.format)
            values.extend(cell.values)
        elif isinstance(cell.type, FreeText):
            formats.append('"%w"')
            values.append(sa.func.coalesce(cell, ""))
        else:
            formats.append("%s")
            values.append(cell)
    return sa.func.printf(",".join(formats), *values, type_=sa.String)


def _sqlite_csv_part(lines: sa.Select) -> sa.Select:
    """A query of the CSV text of a part's lines (CRLF between them) as UTF-8 bytes (a
    BLOB: read as it is, not decoded), and their count."""
    # A subquery ordered by ORDER BY is fed to an aggregate in that order (SQLite does not
    # flatten it), so the lines keep the rows' order.
    line = lines.subquery().c.line
    text = sa.cast(sa.func.group_concat(line, "\r\n"), sa.LargeBinary)
    return sa.select(text, sa.func.count())


def safe_row(row: Sequence[object]) -> list[object]:
    """The row's cells as spreadsheets may read them, formula injection defused."""
    return [
        "'" + cell if cell.__class__ is str and cell.startswith(_FORMULA_START) else cell
        for cell in row
    ]


#: Rows written per chunk of a CSV stream.
CSV_CHUNK_ROWS = 256

#: Says how many more rows have been written (a progress bar's ``update``).
Progress = Callable[[int], object]


def csv_lines(
    exporter: Exporter, progress: Progress = lambda rows: None, *, jobs: int = 1
) -> Iterator[bytes]:
    """The export as CSV, a chunk of lines at a time, encoded as UTF-8 with a BOM (for
    Excel). Lines end in CRLF, or in LF when PostgreSQL writes them; a cell holding either
    is quoted both ways. On SQLite, ``jobs`` processes write the parts of an exporter's
    lines side by side (see :func:`core.db.read_parts`). The database's text comes as it
    is written, bytes never decoded here."""
    text_query = exporter.text_query()
    copying = text_query is not None and is_postgresql()
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n" if copying else "\r\n")
    writer.writerow(safe_row([str(header) for header in exporter.headers]))
    yield ("\ufeff" + buffer.getvalue()).encode()
    if copying:
        for lines, rows in copy_csv(text_query):
            progress(rows)
            yield lines
        return
    if text_query is not None:
        lines_query, parts = exporter.line_parts()
        for [(lines, rows)] in read_parts(_sqlite_csv_part(lines_query), parts, jobs=jobs):
            if rows:
                progress(rows)
                yield lines
                yield b"\r\n"
        return
    buffer.seek(0)
    buffer.truncate()
    rows = map(safe_row, exporter.rows())
    while chunk := list(islice(rows, CSV_CHUNK_ROWS)):
        writer.writerows(chunk)
        progress(len(chunk))
        yield buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()


#: Rows of a workbook written between two calls of its progress.
XLSX_PROGRESS_ROWS = 1000


def write_xlsx(path: Path, *exporters: Exporter, progress: Progress = lambda rows: None) -> None:
    """The exports as sheets of one workbook, written row by row in constant memory, ready
    for an accountant: a bold header row that stays in view and filters, the exporters'
    column widths, decimal amounts as numbers with two decimals, date-times as date-time
    cells (the wall-clock times the exporter gives), then the exporter's footer rows."""
    workbook = xlsxwriter.Workbook(
        str(path), {"constant_memory": True, "strings_to_formulas": False}
    )
    money = workbook.add_format({"num_format": "0.00"})
    moment = workbook.add_format({"num_format": "yyyy-mm-dd hh:mm:ss"})
    bold = workbook.add_format({"bold": True})
    bold_money = workbook.add_format({"bold": True, "num_format": "0.00"})
    for exporter in exporters:
        sheet = workbook.add_worksheet(str(exporter.title)[:31])
        for column, width in enumerate(exporter.widths):
            sheet.set_column(column, column, width)
        headers = [str(header) for header in exporter.headers]
        sheet.write_row(0, 0, headers, bold)
        sheet.freeze_panes(1, 0)
        number = 0
        # Strings are written as string cells ("strings_to_formulas" off): nothing to defuse.
        for number, row in enumerate(exporter.rows(), start=1):
            for column, cell in enumerate(row):
                if isinstance(cell, Decimal):
                    sheet.write_number(number, column, float(cell), money)
                elif isinstance(cell, datetime):
                    sheet.write_datetime(number, column, cell, moment)
                elif cell is not None:
                    sheet.write(number, column, cell)
            if number % XLSX_PROGRESS_ROWS == 0:
                progress(XLSX_PROGRESS_ROWS)
        progress(number % XLSX_PROGRESS_ROWS)
        sheet.autofilter(0, 0, max(number, 1), len(headers) - 1)
        for offset, row in enumerate(exporter.footer(), start=number + 1):
            for column, cell in enumerate(row):
                if isinstance(cell, ColumnTotal):
                    sheet.write_formula(
                        offset,
                        column,
                        _sumifs(column, cell.criteria_column, number, cell.criteria),
                        bold_money,
                        float(cell.value),
                    )
                elif cell is not None:
                    sheet.write(offset, column, cell, bold)
    workbook.close()


def _sumifs(column: int, criteria_column: int, last_row: int, criteria: str) -> str:
    """``=SUMIFS(H2:H9,L2:L9,"CNY")``: ``column`` of rows 2 to ``last_row`` + 1 where
    ``criteria_column`` holds ``criteria``."""

    def span(index: int) -> str:
        return f"{xl_col_to_name(index)}2:{xl_col_to_name(index)}{max(last_row, 1) + 1}"

    return f'=SUMIFS({span(column)},{span(criteria_column)},"{criteria}")'
