"""The compiled streaming step (clstm._stream) against the whole-sequence forward.

Oracle: ``forward`` over the whole sequence from the same initial states (itself
tested against the NumPy reference cells). The step computes the same cell math
in the same order, but its products run as BLAS GEMV/GEMM on the live weights
while the whole-sequence float32 forward uses the packed small-GEMM kernel and
a whole-sequence input projection: the summation order of the dot products
differs, so the results agree to float rounding (float64 ~1e-15, float32
~1e-7), not bit for bit. The fast path against itself (threads, repeated
calls) is bit-identical: same code, same order.
"""

import copy
import pickle
import threading

import numpy as np
import pytest

import clstm
from clstm import _stream

I, H, T = 4, 6, 5
TOL = {"float64": dict(rtol=1e-12, atol=1e-13), "float32": dict(rtol=2e-5, atol=2e-6)}
CELLS = {
    "lstm": lambda **kw: clstm.LSTM(I, H, **kw),
    "peephole": lambda **kw: clstm.LSTM(I, H, peephole=True, **kw),
    "coupled_gates": lambda **kw: clstm.LSTM(I, H, coupled_gates=True, peephole=True, **kw),
    "proj_size": lambda **kw: clstm.LSTM(I, H, proj_size=3, **kw),
    "layer_norm": lambda **kw: clstm.LSTM(I, H, layer_norm=True, **kw),
    "gru": lambda **kw: clstm.GRU(I, H, **kw),
    "stacked_lstm": lambda **kw: clstm.LSTM(I, H, num_layers=2, proj_size=4, **kw),
    "stacked_gru": lambda **kw: clstm.GRU(I, H, num_layers=2, **kw),
}


def _net(cell, dtype, seed=0):
    net = CELLS[cell](dtype=dtype, random_state=seed)
    rng = np.random.default_rng(seed + 1)
    # parameters away from torch's small init, so every term matters
    net.load_state_dict({k: v + rng.normal(scale=0.3, size=v.shape)
                         if not k.startswith(("weight_ln", "bias_ln")) else
                         v + rng.normal(scale=0.1, size=v.shape)
                         for k, v in net.state_dict().items()})
    return net


def _initial_state(net, batch, rng):
    sizes = net._state_sizes()
    return tuple(rng.normal(size=(net.num_layers, batch, sizes[name])).astype(net.dtype)
                 for name in net.state_names)


def _forward(net, X, state):
    out, final = net.run(X, state, keep_cache=False)
    return out, final


class _CountingGeneral:
    """Counts calls of the network's general step path (the fast path's fallback)."""

    def __init__(self, net):
        self.calls = 0
        self._general = net._step_general
        net._step_general = self

    def __call__(self, x_t, state):
        self.calls += 1
        return self._general(x_t, state)


def _stepped(net, X, state):
    ys = []
    for t in range(X.shape[1]):
        y, state = net.step(np.ascontiguousarray(X[:, t]), state)
        ys.append(y)
    return np.stack(ys, axis=1), state


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_fast_step_equals_the_whole_sequence(cell, batch, dtype):
    rng = np.random.default_rng(3)
    net = _net(cell, dtype)
    X = rng.normal(size=(batch, T, I)).astype(dtype)
    state0 = _initial_state(net, batch, rng)
    out, final = _forward(net, X, state0)
    counter = _CountingGeneral(net)
    y, state = _stepped(net, X, state0)
    # the first call converts, validates and prepares the plan; every later
    # one goes straight to the compiled step
    assert counter.calls == 1
    np.testing.assert_allclose(y, out, **TOL[dtype])
    for got, want in zip(state, final):
        assert got.dtype == np.dtype(dtype) and got.flags.c_contiguous
        np.testing.assert_allclose(got, want, **TOL[dtype])
    # from the zero state too (state=None in C)
    y0, _ = net.step(np.ascontiguousarray(X[:, 0]))
    np.testing.assert_allclose(y0, _forward(net, X[:, :1], None)[0][:, 0], **TOL[dtype])
    assert counter.calls == 1


@pytest.mark.parametrize("cell", ["lstm", "gru", "stacked_lstm"])
def test_fast_step_equals_the_scan_entry_point_in_float64(cell):
    """The scan's general entry point (dict of arrays through _scan.forward)
    and the compiled step run the same scan with the same BLAS in float64."""
    rng = np.random.default_rng(0)
    net = _net(cell, "float64")
    x = rng.normal(size=(3, I))
    state = _initial_state(net, 3, rng)
    y_general, s_general = net._step_scan(x, list(state))
    y_fast, s_fast = net.step(x, state)
    np.testing.assert_allclose(y_fast, y_general, rtol=1e-14, atol=1e-15)
    for a, b in zip(s_fast, s_general):
        np.testing.assert_allclose(a, b, rtol=1e-14, atol=1e-15)


