"""Exporters: classes that yield rows, written out as CSV (streamed) or XLSX (written
row by row with XlsxWriter's constant-memory mode). One base for every export.

CSV cells that a spreadsheet would read as a formula (starting with = + - @, a tab or a
carriage return) are prefixed with an apostrophe: an exported nickname never runs. An
exporter whose query does that itself (:func:`defused`) says so, and its rows are written
as they come.
"""

from __future__ import annotations

import csv
import io
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from decimal import Decimal
from itertools import islice
from pathlib import Path

import sqlalchemy as sa
import xlsxwriter

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class Exporter(ABC):
    """A table: a title, its column headers, and its rows (generated, never all held)."""

    title: str
    headers: Sequence[str]
    #: Whether every text cell ``rows()`` yields comes defused from the query.
    defused_in_query: bool = False

    @abstractmethod
    def rows(self) -> Iterator[Sequence[object]]: ...


def defused(column: sa.ColumnElement[str]) -> sa.ColumnElement[str]:
    """SQL for ``column``'s text with formula injection defused as :func:`safe_row` does,
    for exports of millions of rows, where checking each cell in Python would cost more
    than reading it."""
    return sa.case(
        (sa.func.substr(column, 1, 1).in_(_FORMULA_START), sa.literal("'") + column),
        else_=column,
    )


def safe_row(row: Sequence[object]) -> list[object]:
    """The row's cells as spreadsheets may read them, formula injection defused."""
    return [
        "'" + cell if cell.__class__ is str and cell.startswith(_FORMULA_START) else cell
        for cell in row
    ]


#: Rows written per chunk of a CSV stream.
CSV_CHUNK_ROWS = 256


def csv_lines(exporter: Exporter) -> Iterator[str]:
    """The export as CSV text, a chunk of lines at a time (UTF-8 with a BOM, for Excel)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    yield "\ufeff"
    writer.writerow(safe_row(exporter.headers))
    rows = exporter.rows() if exporter.defused_in_query else map(safe_row, exporter.rows())
    while chunk := list(islice(rows, CSV_CHUNK_ROWS)):
        writer.writerows(chunk)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()


def write_xlsx(path: Path, *exporters: Exporter) -> None:
    """The exports as sheets of one workbook, written row by row in constant memory.
    Decimal amounts become numbers shown with two decimals."""
    workbook = xlsxwriter.Workbook(
        str(path), {"constant_memory": True, "strings_to_formulas": False}
    )
    money = workbook.add_format({"num_format": "0.00"})
    bold = workbook.add_format({"bold": True})
    for exporter in exporters:
        sheet = workbook.add_worksheet(exporter.title[:31])
        sheet.write_row(0, 0, exporter.headers, bold)
        rows = exporter.rows() if exporter.defused_in_query else map(safe_row, exporter.rows())
        for number, row in enumerate(rows, start=1):
            for column, cell in enumerate(row):
                if isinstance(cell, Decimal):
                    sheet.write_number(number, column, float(cell), money)
                elif cell is not None:
                    sheet.write(number, column, cell)
    workbook.close()
