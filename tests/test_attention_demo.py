"""python -m clstm.demo_attention: both parts run, report what they computed and
write the attention weights (a heat map, or CSV without matplotlib)."""

import os
import subprocess
import sys
from contextlib import redirect_stdout
from io import StringIO

import numpy as np
import pytest

import clstm
from clstm import demo_attention
from clstm.datasets import load_elnino

SMALL = ["--epochs", "2", "--steps", "20", "--n-train", "64", "--hidden-size", "4",
         "--forecast-epochs", "1"]


def _run(argv, cwd, monkeypatch):
    buffer = StringIO()
    monkeypatch.chdir(cwd)
    with redirect_stdout(buffer):
        results = demo_attention.main(argv)
    return results, buffer.getvalue()


def test_marked_part_without_matplotlib_writes_csv(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)       # import fails
    results, out = _run(["marked"] + SMALL, tmp_path, monkeypatch)
    assert set(results) == {"marked"}
    marked = results["marked"]
    assert set(marked["accuracy"]) == {"last_state", "additive", "dot"}
    assert all(0 <= v <= 1 for v in marked["accuracy"].values())
    assert set(marked["on_mark"]) == {"additive", "dot"}
    csv = tmp_path / "attention_weights.csv"
    assert marked["weights_file"] == str(csv.resolve())
    assert "matplotlib is not installed" in out and str(csv.resolve()) in out
    table = np.loadtxt(csv, delimiter=",", skiprows=1)
    assert table.shape == (20, 1 + 20)
    _, _, marks = demo_attention.marked_step_task(512, 20, seed=1)
    np.testing.assert_array_equal(table[:, 0], marks[:20])
    np.testing.assert_allclose(table[:, 1:].sum(axis=1), 1.0, atol=1e-4)


def test_marked_part_with_matplotlib_writes_a_png(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    results, out = _run(["marked", "--plot", "w.png"] + SMALL, tmp_path, monkeypatch)
    assert (tmp_path / "w.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert results["marked"]["weights_file"] == str((tmp_path / "w.png").resolve())


def test_forecast_part_reports_rmse_per_horizon_step(tmp_path, monkeypatch):
    results, out = _run(["forecast", "--no-plot"] + SMALL, tmp_path, monkeypatch)
    rmse = results["forecast"]["rmse"]
    assert set(rmse) == {"seq2seq + attention", "seq2seq, no attention",
                         "direct (LSTMRegressor)", "seasonal naive (lag 12)"}
    assert all(len(v) == 6 and np.all(np.isfinite(v)) for v in rmse.values())
    # the baseline, by hand: the same month a year earlier, over the test windows
    sst = load_elnino().data
    split = len(sst) - 120
    first = np.arange(24, len(sst) - 5)
    first = first[first >= split]
    targets = first[:, None] + np.arange(6)
    expected = np.sqrt(np.mean((sst[targets - 12] - sst[targets]) ** 2, axis=0))
    np.testing.assert_allclose(rmse["seasonal naive (lag 12)"], expected, rtol=1e-12)
    assert "seasonal naive (lag 12)" in out and "months ahead" in out


def test_bad_arguments_exit_with_usage(capsys):
    with pytest.raises(SystemExit):
        demo_attention.main(["--epochs", "0"])
    assert "--epochs must be >= 1" in capsys.readouterr().err


def test_runs_as_module(tmp_path):
    # the clstm under test, also when it is not the installed one
    src = os.path.dirname(os.path.dirname(os.path.abspath(clstm.__file__)))
    env = {**os.environ, "PYTHONPATH": src}
    done = subprocess.run([sys.executable, "-m", "clstm.demo_attention", "--help"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120, env=env)
    assert done.returncode == 0 and "marked" in done.stdout and "forecast" in done.stdout
