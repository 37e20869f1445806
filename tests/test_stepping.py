"""Stepping one timestep at a time equals the whole-sequence call.

Forward: T calls with T=1, carrying (h, c) from each call's (h_n, c_n) into
the next call's (h0, c0). Backward: in reverse time, rerun the step's forward
and backpropagate grad_out[:, t] plus the state gradients carried back through
net.grads["h0"] / net.grads["c0"]; the per-step parameter gradients sum to
the whole-sequence ones (karpathy's checkSequentialMatchesBatch).
"""

import numpy as np
import pytest

import clstm

B, T, I, H = 4, 7, 3, 5
TOL = {"float64": dict(rtol=1e-11, atol=1e-12), "float32": dict(rtol=2e-5, atol=2e-5)}


def _setup(num_layers, dtype, seed=0):
    rng = np.random.default_rng(seed)
    net = clstm.LSTM(I, H, num_layers=num_layers, dtype=dtype, random_state=seed)
    shape = (num_layers, B, H)
    data = dict(X=rng.standard_normal((B, T, I)), h0=rng.standard_normal(shape),
                c0=rng.standard_normal(shape), grad_out=rng.standard_normal((B, T, H)),
                grad_h_n=rng.standard_normal(shape), grad_c_n=rng.standard_normal(shape))
    return net, {k: v.astype(dtype) for k, v in data.items()}


def _whole(net, d, lengths=None):
    out, (h_n, c_n) = net.forward(d["X"], d["h0"], d["c0"], lengths)
    grad_X = net.backward(d["grad_out"], d["grad_h_n"], d["grad_c_n"])
    return out, h_n, c_n, grad_X, dict(net.grads)


def _stepped(net, d):
    h, c = d["h0"], d["c0"]
    states, outs = [], []
    for t in range(T):
        states.append((h, c))
        out_t, (h, c) = net.forward(d["X"][:, t:t + 1], h, c)
        outs.append(out_t)
    h_n, c_n = h, c
    grad_h, grad_c = d["grad_h_n"], d["grad_c_n"]
    grads = {k: np.zeros_like(v) for k, v in net.params.items()}
    grad_X = np.zeros_like(d["X"])
    for t in reversed(range(T)):
        net.forward(d["X"][:, t:t + 1], *states[t])
        grad_X[:, t:t + 1] = net.backward(d["grad_out"][:, t:t + 1], grad_h, grad_c)
        grad_h, grad_c = net.grads["h0"], net.grads["c0"]
        for k in grads:
            grads[k] += net.grads[k]
    grads["h0"], grads["c0"] = grad_h, grad_c
    return np.concatenate(outs, axis=1), h_n, c_n, grad_X, grads


def _compare(got, ref, tol):
    names = ("out", "h_n", "c_n", "grad_X")
    for name, a, b in zip(names, got[:4], ref[:4]):
        assert a.shape == b.shape, name
        np.testing.assert_allclose(a, b, err_msg=name, **tol)
    assert set(got[4]) == set(ref[4])
    for k in ref[4]:
        np.testing.assert_allclose(got[4][k], ref[4][k], err_msg=k, **tol)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("num_layers", [1, 2, 3])
def test_stepping_matches_whole_sequence(num_layers, dtype):
    net, d = _setup(num_layers, dtype, seed=num_layers)
    _compare(_stepped(net, d), _whole(net, d), TOL[dtype])


@pytest.mark.parametrize("num_layers", [1, 2])
def test_stepping_active_rows_matches_lengths(num_layers):
    # stepping only the rows still running equals the call with lengths
    net, d = _setup(num_layers, "float64", seed=10 + num_layers)
    lengths = np.array([7, 2, 5, 1])
    out_w, h_w, c_w, gX_w, grads_w = _whole(net, d, lengths)

    h, c = d["h0"].copy(), d["c0"].copy()
    out = np.zeros((B, T, H))
    states = []
    for t in range(T):
        rows = np.flatnonzero(lengths > t)
        states.append((rows, h[:, rows].copy(), c[:, rows].copy()))
        out_t, (h_r, c_r) = net.forward(d["X"][rows, t:t + 1], h[:, rows], c[:, rows])
        out[rows, t] = out_t[:, 0]
        h[:, rows], c[:, rows] = h_r, c_r
    np.testing.assert_allclose(out, out_w, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(h, h_w, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(c, c_w, rtol=1e-12, atol=1e-13)

    grad_h, grad_c = d["grad_h_n"].copy(), d["grad_c_n"].copy()
    grads = {k: np.zeros_like(v) for k, v in net.params.items()}
    grad_X = np.zeros_like(d["X"])
    for t in reversed(range(T)):
        rows, h_t, c_t = states[t]
        net.forward(d["X"][rows, t:t + 1], h_t, c_t)
        grad_X[rows, t:t + 1] = net.backward(d["grad_out"][rows, t:t + 1],
                                             grad_h[:, rows], grad_c[:, rows])
        grad_h[:, rows], grad_c[:, rows] = net.grads["h0"], net.grads["c0"]
        for k in grads:
            grads[k] += net.grads[k]
    np.testing.assert_allclose(grad_X, gX_w, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(grad_h, grads_w["h0"], rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(grad_c, grads_w["c0"], rtol=1e-11, atol=1e-12)
    for k in grads:
        np.testing.assert_allclose(grads[k], grads_w[k], rtol=1e-11, atol=1e-12, err_msg=k)


def test_split_in_two_chunks_matches_whole_sequence():
    # carrying the state across two multi-step calls (truncated-BPTT style)
    net, d = _setup(2, "float64", seed=21)
    out_w, h_w, c_w, gX_w, grads_w = _whole(net, d)
    k = 3
    out1, (h1, c1) = net.forward(d["X"][:, :k], d["h0"], d["c0"])
    out2, (h2, c2) = net.forward(d["X"][:, k:], h1, c1)
    gX2 = net.backward(d["grad_out"][:, k:], d["grad_h_n"], d["grad_c_n"])
    grads2 = dict(net.grads)
    net.forward(d["X"][:, :k], d["h0"], d["c0"])
    gX1 = net.backward(d["grad_out"][:, :k], grads2["h0"], grads2["c0"])
    np.testing.assert_allclose(np.concatenate([out1, out2], 1), out_w, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(h2, h_w, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(c2, c_w, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(np.concatenate([gX1, gX2], 1), gX_w, rtol=1e-11, atol=1e-12)
    for name in net.params:
        np.testing.assert_allclose(net.grads[name] + grads2[name], grads_w[name],
                                   rtol=1e-11, atol=1e-12, err_msg=name)
