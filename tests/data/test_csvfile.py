"""CSV rows with true line numbers, stray cells, repeated columns and missing-file listings;
spreadsheet-safe writing."""

import io

import pytest

from medpeft.data.csvfile import (
    SpreadsheetWriter,
    check_columns,
    plain_cell,
    raise_missing,
    read_csv_rows,
    spreadsheet_cell,
)
from medpeft.errors import DataError


def test_csv_rows_keep_true_line_numbers_and_reject_stray_cells(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text('image, label ,note\na.png,x,"two\nlines"\n\nb.png,y\n')
    header, rows = read_csv_rows(path)
    assert header == ["image", "label", "note"]
    assert [(line, row["image"], row["note"]) for line, row in rows] == [
        (2, "a.png", "two\nlines"), (5, "b.png", "")  # a short row's absent cells read as ""
    ]
    path.write_text("image,label\na.png,x,\nb.png,lung, clear\n")  # an empty extra cell is fine
    with pytest.raises(DataError, match=r"m\.csv line 3: 1 cell\(s\) beyond the header's 2"):
        read_csv_rows(path)
    path.write_text("image,label,,label,\na.png,x,,y,\n")  # blank names may repeat
    with pytest.raises(DataError, match=r"m\.csv: column name\(s\) \['label'\] appear more than once"):
        read_csv_rows(path)


def test_missing_columns_and_files_are_named():
    with pytest.raises(DataError, match=r"m\.csv: missing column\(s\) \['b'\]; the header has \['a'\]"):
        check_columns("m.csv", ["a"], ["a", "b"])
    raise_missing([], "m.csv")
    with pytest.raises(DataError, match=r"(?s)7 image file\(s\) of m\.csv not found.*f4.*and 2 more"):
        raise_missing([f"f{i}" for i in range(7)], "m.csv")


@pytest.mark.parametrize(
    ("value", "written"),
    [('=HYPERLINK("http://x","y")', '\'=HYPERLINK("http://x","y")'), ("+x", "'+x"), ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
     ("@SUM(A1)", "'@SUM(A1)"), ("\t=1", "'\t=1"), ("\r=1", "'\r=1"), ("'=1", "''=1"), ("'kept", "''kept"),
     ("-1", "-1"), ("+0.5", "+0.5"), ("-1.5e-3", "-1.5e-3"), ("normal", "normal"), ("", ""), (-0.25, -0.25)],
)
def test_text_a_spreadsheet_would_evaluate_is_escaped_and_read_back(value, written):
    assert spreadsheet_cell(value) == written
    if isinstance(value, str):
        assert plain_cell(written) == value


def test_the_spreadsheet_writer_escapes_every_text_cell_and_keeps_numbers():
    out = io.StringIO()
    SpreadsheetWriter(out, lineterminator="\n").writerows([["id", "=A1"], ["-2", -0.5]])
    assert out.getvalue() == "id,'=A1\n-2,-0.5\n"
