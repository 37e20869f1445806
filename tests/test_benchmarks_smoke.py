"""Smoke test of the benchmark driver (benchmarks/run.py): quick mode, one tiny
custom shape, clstm and the NumPy peer only, so it runs in seconds without torch,
TensorFlow or ONNX Runtime."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "benchmarks", "run.py")

pytestmark = pytest.mark.skipif(not os.path.exists(RUN), reason="benchmarks/ not present")


def test_quick_run_writes_results(tmp_path):
    cmd = [sys.executable, RUN, "--quick", "--configs", "--shape", "tiny=3,6,2,5",
           "--frameworks", "clstm", "numpy", "--threads", "1", "--no-extras",
           "--rounds", "2", "--round-time", "0.01", "--warmup-time", "0.01",
           "--out-dir", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]

    res = json.loads((tmp_path / "results.json").read_text())
    for key in ("meta", "frameworks", "checks", "timings", "ratios", "notes"):
        assert key in res
    assert res["meta"]["quick"] is True
    assert res["meta"]["configs"] == [{"name": "tiny", "B": 3, "T": 6, "I": 2, "H": 5, "L": 1}]
    assert res["frameworks"]["clstm"]["available"] and res["frameworks"]["numpy"]["available"]

    # the correctness check ran for both tasks and passed
    (check,) = res["checks"]
    assert check["framework"] == "numpy" and check["passed"], check
    assert set(check["tasks"]) == {"inference", "training"}
    assert check["errors"]["out_max_abs"] < 1e-4
    assert check["errors"]["grad_rel_max"] < 1e-3

    timings = {(t["framework"], t["task"]): t for t in res["timings"]}
    assert set(timings) == {(f, t) for f in ("clstm", "numpy") for t in ("inference", "training")}
    for t in timings.values():
        assert t["threads"] == 1 and t["n"] >= 2
        assert 0 < t["min_ms"] <= t["median_ms"] and t["gflops"] > 0

    ratios = {r["task"]: r for r in res["ratios"]}
    assert set(ratios) == {"inference", "training"}
    for task, r in ratios.items():
        assert r["best_peer"] == "numpy"
        assert r["ratio"] == pytest.approx(timings[("numpy", task)]["median_ms"]
                                           / timings[("clstm", task)]["median_ms"])

    md = (tmp_path / "RESULTS.md").read_text()
    assert "tiny" in md and "Quick" in md
