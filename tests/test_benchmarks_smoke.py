"""Smoke test of the benchmark driver (benchmarks/run.py): quick mode, one tiny
custom shape, clstm and the NumPy peer only, so it runs in seconds without torch,
TensorFlow or ONNX Runtime. The cell family (``--cell``): the peers' side (torch,
ONNX Runtime's GRU / LSTM with P and input_forget, the NumPy cells checked against
each other), and clstm's side once clstm has the cells."""

import inspect
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = os.path.join(ROOT, "benchmarks", "run.py")

pytestmark = pytest.mark.skipif(not os.path.exists(RUN), reason="benchmarks/ not present")

# quick, one tiny stacked shape (H = 6: proj_size 3), 1 thread, no probes
TINY = ["--quick", "--configs", "--shape", "tiny=3,6,2,6,2", "--threads", "1", "--no-extras",
        "--rounds", "2", "--round-time", "0.01", "--warmup-time", "0.01"]


def _run(out_dir, *args):
    proc = subprocess.run([sys.executable, RUN, *args, "--out-dir", str(out_dir)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return json.loads((out_dir / "results.json").read_text())


def _checks_passed(res, peers, tasks):
    """Every peer checked (against the run's reference) for the tasks, and passed."""
    got = {c["framework"]: c for c in res["checks"]}
    assert set(got) == set(peers), res["checks"]
    for f, c in got.items():
        assert c["passed"] and set(c["tasks"]) == set(tasks[f]), c
        assert c["errors"]["out_max_abs"] < 1e-4


def test_quick_run_writes_results(tmp_path):
    res = _run(tmp_path, "--quick", "--configs", "--shape", "tiny=3,6,2,5",
               "--frameworks", "clstm", "numpy", "--threads", "1", "--no-extras",
               "--rounds", "2", "--round-time", "0.01", "--warmup-time", "0.01")
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

    # a cell run into the same folder adds its section and keeps the LSTM's results
    doc = _run(tmp_path, *TINY, "--cell", "gru", "--frameworks", "numpy")
    assert doc["timings"] == res["timings"] and doc["ratios"] == res["ratios"]
    assert {t["framework"] for t in doc["cells"]["gru"]["timings"]} == {"numpy"}
    md = (tmp_path / "RESULTS.md").read_text()
    assert "tiny" in md and "## Cell: GRU" in md and "(`--cell gru`)" in md


def test_cell_peers_agree(tmp_path):
    """GRU: torch.nn.GRU, ONNX Runtime's GRU (linear_before_reset=1) and the NumPy GRU on the
    same weights; peephole / CIFG / both: ONNX Runtime's LSTM with P / input_forget=1 and the
    NumPy cells. clstm is left out (it is the reference once it has the cells)."""
    for mod in ("torch", "onnxruntime", "onnx"):
        pytest.importorskip(mod)
    variants = ["peephole", "cifg", "cifg-peephole"]
    doc = _run(tmp_path, *TINY, "--cell", "gru", *variants,
               "--frameworks", "torch", "onnxruntime", "numpy")
    assert "meta" not in doc and set(doc["cells"]) == {"gru", *variants}
    gru = doc["cells"]["gru"]
    _checks_passed(gru, ["onnxruntime", "numpy"],
                   {"onnxruntime": ["inference"], "numpy": ["inference", "training"]})
    assert {c["reference"] for c in gru["checks"]} == {"torch"}
    assert {(t["framework"], t["task"]) for t in gru["timings"]} == {
        ("torch", "inference"), ("torch", "training"), ("onnxruntime", "inference"),
        ("numpy", "inference"), ("numpy", "training")}
    for name in variants:
        res = doc["cells"][name]
        _checks_passed(res, ["onnxruntime"], {"onnxruntime": ["inference"]})
        assert {c["reference"] for c in res["checks"]} == {"numpy"}
        assert {t["framework"] for t in res["timings"]} == {"onnxruntime", "numpy"}
    md = (tmp_path / "RESULTS.md").read_text()
    for title in ("GRU", "LSTM with peepholes", "CIFG LSTM with peepholes"):
        assert f"## Cell: {title}" in md


def _clstm_cells():
    clstm = pytest.importorskip("clstm")
    if not hasattr(clstm, "GRU"):
        pytest.skip("clstm.GRU does not exist yet")
    accepted = inspect.signature(clstm.LSTM).parameters
    options = {"peephole": ["peephole"], "cifg": ["coupled_gates"],
               "cifg-peephole": ["peephole", "coupled_gates"], "proj": ["proj_size"],
               "layernorm": ["layer_norm"]}
    return ["gru"] + [c for c, kws in options.items() if all(k in accepted for k in kws)]


def test_clstm_cells(tmp_path):
    """clstm's cells against every peer installed (clstm is the reference); the LSTM
    variants' overhead over clstm's plain LSTM is measured."""
    cells = _clstm_cells()
    peers = ["numpy"] + [f for f in ("torch", "onnxruntime") if _importable(f)]
    doc = _run(tmp_path, *TINY, "--cell", *cells, "--frameworks", "clstm", *peers)
    for name in cells:
        res = doc["cells"][name]
        assert res["frameworks"]["clstm"]["available"], res["notes"]
        if name != "layernorm" and (name != "proj" or "torch" in peers):
            assert res["checks"], res["notes"]        # layernorm has no peer, proj only torch
        assert all(c["passed"] and "reference" not in c for c in res["checks"])
        ratios = {r["task"]: r for r in res["ratios"]}
        assert set(ratios) == {"inference", "training"}
        if name != "gru":
            for r in ratios.values():
                assert r["overhead"] == pytest.approx(r["clstm_ms"] / r["baseline_ms"])


def _importable(mod):
    try:
        __import__(mod)
        return True
    except ImportError:
        return False


@pytest.mark.parametrize("framework", ["clstm", "torch"])
def test_text_benchmark_workers_run(framework):
    """benchmarks/bench_text.py's workers on a tiny model: each returns its step
    times (the driver would record a worker's error as a note, not fail)."""
    if framework == "torch":
        pytest.importorskip("torch")
    script = os.path.join(ROOT, "benchmarks", "bench_text.py")
    proc = subprocess.run([sys.executable, script, "--worker", framework, "--threads", "1",
                           "--steps", "2", "--warmup", "1", "--vocab", "40", "--embed", "6",
                           "--hidden", "5", "--batch", "4", "--seq", "7"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert len(res["times"]) == 2 and all(t > 0 for t in res["times"])


def test_batch1_floor_measures_and_combines(tmp_path):
    """benchmarks/batch1_floor.py: its C timing program builds against the kernel
    headers and runs; the floors are the documented sums of what it measured."""
    import shutil
    if shutil.which(os.environ.get("CC", "gcc")) is None:
        pytest.skip("no C compiler")
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import batch1_floor
    finally:
        sys.path.pop(0)
    out = tmp_path / "floor.json"
    batch1_floor.main(["--I", "4", "--H", "32", "--T", "10", "--reps", "200",
                       "--results", str(tmp_path / "missing.json"), "--json", str(out)])
    res = json.loads(out.read_text())
    k, w = res["kernels_us"], res["weight_gradient_us"]
    for name in ("forward_us", "forward_half_us", "recurrent_us", "recurrent_half_us",
                 "projection_us", "backward_us", "backward_half_us", "team_step_us"):
        assert 0 < k[name] < 1e4, (name, k[name])
    assert 0 < w < 1e5
    (cell_inf, cell_train), opt = res["cell_ms"], res["adam_us"]
    assert cell_inf >= 0 and cell_train >= 0 and 0 < opt < 1e4   # (timing differences: no order)
    floors = {(r["task"], r["threads"]): r["floor_ms"] for r in res["floors"]}
    # a step's forward is the whole [x | h] product or, hoisted, the recurrent
    # product plus a T-th of the input projection: whichever the run measured less
    proj = k["projection_us"] / 10
    fwd1 = min(k["forward_us"], k["recurrent_us"] + proj)
    fwd2 = min(fwd1, min(k["forward_half_us"], k["recurrent_half_us"] + proj / 2)
               + k["team_step_us"])
    bwd2 = min(k["backward_us"], k["backward_half_us"] + k["team_step_us"])
    assert floors[("inference", 1)] == pytest.approx(10 * fwd1 / 1e3 + cell_inf)
    assert floors[("inference", 2)] == pytest.approx(10 * fwd2 / 1e3 + cell_inf / 2)
    assert floors[("training", 1)] == pytest.approx(
        (10 * (fwd1 + k["backward_us"]) + w + opt) / 1e3 + cell_train)
    assert floors[("training", 2)] == pytest.approx(
        (10 * (fwd2 + bwd2) + (w + opt) / 2) / 1e3 + cell_train / 2)


def test_core_peak_uses_the_measured_clock():
    """run.py's clock: measured by a chain of dependent adds where a compiler is at
    hand (a plausible clock, or None), recorded with its source; the core's peak is
    FMA units x floats a vector x 2 x that clock, with the fewest units that make the
    best GEMM possible."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import run
    finally:
        sys.path.pop(0)
    mhz = run.measured_clock_mhz()
    assert mhz is None or 100 < mhz < 10_000, mhz
    clock = run._clock({"CPU MHz": "2596.1"})
    assert clock["mhz_lscpu"] == 2596.1
    assert clock["clock_source"] == ("lscpu" if mhz is None else "measured")
    machine = {"flags_avx512f": True, "mhz": 3600.0}
    peak = run.core_peak(machine, {"scipy": {"gflops_best": 104.6}}, 1)
    assert peak["fma_units"] == 1 and peak["peak_gflops"] == pytest.approx(16 * 2 * 3.6)
    peak2 = run.core_peak(machine, {"scipy": {"gflops_best": 150.0}}, 1)      # needs two
    assert peak2["fma_units"] == 2 and peak2["best_gemm_share"] == pytest.approx(150 / 230.4)


def test_post_step_check_allows_adam_epsilon_placement_only():
    """run.compare after one Adam step: torch's formula (eps after sqrt(v_hat)) and
    Keras's / clstm's (eps after sqrt(v), bias correction in the step size) differ
    only where |g| is within ~1e3 eps, also in a tensor of small gradients (a
    peephole's); a wrong step (here: the sign of one entry in ten flipped) fails."""
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import run
        from common import BETA1, BETA2, EPS, LR
    finally:
        sys.path.pop(0)
    rng = np.random.default_rng(0)
    g = (rng.standard_normal(400) * 3e-5).astype(np.float32)   # small, as a peephole's,
    g[:40] = rng.choice([-1, 1], 40) * rng.uniform(1.2e-7, 2.5e-7, 40)    # some near eps
    p0 = rng.standard_normal(400).astype(np.float32)
    m, v = (1 - BETA1) * g, (1 - BETA2) * g * g
    torch_step = p0 - LR * (m / (1 - BETA1)) / (np.sqrt(v / (1 - BETA2)) + EPS)
    keras_step = p0 - LR * np.sqrt(1 - BETA2) / (1 - BETA1) * m / (np.sqrt(v) + EPS)
    ref = {"loss": np.float64(1.0), "grad/w": g, "post/w": keras_step.astype(np.float32)}
    ok = run.compare(ref, {"loss": np.float64(1.0), "grad/w": g,
                           "post/w": torch_step.astype(np.float32)}, "peer", ["training"])
    assert ok["passed"], ok["failures"]
    off = np.abs(torch_step - keras_step) > LR / 2                   # the formulas do differ,
    assert np.mean(off[np.abs(g) > 1e-3 * np.abs(g).max()]) > 0.01     # also past 1e-3 of the max
    wrong = keras_step.copy()
    wrong[::10] = p0[::10] + (p0[::10] - keras_step[::10])           # a step the wrong way
    bad = run.compare(ref, {"loss": np.float64(1.0), "grad/w": g, "post/w": wrong}, "peer",
                      ["training"])
    assert not bad["passed"] and "after one Adam step" in bad["failures"][0]


def _import_bounds():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import bounds
    finally:
        sys.path.pop(0)
    return bounds


@pytest.mark.parametrize("name", ["ts-small", "stacked", "stream"])
def test_task_gemms_count_the_configs_flops(name):
    """bounds.task_gemms: the inference's GEMMs are Config.forward_flops; the
    training's add the products back through W_hh, the weight gradients and
    the input gradients of the layers above the first, as the workers
    compute them (their inputs need none). Each part's ways do the same
    work; at two threads a thread's share is half of it (rows, or at batch 1
    the gate columns)."""
    bounds = _import_bounds()
    from common import CONFIGS
    cfg = CONFIGS[name]

    def flops(way):
        return sum(2 * n * M * K * N for n, M, K, N, _ in way)

    for training in (False, True):
        total = {1: 0, 2: 0}
        for threads in (1, 2):
            for part in bounds.task_gemms(cfg, training, threads):
                assert len({flops(way) for way in part}) == 1
                total[threads] += flops(part[0])
        expected = cfg.forward_flops() if not training else (
            3 * cfg.forward_flops() - 2 * cfg.T * cfg.B * 4 * cfg.H * cfg.I)
        assert total[1] == expected
        assert total[2] * 2 == expected


def test_shape_gemm_floor_takes_the_fastest_kernel_and_way():
    """bounds.shape_gemm_ms: each product's time is the least of its
    kernels', counted as often as the task runs it, each part by its faster
    way."""
    bounds = _import_bounds()
    from common import Config
    cfg = Config("tiny", 4, 3, 2, 8)
    ms, detail = bounds.shape_gemm_ms(cfg, training=True)
    chosen = [(g["count"], g["shape"], g["kind"]) for g in detail]
    ways = [[(n, (M, K, N), kind) for n, M, K, N, kind in way]
            for part in bounds.task_gemms(cfg, True) for way in part]
    assert chosen in ([*ways[0], *ways[2]], [*ways[1], *ways[2]])
    assert {"clstm", "numpy"} <= set(detail[0]["us"])
    for g in detail:
        assert g["us"][g["best"]] == min(g["us"].values())
    assert ms == pytest.approx(sum(g["count"] * g["us"][g["best"]] for g in detail) / 1e3)