def test_outputs_are_new_arrays_and_the_inputs_are_left_alone():
    rng = np.random.default_rng(0)
    net = _net("lstm", "float32")
    x = rng.normal(size=(2, I)).astype(np.float32)
    net.step(x)
    state = _initial_state(net, 2, rng)
    saved = [s.copy() for s in state] + [x.copy()]
    y, new = net.step(x, state)
    assert not np.shares_memory(y, new[0]) and not np.shares_memory(new[0], new[1])
    assert all(not np.shares_memory(a, b) for a in new for b in state)
    for before, now in zip(saved, list(state) + [x]):
        np.testing.assert_array_equal(before, now)
    np.testing.assert_array_equal(y, new[0][-1])
    assert net._cache is None          # nothing stored on the network


@pytest.mark.parametrize("cell", ["lstm", "gru", "layer_norm", "proj_size"])
def test_in_place_weight_edits_between_steps_are_seen(cell):
    rng = np.random.default_rng(1)
    net = _net(cell, "float64")
    x = rng.normal(size=(2, I))
    _, state = net.step(x)
    # every parameter edited in place (what an optimizer step does)
    for name, value in net.params.items():
        value += rng.normal(scale=0.05, size=value.shape)
    y, new = net.step(x, state)
    fresh = CELLS[cell](dtype="float64")
    fresh.load_state_dict(net.state_dict())
    y_ref, new_ref = fresh._step_scan(x, list(state))
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-13)
    for a, b in zip(new, new_ref):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


def test_replaced_parameters_rebuild_the_plan():
    rng = np.random.default_rng(2)
    net = _net("lstm", "float32")
    other = _net("lstm", "float32", seed=7)
    x = rng.normal(size=(1, I)).astype(np.float32)
    net.step(x)
    plan = net._step_plan
    net.load_state_dict(other.state_dict())          # new arrays under every name
    assert not plan.is_current(net.params)
    y, _ = net.step(x)
    np.testing.assert_array_equal(y, other.step(x)[0])
    assert net._step_plan is not plan and net._step_plan.is_current(net.params)
    # an array of another dtype: no plan, the general path and its checks
    net.params["bias_ih_l0"] = net.params["bias_ih_l0"].astype(np.float64)
    with pytest.raises(ValueError):
        net.step(x)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_an_estimator_refit_between_steps_is_seen():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 6, 2)), rng.normal(size=40)
    reg = clstm.LSTMRegressor(hidden_size=5, max_iter=2, random_state=0).fit(X, y)
    first = reg.predict_step(X[:3, 0])[0]
    reg.set_params(max_iter=4, warm_start=True).fit(X, y)          # trains the same arrays
    np.testing.assert_allclose(reg.predict_step(X[:3, 0])[0], reg.predict(X[:3, :1]),
                               rtol=1e-5, atol=1e-6)
    assert not np.allclose(first, reg.predict_step(X[:3, 0])[0])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_other_inputs_take_the_general_path_with_the_same_result(dtype):
    rng = np.random.default_rng(4)
    net = _net("stacked_lstm", dtype)
    other = "float64" if dtype == "float32" else "float32"
    x = rng.normal(size=(3, I)).astype(dtype)
    state = _initial_state(net, 3, rng)
    y_ref, s_ref = net.step(x, state)
    wide = np.zeros((3, 2 * I), dtype=dtype)
    wide[:, ::2] = x
    fortran = [np.asfortranarray(s) for s in state]
    swapped = x.astype(x.dtype.newbyteorder())         # same values, other byte order
    cases = {
        "strided x": (wide[:, ::2], state),
        "other dtype x": (x.astype(other), state),
        "list x": (x.tolist(), state),
        "list state": (x, list(state)),
        "non-contiguous state": (x, tuple(fortran)),
        "other dtype state": (x, tuple(s.astype(other) for s in state)),
        "byte-swapped x": (swapped, state),
        "byte-swapped state": (x, tuple(s.astype(s.dtype.newbyteorder()) for s in state)),
    }
    for name, (x_in, s_in) in cases.items():
        y, s = net.step(x_in, s_in)
        tol = TOL["float32"] if "other dtype" in name else dict(rtol=0, atol=0)
        np.testing.assert_allclose(y, y_ref, **tol, err_msg=name)
        for a, b in zip(s, s_ref):
            np.testing.assert_allclose(a, b, **tol, err_msg=name)
        assert y.dtype == np.dtype(dtype)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_bad_input_gives_the_general_paths_errors(cell):
    net = _net(cell, "float32")
    x = np.zeros((2, I), dtype=np.float32)
    _, state = net.step(x)
    with pytest.raises(ValueError, match=r"x_t must have shape \(batch >= 1, input_size=4\)"):
        net.step(np.zeros((2, I + 1), dtype=np.float32), state)
    with pytest.raises(ValueError, match="x_t must have shape"):
        net.step(np.zeros(I, dtype=np.float32))
    with pytest.raises(ValueError, match="x_t must have shape"):
        net.step(np.zeros((0, I), dtype=np.float32))
    with pytest.raises(ValueError, match="state must be a tuple of"):
        net.step(x, state + state)
    with pytest.raises(ValueError, match="state 'h' must have shape"):
        net.step(np.zeros((3, I), dtype=np.float32), state)       # batch changed
    with pytest.raises(TypeError, match="x_t has dtype"):
        net.step(np.array([["a"] * I] * 2), state)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_raise(dtype, bad):
    net = _net("lstm", dtype)
    x = np.zeros((2, I), dtype=dtype)
    _, state = net.step(x)
    x_bad = x.copy()
    x_bad[1, 2] = bad
    with pytest.raises(ValueError, match=r"x_t contains 1 NaN or infinite value\(s\)"):
        net.step(x_bad, state)
    c_bad = state[1].copy()
    c_bad[0, 0, -1] = bad
    with pytest.raises(ValueError, match=r"state 'c' contains 1 NaN"):
        net.step(x, (state[0], c_bad))


