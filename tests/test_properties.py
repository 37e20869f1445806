"""Property tests: the compiled LSTM equals the NumPy reference on random shapes.

Shapes include the degenerate B=1 (GEMV path), T=1, I=1, H=1 and odd sizes
(vector remainders); lengths are random in [1, T], unsorted, with ties.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import clstm
from clstm._reference import reference_lstm_backward, reference_lstm_forward


@st.composite
def lstm_cases(draw):
    B = draw(st.integers(1, 5))
    T = draw(st.integers(1, 6))
    I = draw(st.sampled_from([1, 2, 3, 5, 8]))
    H = draw(st.sampled_from([1, 2, 3, 7, 9, 17]))
    num_layers = draw(st.integers(1, 3))
    bidirectional = draw(st.booleans())
    lengths = draw(st.one_of(st.none(), st.lists(st.integers(1, T), min_size=B, max_size=B)))
    with_state = draw(st.booleans())
    seed = draw(st.integers(0, 2 ** 32 - 1))
    return dict(B=B, T=T, I=I, H=H, num_layers=num_layers, bidirectional=bidirectional,
                lengths=None if lengths is None else np.array(lengths), with_state=with_state,
                seed=seed)


def _data(case, dtype):
    rng = np.random.default_rng(case["seed"])
    B, T, I, H = case["B"], case["T"], case["I"], case["H"]
    D = 2 if case["bidirectional"] else 1
    shape = (case["num_layers"] * D, B, H)
    net = clstm.LSTM(I, H, num_layers=case["num_layers"], bidirectional=case["bidirectional"],
                     dtype=dtype, random_state=rng.integers(2 ** 31))
    X = rng.standard_normal((B, T, I))
    h0 = rng.standard_normal(shape) if case["with_state"] else None
    c0 = rng.standard_normal(shape) if case["with_state"] else None
    R = (rng.standard_normal((B, T, D * H)), rng.standard_normal(shape),
         rng.standard_normal(shape))
    return net, X, h0, c0, R


def _compiled(net, X, h0, c0, lengths, R):
    out, (h_n, c_n) = net.forward(X, h0, c0, lengths)
    grad_X = net.backward(*R)
    return [out, h_n, c_n, grad_X], dict(net.grads)


def _check(got, ref, rtol, atol):
    (arrays, grads), (r_arrays, r_grads) = got, ref
    for name, a, b in zip(("out", "h_n", "c_n", "grad_X"), arrays, r_arrays):
        assert a.shape == b.shape, name
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=name)
    assert set(grads) == set(r_grads)
    for k in r_grads:
        np.testing.assert_allclose(grads[k], r_grads[k], rtol=rtol, atol=atol, err_msg=k)


@pytest.mark.kernel
@settings(max_examples=100, deadline=None)
@given(lstm_cases())
def test_compiled_matches_reference(case):
    net, X, h0, c0, R = _data(case, "float64")
    got = _compiled(net, X, h0, c0, case["lengths"], R)
    out, (h_n, c_n), cache = reference_lstm_forward(
        net.state_dict(), X, h0, c0, case["lengths"], num_layers=case["num_layers"],
        bidirectional=case["bidirectional"])
    grad_X, grads = reference_lstm_backward(*R, cache)
    _check(got, ([out, h_n, c_n, grad_X], grads), rtol=1e-11, atol=1e-12)
    if case["lengths"] is not None:
        for b, L in enumerate(case["lengths"]):
            assert np.all(got[0][0][b, L:] == 0.0) and np.all(got[0][3][b, L:] == 0.0)


@settings(max_examples=40, deadline=None)
@given(lstm_cases())
def test_float32_matches_float64(case):
    net64, X, h0, c0, R = _data(case, "float64")
    net32 = clstm.LSTM(case["I"], case["H"], num_layers=case["num_layers"],
                       bidirectional=case["bidirectional"], dtype="float32")
    net32.load_state_dict(net64.state_dict())
    net64.load_state_dict(net32.state_dict())      # identical (float32-exact) parameters
    f32 = [None if a is None else a.astype(np.float32) for a in (X, h0, c0)]
    R32 = [r.astype(np.float32) for r in R]
    got32 = _compiled(net32, *f32, case["lengths"], R32)
    got64 = _compiled(net64, *[None if a is None else a.astype(np.float64) for a in f32],
                      case["lengths"], [r.astype(np.float64) for r in R32])
    assert got32[0][0].dtype == np.float32
    _check(got32, got64, rtol=1e-4, atol=2e-5)
