"""Exporters: classes that yield rows, written out as CSV (streamed) or XLSX (written
row by row with XlsxWriter's constant-memory mode). One base for every export.

CSV cells that a spreadsheet would read as a formula (starting with = + - @, a tab or a
carriage return) are prefixed with an apostrophe: an exported nickname never runs.
"""

from __future__ import annotations

import csv
import io
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path

import xlsxwriter

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


class Exporter(ABC):
    """A table: a title, its column headers, and its rows (generated, never all held)."""

    title: str
    headers: Sequence[str]

    @abstractmethod
    def rows(self) -> Iterator[list[object]]: ...


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
    for number, row in enumerate(_with_headers(exporter), start=1):
        writer.writerow(safe_row(row))
        if number % CSV_CHUNK_ROWS == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


def _with_headers(exporter: Exporter) -> Iterable[Sequence[object]]:
    yield exporter.headers
    yield from exporter.rows()


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
        for number, row in enumerate(exporter.rows(), start=1):
            for column, cell in enumerate(safe_row(row)):
                if isinstance(cell, Decimal):
                    sheet.write_number(number, column, float(cell), money)
                elif cell is not None:
                    sheet.write(number, column, cell)
    workbook.close()
