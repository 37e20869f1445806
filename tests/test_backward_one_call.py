"""The one-call backward (_scan.BackwardPlan: every sub-batch through every
layer direction in one compiled call, kept beside the forward's plan) against
the per-layer path it replaced (one compiled call per layer direction, Python
threads), which stays as the oracle: bit for bit, for every cell kind, and
across a training loop that reuses the kept plan while the weights change."""

import numpy as np
import pytest

import clstm
import clstm._rnn as rnn
from clstm import _scan

from _one_call import CELLS, split_small_batches  # noqa: F401  (a fixture)

pytestmark = pytest.mark.kernel    # fast: also run against the bounds-checked build


@pytest.fixture
def one_call(monkeypatch):
    """Set which backward runs: one_call(True) the plan, one_call(False) the oracle."""
    def choose(flag):
        monkeypatch.setattr(rnn, "ONE_CALL_BACKWARD", flag)
    return choose


def _network(cls, kwargs, n_jobs, input_size, dtype, seed=3):
    return cls(input_size, 5, random_state=seed, dtype=dtype, n_jobs=n_jobs, **kwargs)


def _step(net, X, lengths, rng, into=False, train=False):
    """One forward and backward with every output and final-state gradient
    non-zero; everything the backward returns (copies)."""
    net.train(train)
    out, final = net.run(X, lengths=lengths)
    grad_state = tuple(rng.standard_normal(s.shape).astype(s.dtype) for s in final)
    sink = {}
    if into:
        sink["grads_into"] = {k: np.zeros_like(v) for k, v in net.params.items()}
    grad_X = net.backward_state(np.cos(3.0 * out), grad_state, **sink)
    if into:
        for name, g in sink["grads_into"].items():
            assert net.grads[name] is g          # added where the caller asked
    return [out.copy(), *[s.copy() for s in final], grad_X.copy(),
            *[net.grads[k].copy() for k in sorted(net.grads)]]


