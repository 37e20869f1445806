"""python -m clstm.demo: runs, reports honest metrics, beats the naive forecasts, plots."""

import re
import subprocess
import sys
from contextlib import redirect_stdout
from io import StringIO

import numpy as np
import pytest

from clstm import demo
from clstm.datasets import load_elnino

FAST = ["--epochs", "15", "--seed", "0"]


def _table(out):
    """{name: (rmse, mae)} parsed from the printed table."""
    rows = re.findall(r"^  (\S.*?)\s+(\d+\.\d{3})\s+(\d+\.\d{3})$", out, flags=re.M)
    return {name: (float(rmse), float(mae)) for name, rmse, mae in rows}


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """One run of the demo with few epochs, plot to the default file in a temp dir."""
    cwd = tmp_path_factory.mktemp("demo")
    buffer = StringIO()
    with pytest.MonkeyPatch.context() as mp, redirect_stdout(buffer):
        mp.chdir(cwd)
        results = demo.main(FAST)
    return results, buffer.getvalue(), cwd


def test_prints_metrics_and_training_time(default_run):
    results, out, _ = default_run
    table = _table(out)
    assert set(table) == {"LSTM", "last value (naive)", "seasonal naive (lag 12)"}
    assert table["LSTM"] == pytest.approx(
        (results["lstm"]["rmse"], results["lstm"]["mae"]), abs=6e-4)
    assert re.search(r"^training time: \d+\.\d s$", out, flags=re.M)
    assert "2001-01 to 2010-12 (120 months" in out
    assert results["n_test"] == 120 and results["n_train"] == 588
    assert results["train_seconds"] > 0


def test_lstm_beats_naive_forecasts(default_run):
    results, _, _ = default_run
    lstm = results["lstm"]["rmse"]
    # about 0.50 against 1.18 and 1.19 degrees C
    assert lstm < 0.7 * results["last_value"]["rmse"]
    assert lstm < 0.7 * results["seasonal_naive"]["rmse"]
    assert results["lstm"]["mae"] < 0.7 * results["last_value"]["mae"]


def test_baselines_are_the_naive_forecasts_of_the_last_120_months(default_run):
    results, _, _ = default_run
    sst = load_elnino().data
    t = np.arange(len(sst) - 120, len(sst))
    for key, lag in [("last_value", 1), ("seasonal_naive", 12)]:
        err = sst[t] - sst[t - lag]
        assert results[key]["rmse"] == pytest.approx(np.sqrt(np.mean(err**2)))
        assert results[key]["mae"] == pytest.approx(np.mean(np.abs(err)))


def test_writes_png_to_default_path(default_run):
    pytest.importorskip("matplotlib")
    results, out, cwd = default_run
    path = cwd / demo.DEFAULT_PLOT
    assert results["plot"] == str(path.resolve())
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot: {path.resolve()}" in out


def test_quiet_no_plot_and_seed_reproducible(tmp_path, monkeypatch, capsys, default_run):
    monkeypatch.chdir(tmp_path)
    results = demo.main(FAST + ["--quiet", "--no-plot"])
    out = capsys.readouterr().out
    assert results["plot"] is None and not list(tmp_path.iterdir())
    assert "LSTM" in _table(out) and "training time" in out
    assert "clstm demo" not in out and "plot" not in out
    assert results["lstm"] == default_run[0]["lstm"]  # same seed, same numbers


def test_plot_path_option(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    target = tmp_path / "sub" / "forecast.png"
    target.parent.mkdir()
    monkeypatch.setattr(demo, "_build_model", _tiny_model)
    results = demo.main(["--epochs", "1", "--plot", str(target)])
    assert target.exists() and results["plot"] == str(target.resolve())


def test_without_matplotlib_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setattr(demo, "_build_model", _tiny_model)
    results = demo.main(["--epochs", "1"])
    out = capsys.readouterr().out
    assert results["plot"] is None and not list(tmp_path.iterdir())
    assert "pip install matplotlib" in out
    assert f'pip install "{demo.DIST_NAME}[demo]"' in out


@pytest.mark.parametrize("argv", [["--epochs", "0"], ["--epochs", "x"], ["--bogus"]])
def test_bad_arguments_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        demo.main(argv)
    assert exc.value.code == 2
    assert "usage: python -m clstm.demo" in capsys.readouterr().err


def test_runs_as_module(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "clstm.demo", "--help"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert "--epochs" in proc.stdout and "--no-plot" in proc.stdout


def _tiny_model(epochs, seed, verbose):
    from clstm import LSTMRegressor

    return LSTMRegressor(hidden_size=4, max_iter=epochs, random_state=seed)
