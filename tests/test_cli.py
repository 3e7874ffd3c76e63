"""The command line (``python -m skcrnn fit``): paths checked first, date strings, one-line errors."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from skcrnn import CollaborativeGRURecommender
from skcrnn._cli import fit as fit_command
from skcrnn._cli import main

TINY = ["--set", "hidden_size=2", "--set", "max_epochs=1", "--set", "device='cpu'",
        "--set", "random_state=0"]


def write_events(path, times):
    users = ["u1", "u1", "u2", "u2", "u1", "u2"][:len(times)]
    items = ["a", "b", "a", "c", "c", "b"][:len(times)]
    pd.DataFrame({"user": users, "item": items, "timestamp": times}).to_csv(
        path, index=False)
    return path


def run_main(argv, capsys):
    """``main(argv)``'s exit status and what it printed on stderr."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    return exit_info.value.code, capsys.readouterr().err


def test_an_unwritable_output_is_refused_before_the_data_is_read(tmp_path, capsys,
                                                                 monkeypatch):
    """Issue 24, item 7: the whole run was lost to an unwritable --output."""
    data = write_events(tmp_path / "events.csv", [1, 2, 3, 4])
    monkeypatch.setattr(fit_command, "load_events", lambda args: pytest.fail(
        "the events were read before the output was checked"))
    code, err = run_main(["fit", "--data", str(data), "--output",
                          str(tmp_path / "missing" / "model.skcrnn")], capsys)
    assert code == 2
    assert "does not exist" in err and "missing" in err


@pytest.mark.parametrize("problem, argv_tail, message", [
    ("no data file", ["--data", "{tmp}/nowhere.csv"], "no such file"),
    ("bad parameter", ["--data", "{data}", "--set", "max_epochs=-1"], "max_epochs"),
    ("bad --set", ["--data", "{data}", "--set", "hidden_size"], "NAME=VALUE"),
    ("unknown parameter", ["--data", "{data}", "--set", "colour=1"], "colour"),
])
def test_user_errors_are_one_line_and_status_2(tmp_path, capsys, problem, argv_tail,
                                               message):
    data = write_events(tmp_path / "events.csv", [1, 2, 3, 4])
    argv = ["fit", *[arg.format(tmp=tmp_path, data=data) for arg in argv_tail],
            "--output", str(tmp_path / "model.skcrnn")]
    code, err = run_main(argv, capsys)
    assert code == 2
    assert err.startswith("skcrnn fit: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "model.skcrnn").exists()


def test_no_traceback_from_a_real_process(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "skcrnn", "fit", "--data", str(tmp_path / "no.csv"),
         "--output", str(tmp_path / "model.skcrnn")],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"skcrnn fit: error: --data {tmp_path / 'no.csv'}: no such file."]


def test_iso_date_strings_are_read(tmp_path, capsys):
    """Issue 24, item 8: date strings could not be read at all."""
    times = ["2021-01-01T10:00:00Z", "2021-01-02 09:00", "2021-01-01T11:00:00+01:00",
             "2021-01-03", "2021-01-05", "2021-01-04"]
    data = write_events(tmp_path / "events.csv", times)
    assert main(["fit", "--data", str(data), *TINY, "--output",
                 str(tmp_path / "model.skcrnn")]) == 0
    model = CollaborativeGRURecommender.load(tmp_path / "model.skcrnn")
    expected = pd.read_csv(data).assign(
        timestamp=lambda frame: pd.to_datetime(frame["timestamp"], format="ISO8601",
                                               utc=True))
    reference = CollaborativeGRURecommender(hidden_size=2, max_epochs=1, device="cpu",
                                            random_state=0).fit(expected)
    np.testing.assert_array_equal(model.score_samples(expected),
                                  reference.score_samples(expected))


def test_time_format_reads_other_layouts(tmp_path, capsys):
    times = ["01/02/2021 10:00", "03/02/2021 10:00", "03/02/2021 10:00",
             "04/02/2021 10:00"]
    data = write_events(tmp_path / "events.csv", times)
    code, err = run_main(["fit", "--data", str(data), *TINY, "--output",
                          str(tmp_path / "model.skcrnn")], capsys)
    assert code == 2 and "--time-format" in err and "'01/02/2021 10:00'" in err
    assert main(["fit", "--data", str(data), "--time-format", "%d/%m/%Y %H:%M",
                 *TINY, "--output", str(tmp_path / "model.skcrnn")]) == 0
    model = CollaborativeGRURecommender.load(tmp_path / "model.skcrnn")
    assert model.n_users_ == 2 and model.n_items_ == 3
    code, err = run_main(["fit", "--data", str(data), "--time-format", "%Y-%m-%d",
                          *TINY, "--output", str(tmp_path / "other.skcrnn")], capsys)
    assert code == 2 and "'%Y-%m-%d'" in err


def test_numeric_times_are_left_as_they_are(tmp_path):
    data = write_events(tmp_path / "events.csv", [1, 2, 3, 4])
    assert main(["fit", "--data", str(data), *TINY, "--output",
                 str(tmp_path / "model.skcrnn")]) == 0
