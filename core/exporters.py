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


def safe_cell(value: object) -> object:
    """A cell as spreadsheets may read it, formula injection defused."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def csv_lines(exporter: Exporter) -> Iterator[str]:
    """The export as CSV text, one line at a time (UTF-8 with a BOM, for Excel)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    yield "\ufeff"
    for row in _with_headers(exporter):
        writer.writerow([safe_cell(cell) for cell in row])
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()


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
            for column, cell in enumerate(row):
                if isinstance(cell, Decimal):
                    sheet.write_number(number, column, float(cell), money)
                elif cell is None:
                    continue
                else:
                    sheet.write(number, column, safe_cell(cell))
    workbook.close()
