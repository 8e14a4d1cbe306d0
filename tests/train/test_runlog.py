"""Run logs: ``metrics.csv`` is safe to open in a spreadsheet and reads back unchanged."""

from medpeft.reports.page import read_history
from medpeft.train.runlog import write_csv


def test_metrics_csv_escapes_text_a_spreadsheet_would_evaluate_and_reads_back(tmp_path):
    rows = [{"epoch": 0, "loss": -0.5}, {"epoch": 1, "@auc": 0.75, "note": "=1+1"}]
    log = write_csv(tmp_path / "metrics.csv", rows)
    assert log.read_text() == "epoch,loss,'@auc,note\n0,-0.5,,\n1,,0.75,'=1+1\n"
    assert read_history(log) == [{"epoch": 0.0, "loss": -0.5}, {"epoch": 1.0, "@auc": 0.75}]