def _assert_identical(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert np.array_equal(x, y), np.abs(x - y).max()


def _both(cls, kwargs, n_parts, n_jobs, X, lengths, dtype, one_call, monkeypatch, **step):
    monkeypatch.setattr(rnn, "_fixed_parts", lambda *shape: n_parts)
    results = []
    for flag in (True, False):
        one_call(flag)
        net = _network(cls, kwargs, n_jobs, X.shape[2], dtype)
        results.append(_step(net, X, lengths, np.random.default_rng(7), **step))
        assert len(net._cache["chunks"]) == min(n_parts, X.shape[0])
    return results


@pytest.mark.parametrize("cell", list(CELLS))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n_jobs, n_parts", [(1, 1), (2, 2), (1, 3), (2, 3)])
def test_equals_per_layer_path_bit_for_bit(split_small_batches, one_call, monkeypatch, cell,
                                           dtype, n_jobs, n_parts):
    cls, kwargs = CELLS[cell]
    rng = np.random.default_rng(0)
    X = rng.standard_normal((7, 6, 4)).astype(dtype)
    lengths = np.array([6, 2, 5, 1, 6, 3, 4])
    for extra in ({}, {"num_layers": 3, "bidirectional": True}):
        for lens in (None, lengths):
            new, old = _both(cls, {**kwargs, **extra}, n_parts, n_jobs, X, lens, dtype,
                             one_call, monkeypatch)
            _assert_identical(new, old)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("input_size", [3, 40])     # thin: [x | h] gradient buffer; wide
def test_gradients_into_the_callers_arrays(split_small_batches, one_call, monkeypatch, dtype,
                                           input_size):
    """grads_into (the training loop's flat buffer): sub-batch 0 adds to the
    caller's arrays, the others' sums follow in order, as on the oracle path."""
    rng = np.random.default_rng(1)
    X = rng.standard_normal((9, 5, input_size)).astype(dtype)
    for cls, kwargs in (CELLS["lstm"], CELLS["gru"], CELLS["layernorm"]):
        kwargs = {**kwargs, "num_layers": 2, "bidirectional": True}
        new, old = _both(cls, kwargs, 3, 2, X, None, dtype, one_call, monkeypatch, into=True)
        _assert_identical(new, old)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_dropout_equals_per_layer_path(split_small_batches, one_call, monkeypatch, dtype):
    """Input dropout between layers is undone on grad_x in C, recurrent
    dropout's masked h_{t-1} copies reach the weight gradients."""
    rng = np.random.default_rng(2)
    X = rng.standard_normal((9, 5, 3)).astype(dtype)
    lengths = rng.integers(1, 6, size=9)
    kwargs = {"num_layers": 3, "bidirectional": True, "dropout": 0.4, "recurrent_dropout": 0.3}
    for cls in (clstm.LSTM, clstm.GRU):
        for n_parts, n_jobs in ((1, 1), (3, 2)):
            new, old = _both(cls, kwargs, n_parts, n_jobs, X, lengths, dtype, one_call,
                             monkeypatch, train=True)
            _assert_identical(new, old)


def test_training_loop_reuses_the_plan_and_follows_the_weights(split_small_batches, one_call,
                                                              monkeypatch):
    """Five SGD steps on a kept plan (the weights updated in place, as the
    optimizers do): every step's gradients are the oracle's, the plan is
    built once, and replacing a parameter array builds a new one."""
    monkeypatch.setattr(rnn, "_fixed_parts", lambda *shape: 2)
    rng = np.random.default_rng(3)
    X = rng.standard_normal((8, 6, 3)).astype(np.float32)
    kwargs = {"num_layers": 2, "bidirectional": True}
    nets = {flag: _network(clstm.LSTM, kwargs, 2, 3, "float32") for flag in (True, False)}
    built = []
    original = _scan.BackwardPlan

    def counting(parts):
        built.append(len(parts))
        return original(parts)

    monkeypatch.setattr(_scan, "BackwardPlan", counting)
    for step in range(6):
        if step == 4:               # a parameter replaced: a new plan
            for net in nets.values():
                net.params["weight_hh_l1"] = net.params["weight_hh_l1"] * 0.5
        results = {}
        for flag, net in nets.items():
            one_call(flag)
            results[flag] = _step(net, X, None, np.random.default_rng(step), into=True)
            for name, value in net.params.items():      # SGD, in place
                value -= np.float32(0.1) * net.grads[name]
        _assert_identical(results[True], results[False])
    assert built == [2, 2]


def test_a_new_shape_builds_a_new_plan(one_call, monkeypatch):
    """Another batch shape between two calls: each call's own buffers."""
    rng = np.random.default_rng(4)
    net = clstm.LSTM(3, 4, num_layers=2, random_state=0)
    ref = clstm.LSTM(3, 4, num_layers=2, random_state=0)
    for B, T in ((5, 4), (3, 7), (5, 4), (5, 4)):
        X = rng.standard_normal((B, T, 3)).astype(np.float32)
        one_call(True)
        new = _step(net, X, None, np.random.default_rng(B * T))
        one_call(False)
        _assert_identical(new, _step(ref, X, None, np.random.default_rng(B * T)))


def test_retain_cache_runs_twice(one_call):
    """retain_cache=True (the oracle path on copies) then a plain backward:
    the same gradients both times."""
    one_call(True)
    rng = np.random.default_rng(5)
    X = rng.standard_normal((4, 5, 2)).astype(np.float32)
    net = clstm.LSTM(2, 3, random_state=0)
    out, _ = net.run(X)
    g = np.cos(out)
    first = net.backward_state(g, retain_cache=True)
    first_grads = {k: v.copy() for k, v in net.grads.items()}
    second = net.backward_state(g)
    np.testing.assert_array_equal(first, second)
    for name, value in first_grads.items():
        np.testing.assert_array_equal(value, net.grads[name])


def test_gradients_match_finite_differences():
    """An independent oracle: central differences in float64 on a stacked,
    bidirectional, ragged batch through the one-call backward."""
    rng = np.random.default_rng(6)
    X = rng.standard_normal((3, 4, 2))
    lengths = np.array([4, 2, 3])
    net = clstm.LSTM(2, 3, num_layers=2, bidirectional=True, dtype="float64", random_state=0)
    w_out = rng.standard_normal((3, 4, 6))

    def loss():
        out, _ = net.run(X, lengths=lengths, keep_cache=False)
        return float((out * w_out).sum())

    net.run(X, lengths=lengths)
    grad_X = net.backward_state(w_out)
    eps = 1e-6
    for name in ("weight_ih_l0", "weight_hh_l1_reverse", "bias_hh_l0"):
        p = net.params[name]
        for idx in [(0,) * p.ndim, tuple(s - 1 for s in p.shape)]:
            keep = p[idx]
            p[idx] = keep + eps
            up = loss()
            p[idx] = keep - eps
            down = loss()
            p[idx] = keep
            assert abs((up - down) / (2 * eps) - net.grads[name][idx]) < 1e-7
    for idx in [(0, 0, 0), (1, 1, 1), (2, 2, 0)]:
        keep = X[idx]
        X[idx] = keep + eps
        up = loss()
        X[idx] = keep - eps
        down = loss()
        X[idx] = keep
        assert abs((up - down) / (2 * eps) - grad_X[idx]) < 1e-7


def test_plan_rejects_a_grad_out_of_another_shape():
    """The plan reads grad_out in place: a run with another shape is refused
    (ValueError), never read out of bounds."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((4, 5, 2)).astype(np.float32)
    net = clstm.LSTM(2, 3, random_state=0)
    out, _ = net.run(X)
    net.backward_state(np.cos(out))
    bplan = net._cache["parts"][0]["backward_plan"][1]
    targets = [net._gradient_targets(k, {n: np.zeros_like(v) for n, v in net.params.items()})
               for k in net._backward_order()]
    with pytest.raises(ValueError, match="grad_out"):
        bplan.run(np.zeros((4, 4, 3), np.float32), targets)
    with pytest.raises(ValueError, match="targets"):
        bplan.run(np.zeros((4, 5, 3), np.float32), [])
    bad = [dict(t, grad_weight_hh=np.zeros(3, np.float32)) for t in targets]
    with pytest.raises(ValueError, match="grad_weight_hh"):
        bplan.run(np.zeros((4, 5, 3), np.float32), bad)


def test_pickle_leaves_the_kept_weights_and_plan_behind():
    """The backward's packed weights and plan are scratch: a pickled network
    holds its parameters only, and the copy trains to the same bits."""
    import pickle
    rng = np.random.default_rng(8)
    X = rng.standard_normal((6, 5, 3)).astype(np.float32)
    net = clstm.LSTM(3, 8, num_layers=2, random_state=0)
    _step(net, X, None, np.random.default_rng(0))
    assert "_backward_memo" in net.__dict__
    copy = pickle.loads(pickle.dumps(net))
    assert "_backward_memo" not in copy.__dict__
    fresh = pickle.loads(pickle.dumps(clstm.LSTM(3, 8, num_layers=2, random_state=0)))
    assert len(pickle.dumps(net)) <= len(pickle.dumps(fresh)) + 2048
    _assert_identical(_step(net, X, None, np.random.default_rng(1)),
                      _step(copy, X, None, np.random.default_rng(1)))


@pytest.mark.parametrize("make", [
    lambda: clstm.LSTM(3, 4, num_layers=2, bidirectional=True, random_state=0),
    lambda: clstm.GRU(3, 4, random_state=0),
    lambda: clstm.LSTM(3, 4, proj_size=2, random_state=0)])
def test_no_output_gradient_equals_zeros(make):
    """grad_out None (a loss on the final states): the same bits as an array
    of zeros, on sorted (ragged) rows too, call after call."""
    rng = np.random.default_rng(9)
    X = rng.standard_normal((5, 6, 3)).astype(np.float32)
    lengths = np.array([6, 2, 5, 1, 6])
    net, ref = make(), make()
    for lens in (None, lengths, lengths):
        out, final = net.run(X, lengths=lens)
        ref_out, _ = ref.run(X, lengths=lens)
        grad_state = tuple(rng.standard_normal(s.shape).astype(np.float32) for s in final)
        got = net.backward_state(None, grad_state)
        expected = ref.backward_state(np.zeros_like(ref_out), grad_state)
        np.testing.assert_array_equal(got, expected)
        for name, g in ref.grads.items():
            np.testing.assert_array_equal(net.grads[name], g, err_msg=name)


def test_convlstm_no_output_gradient_equals_zeros():
    rng = np.random.default_rng(10)
    X = rng.standard_normal((2, 3, 4, 4, 2)).astype(np.float32)
    net = clstm.ConvLSTM(2, 3, kernel_size=3, random_state=0)
    ref = clstm.ConvLSTM(2, 3, kernel_size=3, random_state=0)
    out, (h, c) = net.run(X)
    ref_out, _ = ref.run(X)
    g_h = rng.standard_normal(h.shape).astype(np.float32)
    got = net.backward(None, g_h)
    np.testing.assert_array_equal(got, ref.backward(np.zeros_like(ref_out), g_h))
    for name, g in ref.grads.items():
        np.testing.assert_array_equal(net.grads[name], g, err_msg=name)


def test_bad_gradient_targets_get_a_clear_error():
    """grads_into missing a parameter, of another shape or dtype, or not
    writable: a ValueError naming the parameter, before any kernel runs."""
    X = np.ones((4, 5, 2), np.float32)
    net = clstm.LSTM(2, 3, random_state=0)

    def into(**changes):
        arrays = {k: np.zeros_like(v) for k, v in net.params.items()}
        for name, value in changes.items():
            if value is None:
                del arrays[name]
            else:
                arrays[name] = value
        return arrays

    read_only = np.zeros((12, 3), np.float32)
    read_only.flags.writeable = False
    for bad, match in ((into(weight_hh_l0=None), "no array for the parameter 'weight_hh_l0'"),
                       (into(weight_hh_l0=np.zeros((3, 3), np.float32)), "shape \\(12, 3\\)"),
                       (into(bias_ih_l0=np.zeros(12)), "dtype float32"),
                       (into(weight_hh_l0=read_only), "writable")):
        out, _ = net.run(X)
        with pytest.raises(ValueError, match=match):
            net.backward_state(np.ones_like(out), grads_into=bad)
    out, _ = net.run(X)                     # a good set after the bad ones
    good = into()
    net.backward_state(np.ones_like(out), grads_into=good)
    assert np.abs(good["weight_hh_l0"]).sum() > 0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_sub_batches_on_helper_threads_keep_the_bits(dtype):
    """Two fixed sub-batches at a shape whose weight-gradient GEMMs are large
    enough for a threaded BLAS (float64: one GEMM over all rows): run on the
    C pool's helper thread at n_jobs=2 or on the calling thread at n_jobs=1,
    every gradient is the same bits (the helper's BLAS calls stay on one
    thread, as the calling thread's do)."""
    rng = np.random.default_rng(11)
    X = rng.standard_normal((64, 20, 64)).astype(dtype)
    grads = []
    for n_jobs in (1, 2):
        net = clstm.LSTM(64, 128, random_state=0, n_jobs=n_jobs, dtype=dtype)
        out, _ = net.run(X)
        assert len(net._cache["chunks"]) == 2
        net.backward_state(np.cos(out))
        grads.append({k: v.copy() for k, v in net.grads.items()})
    for name, g in grads[0].items():
        assert np.array_equal(g, grads[1][name]), name


NETWORKS = {
    "lstm": lambda: clstm.LSTM(3, 5, num_layers=2, bidirectional=True, random_state=0),
    "gru": lambda: clstm.GRU(3, 5, num_layers=2, random_state=0),
}


@pytest.mark.parametrize("into", [False, True])
@pytest.mark.parametrize("kind", sorted(NETWORKS))
def test_without_grad_inputs_the_parameter_gradients_are_the_same(into, kind):
    """backward_state(grad_inputs=False), as a model without an input layer calls
    it: returns None, the parameter gradients bit for bit those of a full
    backward, and no gradient of X or of the initial states."""
    rng = np.random.default_rng(5)
    X = rng.standard_normal((6, 7, 3)).astype(np.float32)
    lengths = np.array([7, 3, 5, 7, 1, 6])
    results = []
    for grad_inputs in (True, False):
        net = NETWORKS[kind]()
        out, final = net.run(X, lengths=lengths)
        sink = {}
        if into:
            sink["grads_into"] = {k: np.zeros_like(v) for k, v in net.params.items()}
        grad_X = net.backward_state(np.cos(3.0 * out), tuple(np.sin(s) for s in final),
                                    grad_inputs=grad_inputs, **sink)
        results.append((grad_X, {k: v.copy() for k, v in net.grads.items()}))
    (grad_X, full), (none, params_only) = results
    assert grad_X.shape == X.shape and none is None
    assert set(full) - set(params_only) == {f"{name}0" for name in net.state_names}
    for name, value in params_only.items():
        np.testing.assert_array_equal(value, full[name], err_msg=name)


def test_convlstm_without_grad_inputs():
    rng = np.random.default_rng(6)
    X = rng.standard_normal((2, 3, 4, 4, 2)).astype(np.float32)
    results = []
    for grad_inputs in (True, False):
        net = clstm.ConvLSTM(2, 3, 3, random_state=0)
        out, final = net.run(X)
        grad_X = net.backward_state(np.cos(out), grad_inputs=grad_inputs)
        results.append((grad_X, {k: v.copy() for k, v in net.grads.items()}))
    (grad_X, full), (none, params_only) = results
    assert grad_X.shape == X.shape and none is None
    for name, value in params_only.items():
        np.testing.assert_array_equal(value, full[name], err_msg=name)


@pytest.mark.parametrize("n_jobs, B", [(1, 6), (2, 40)])
def test_without_grad_inputs_the_bottom_grad_x_is_not_computed(n_jobs, B):
    """grad_inputs=False skips the bottom layer's grad_x product in the kernel
    (its buffer keeps what it held); a later backward with grad_inputs=True
    computes it again, the same bits as before. Two layers with dropout
    between them: the layer above still gets (and unmasks) its grad_x."""
    rng = np.random.default_rng(7)
    X = rng.standard_normal((B, 9, 4)).astype(np.float32)
    net = clstm.LSTM(4, 6, num_layers=2, bidirectional=True, dropout=0.3, random_state=0,
                     n_jobs=n_jobs)

    def backward(grad_inputs):
        net._rng = np.random.default_rng(0)      # the same dropout masks each time
        out, _ = net.forward(X)
        return net.backward_state(np.cos(out), grad_inputs=grad_inputs), dict(net.grads)

    first, grads = backward(True)
    buffers = net._cache["parts"][0]["backward_plan"][3]
    for buf in buffers:
        buf.fill(np.nan)
    none, params_only = backward(False)
    assert none is None
    assert all(np.isnan(buf).all() for buf in buffers)
    for name, value in params_only.items():
        np.testing.assert_array_equal(value, grads[name], err_msg=name)
    again, _ = backward(True)
    np.testing.assert_array_equal(again, first)