def test_bidirectional_network_cannot_step():
    net = clstm.LSTM(I, H, bidirectional=True)
    for _ in range(2):
        with pytest.raises(ValueError, match="step\\(\\) needs a unidirectional network"):
            net.step(np.zeros((1, I), dtype=np.float32))
    assert net._step_plan is None


@pytest.mark.parametrize("cell", ["stacked_lstm", "gru"])
def test_concurrent_streams_equal_the_serial_result(cell):
    rng = np.random.default_rng(5)
    net = _net(cell, "float32")
    streams = [rng.normal(size=(1 + k % 3, 60, I)).astype(np.float32) for k in range(4)]
    serial = [_stepped(net, X, None) for X in streams]
    results = [None] * 4
    barrier = threading.Barrier(4)

    def run(k):
        barrier.wait()
        results[k] = _stepped(net, streams[k], None)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    for (y, s), (y_ref, s_ref) in zip(results, serial):
        np.testing.assert_array_equal(y, y_ref)
        for a, b in zip(s, s_ref):
            np.testing.assert_array_equal(a, b)


def test_pickle_and_copy_leave_the_plan_behind():
    rng = np.random.default_rng(6)
    net = _net("layer_norm", "float32")
    x = rng.normal(size=(2, I)).astype(np.float32)
    y, state = net.step(x)
    assert net._step_plan is not None
    with pytest.raises(TypeError, match="not pickled"):
        pickle.dumps(net._step_plan)
    for twin in (pickle.loads(pickle.dumps(net)), copy.deepcopy(net)):
        assert twin._step_plan is None
        np.testing.assert_array_equal(twin.step(x, state)[0], net.step(x, state)[0])
        assert twin._step_plan is not None and twin._step_plan is not net._step_plan
        # the copy's plan reads the copy's arrays, not the original's
        twin.params["bias_ih_l0"] += 1.0
        assert not np.array_equal(twin.step(x, state)[0], net.step(x, state)[0])


def test_kernel_benchmark_helper_runs_the_same_steps():
    rng = np.random.default_rng(7)
    net = _net("lstm", "float32")
    x = rng.normal(size=(1, I)).astype(np.float32)
    _, state = net.step(x)
    seconds = _stream._bench_kernel(net._step_plan, x, state, 50)
    assert 0 < seconds < 1e-3


def test_step_benchmark_runs_and_the_peers_agree(tmp_path):
    """benchmarks/bench_step.py, one short round: every framework's 20 check
    steps match clstm's outputs, and each reports positive per-call times."""
    import importlib.util
    import json
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(root, "benchmarks", "bench_step.py")
    if not os.path.exists(script):
        pytest.skip("benchmarks/ not present")
    peers = [m for m in ("torch", "onnxruntime") if importlib.util.find_spec(m) is not None]
    out = tmp_path / "step.json"
    proc = subprocess.run([sys.executable, script, "--rounds", "1", "--round-time", "0.02",
                           "--frameworks", "clstm", *peers, "--json", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out.read_text())
    for row, entry in res["rows"].items():
        assert set(entry["times"]) == {"clstm", *peers}, row
        assert all(t[0] > 0 for t in entry["times"].values())
        assert len(entry["kernel"]) > 0 and all(0 < k < 1e-3 for k in entry["kernel"])
        for fw in peers:
            assert entry["check"][fw] < 1e-5, (row, fw, entry["check"])


def test_packed_weights_variant_for_benchmarks_agrees():
    """_use_packed (benchmarks only) points a plan at packed float32 weights:
    same steps to float rounding (another summation order)."""
    from clstm import _scan
    if not _scan.HAVE_PACKED_GEMM:
        pytest.skip("no small-GEMM kernel in this build")
    rng = np.random.default_rng(8)
    for cell in ("lstm", "gru", "proj_size"):
        net = _net(cell, "float32")
        x = rng.normal(size=(1, I)).astype(np.float32)
        y, state = net.step(x)
        plan = _stream.StepPlan(net.params, net._plan()["names"], net._plan()["cfg"],
                                net._param_shapes(), net.dtype)
        keep = [{k: v for k, v in net._scan_arrays(net._direction_params(k), False).items()
                 if k.startswith("packed")} for k in range(net.num_layers)]
        _stream._use_packed(plan, keep)
        y_packed, s_packed = plan.step(net.params, x, state)
        y_blas, s_blas = net.step(x, state)
        np.testing.assert_allclose(y_packed, y_blas, **TOL["float32"])
        for a, b in zip(s_packed, s_blas):
            np.testing.assert_allclose(a, b, **TOL["float32"])
