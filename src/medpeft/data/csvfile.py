"""CSV reading with true line numbers, the error listing missing files, and spreadsheet-safe writing.

Manifests and dataset recipes read their tables with `read_csv_rows`; problems
raise `DataError` naming the file and line.

Every CSV medpeft writes for people (predictions, scores, missing tables, run logs)
goes through `SpreadsheetWriter`: a text cell that Excel or LibreOffice would
evaluate as a formula (it starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
return, as OWASP lists; a number such as ``-1`` or ``+0.5`` aside) is written with a
leading ``'``. medpeft reads its own files back through `plain_cell`, which
restores the original text.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from medpeft.errors import DataError

MAX_LISTED = 5
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
ESCAPE = "'"
_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")

Rows = list[tuple[int, dict[str, str]]]  # (line number, column -> cell)


def _parse(path: Path, delimiter: str) -> tuple[list[str], Rows]:
    rows = []
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = [h.strip() for h in next(reader, [])]
        repeated = sorted({h for h in header if h and header.count(h) > 1})
        if repeated:
            raise DataError(f"{path}: column name(s) {repeated} appear more than once")
        start = reader.line_num + 1
        for cells in reader:
            line, start = start, reader.line_num + 1
            if not cells:
                continue
            extra = [c for c in cells[len(header):] if c.strip()]
            if extra:
                raise DataError(
                    f"{path} line {line}: {len(extra)} cell(s) beyond the header's "
                    f"{len(header)} columns: {extra[:MAX_LISTED]} (quote cells holding "
                    f"{delimiter!r})"
                )
            cells += [""] * (len(header) - len(cells))
            rows.append((line, dict(zip(header, cells))))
    return header, rows


def read_csv_rows(path: str | Path, delimiter: str = ",") -> tuple[list[str], Rows]:
    """Header (names stripped) and ``(line number, row)`` pairs of a CSV file.

    The line number is where the row starts (a quoted cell may span lines);
    blank lines are skipped and a short row's absent cells read as ``""``.
    DataError naming the file (and line) if it is absent, has no header or no
    rows, repeats a column name, or a row has filled cells beyond the header's
    columns (a delimiter inside an unquoted cell?), or is not UTF-8.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"manifest not found: {path}")
    try:
        header, rows = _parse(path, delimiter)
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path}: not UTF-8 text (byte {error.start}: {error.reason}); save the manifest as "
            "UTF-8 (e.g. from Excel: CSV UTF-8)"
        ) from error
    if not header or not rows:
        raise DataError(f"{path}: empty manifest (no header line or no rows)")
    return header, rows


def check_columns(path: str | Path, header: Sequence[str], needed: Sequence[str]) -> None:
    """Raise DataError naming the file if any ``needed`` column is not in ``header``."""
    absent = [c for c in needed if c not in header]
    if absent:
        raise DataError(f"{path}: missing column(s) {absent}; the header has {list(header)}")


def raise_missing(missing: Sequence[str], what: str) -> None:
    """Raise DataError listing the first few missing files (with their rows), if any."""
    if missing:
        shown = "\n  ".join(missing[:MAX_LISTED])
        more = f"\n  ... and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
        raise DataError(f"{len(missing)} image file(s) of {what} not found:\n  {shown}{more}")


def spreadsheet_cell(value: Any) -> Any:
    """``value``, with a leading ``'`` when it is text a spreadsheet would evaluate (or text
    starting with ``'`` itself, so that `plain_cell` is exact); numbers are left alone."""
    if isinstance(value, str) and value.startswith((*FORMULA_STARTS, ESCAPE)) and not _NUMBER.fullmatch(value):
        return ESCAPE + value
    return value


def plain_cell(text: str) -> str:
    """The original text of a cell written through `spreadsheet_cell`."""
    if text.startswith(ESCAPE) and spreadsheet_cell(text[1:]) != text[1:]:
        return text[1:]
    return text


class SpreadsheetWriter:
    """A ``csv.writer`` whose cells go through `spreadsheet_cell` (same options)."""

    def __init__(self, out: TextIO, **options: Any) -> None:
        self._writer = csv.writer(out, **options)

    def writerow(self, cells: Iterable[Any]) -> None:
        self._writer.writerow([spreadsheet_cell(cell) for cell in cells])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)
