"""clstm.LSTM (compiled) against the pure-NumPy reference (clstm._reference).

Forward (out, h_n, c_n) and backward (grad_X and every gradient in
net.grads) over layers x directions x lengths x initial states. float64 must
agree to rounding; float32 is compared with float64 on the same parameters.
"""

import numpy as np
import pytest

import clstm
from clstm._reference import reference_lstm_backward, reference_lstm_forward

B, T, I, H = 5, 6, 3, 4
LENGTHS = np.array([3, 6, 1, 6, 2])      # unsorted, includes 1 and T


def _case(num_layers, bidirectional, with_lengths, with_state, seed=0):
    rng = np.random.default_rng(seed)
    D = 2 if bidirectional else 1
    net = clstm.LSTM(I, H, num_layers=num_layers, bidirectional=bidirectional,
                     dtype="float64", random_state=seed)
    X = rng.standard_normal((B, T, I))
    lengths = LENGTHS.copy() if with_lengths else None
    shape = (num_layers * D, B, H)
    h0 = rng.standard_normal(shape) if with_state else None
    c0 = rng.standard_normal(shape) if with_state else None
    grad_out = rng.standard_normal((B, T, D * H))
    grad_h_n = rng.standard_normal(shape)
    grad_c_n = rng.standard_normal(shape)
    return net, X, h0, c0, lengths, grad_out, grad_h_n, grad_c_n


def _run_reference(params, X, h0, c0, lengths, grad_out, grad_h_n, grad_c_n,
                   num_layers, bidirectional):
    out, (h_n, c_n), cache = reference_lstm_forward(
        params, X, h0, c0, lengths, num_layers=num_layers, bidirectional=bidirectional)
    grad_X, grads = reference_lstm_backward(grad_out, grad_h_n, grad_c_n, cache)
    return out, h_n, c_n, grad_X, grads


def _run_compiled(net, X, h0, c0, lengths, grad_out, grad_h_n, grad_c_n):
    out, (h_n, c_n) = net.forward(X, h0, c0, lengths)
    grad_X = net.backward(grad_out, grad_h_n, grad_c_n)
    return out, h_n, c_n, grad_X, net.grads


def _assert_all_close(got, ref, rtol, atol):
    out, h_n, c_n, grad_X, grads = got
    r_out, r_h, r_c, r_gx, r_grads = ref
    np.testing.assert_allclose(out, r_out, rtol=rtol, atol=atol, err_msg="out")
    np.testing.assert_allclose(h_n, r_h, rtol=rtol, atol=atol, err_msg="h_n")
    np.testing.assert_allclose(c_n, r_c, rtol=rtol, atol=atol, err_msg="c_n")
    np.testing.assert_allclose(grad_X, r_gx, rtol=rtol, atol=atol, err_msg="grad_X")
    assert set(grads) == set(r_grads)
    for name in r_grads:
        np.testing.assert_allclose(grads[name], r_grads[name], rtol=rtol, atol=atol,
                                   err_msg=name)


CONFIGS = [(n, bi, lens, state) for n in (1, 2, 3) for bi in (False, True)
           for lens in (False, True) for state in (False, True)]


def _id(cfg):
    n, bi, lens, state = cfg
    return f"L{n}-{'bi' if bi else 'uni'}-{'len' if lens else 'full'}-{'h0' if state else 'zero'}"


# A fast subset for `pytest -m kernel` (debug builds, CPU emulation).
KERNEL_CONFIGS = {(1, False, False, False), (1, True, True, True), (2, True, True, False)}


def _maybe_kernel(cfg):
    marks = [pytest.mark.kernel] if cfg in KERNEL_CONFIGS else []
    return pytest.param(cfg, id=_id(cfg), marks=marks)


@pytest.mark.parametrize("cfg", [_maybe_kernel(c) for c in CONFIGS])
def test_float64_matches_reference(cfg):
    num_layers, bidirectional, with_lengths, with_state = cfg
    net, *data = _case(*cfg)
    got = _run_compiled(net, *data)
    ref = _run_reference(net.state_dict(), *data, num_layers, bidirectional)
    _assert_all_close(got, ref, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("cfg", [_maybe_kernel(c) for c in CONFIGS])
def test_float32_matches_float64(cfg):
    num_layers, bidirectional, with_lengths, with_state = cfg
    net64, *data = _case(*cfg, seed=1)
    net32 = clstm.LSTM(I, H, num_layers=num_layers, bidirectional=bidirectional,
                       dtype="float32").load_state_dict(net64.state_dict())
    # same parameters, exactly representable in float32
    params32 = net32.state_dict()
    net64.load_state_dict({k: v.astype(np.float64) for k, v in params32.items()})
    data32 = [None if a is None else np.asarray(a, dtype=np.float32) if a.dtype.kind == "f"
              else a for a in data]
    data64 = [None if a is None else a.astype(np.float64) if a.dtype.kind == "f" else a
              for a in data32]
    got32 = _run_compiled(net32, *data32)
    got64 = _run_compiled(net64, *data64)
    assert got32[0].dtype == np.float32 and got32[3].dtype == np.float32
    assert all(v.dtype == np.float32 for v in got32[4].values())
    _assert_all_close(got32, got64, rtol=1e-5, atol=1e-5)


def test_lengths_output_is_zero_past_length_and_states_at_last_step():
    net, X, h0, c0, lengths, *_ = _case(1, True, True, True, seed=3)
    out, (h_n, c_n) = net.forward(X, h0, c0, lengths)
    for b, L in enumerate(lengths):
        assert np.all(out[b, L:] == 0.0)
        np.testing.assert_allclose(h_n[0, b], out[b, L - 1, :H], rtol=0, atol=0)
        np.testing.assert_allclose(h_n[1, b], out[b, 0, H:], rtol=0, atol=0)
        # a sequence of length L gives the same result alone and truncated to L
        out_b, (h_b, c_b) = net.forward(X[b:b + 1, :L], h0[:, b:b + 1], c0[:, b:b + 1])
        np.testing.assert_allclose(out_b[0], out[b, :L], rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(h_b[:, 0], h_n[:, b], rtol=1e-13, atol=1e-14)
        np.testing.assert_allclose(c_b[:, 0], c_n[:, b], rtol=1e-13, atol=1e-14)


@pytest.mark.kernel
def test_batch_rows_are_independent():
    # permuting the batch permutes every result (sorting by length is internal)
    net, X, h0, c0, lengths, grad_out, gh, gc = _case(2, True, True, True, seed=4)
    perm = np.array([4, 2, 0, 3, 1])
    out, (h_n, c_n) = net.forward(X, h0, c0, lengths)
    gX = net.backward(grad_out, gh, gc)
    grads = net.grads
    out_p, (h_p, c_p) = net.forward(X[perm], h0[:, perm], c0[:, perm], lengths[perm])
    gX_p = net.backward(grad_out[perm], gh[:, perm], gc[:, perm])
    np.testing.assert_allclose(out_p, out[perm], rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(h_p, h_n[:, perm], rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(c_p, c_n[:, perm], rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(gX_p, gX[perm], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(net.grads["h0"], grads["h0"][:, perm], rtol=1e-12, atol=1e-13)
    for name, value in grads.items():
        if name not in ("h0", "c0"):
            np.testing.assert_allclose(net.grads[name], value, rtol=1e-12, atol=1e-13)


def test_batch_of_one_uses_the_same_math():
    # B = 1 takes the GEMV path in the recurrence; compare with the reference
    rng = np.random.default_rng(5)
    net = clstm.LSTM(I, H, num_layers=2, bidirectional=True, dtype="float64", random_state=5)
    X = rng.standard_normal((1, T, I))
    grad_out = rng.standard_normal((1, T, 2 * H))
    got = _run_compiled(net, X, None, None, None, grad_out, None, None)
    zeros = np.zeros((4, 1, H))
    ref = _run_reference(net.state_dict(), X, None, None, None, grad_out, zeros, zeros, 2, True)
    _assert_all_close(got, ref, rtol=1e-12, atol=1e-13)


def test_grads_have_state_dict_keys_and_shapes():
    net, X, h0, c0, lengths, grad_out, gh, gc = _case(2, True, False, False)
    net.forward(X)
    net.backward(grad_out)
    sd = net.state_dict()
    assert set(net.grads) == set(sd) | {"h0", "c0"}
    for k, v in sd.items():
        assert net.grads[k].shape == v.shape
        assert net.grads[k].dtype == v.dtype
    assert net.grads["h0"].shape == net.grads["c0"].shape == (4, B, H)
    # bias_ih and bias_hh enter as a sum: equal gradients
    np.testing.assert_array_equal(net.grads["bias_ih_l1"], net.grads["bias_hh_l1"])


@pytest.mark.parametrize("bidirectional", [False, True])
def test_backward_with_retain_cache_is_repeatable_and_does_not_accumulate(bidirectional):
    net, X, h0, c0, lengths, grad_out, gh, gc = _case(2, bidirectional, True, True, seed=6)
    net.forward(X, h0, c0, lengths)
    g1 = net.backward(grad_out, gh, gc, retain_cache=True)
    grads1 = {k: v.copy() for k, v in net.grads.items()}
    g2 = net.backward(grad_out, gh, gc, retain_cache=True)
    np.testing.assert_array_equal(g1, g2)
    for k, v in grads1.items():
        np.testing.assert_array_equal(net.grads[k], v, err_msg=k)
    g3 = net.backward(grad_out, gh, gc)              # the last one may consume the cache
    np.testing.assert_array_equal(g1, g3)
    for k, v in grads1.items():
        np.testing.assert_array_equal(net.grads[k], v, err_msg=k)


def test_a_second_backward_for_one_forward_raises_and_forward_again_works():
    # the backward writes the gate gradients over the saved gates (memory):
    # a second one would read gradients as activations, so it must refuse
    net, X, h0, c0, lengths, grad_out, gh, gc = _case(2, True, True, True, seed=6)
    net.forward(X, h0, c0, lengths)
    g1 = net.backward(grad_out, gh, gc)
    grads1 = {k: v.copy() for k, v in net.grads.items()}
    with pytest.raises(RuntimeError, match="already run for this forward"):
        net.backward(grad_out, gh, gc)
    net.forward(X, h0, c0, lengths)
    np.testing.assert_array_equal(net.backward(grad_out, gh, gc), g1)
    for k, v in grads1.items():
        np.testing.assert_array_equal(net.grads[k], v, err_msg=k)


def test_forward_does_not_modify_inputs():
    net, X, h0, c0, lengths, grad_out, gh, gc = _case(2, True, True, True, seed=7)
    copies = [a.copy() for a in (X, h0, c0, lengths, grad_out, gh, gc)]
    net.forward(X, h0, c0, lengths)
    net.backward(grad_out, gh, gc)
    for a, b in zip((X, h0, c0, lengths, grad_out, gh, gc), copies):
        np.testing.assert_array_equal(a, b)


# --- results own their memory -------------------------------------------------------
# The network reuses internal workspaces between calls; nothing it returns may
# be a view of them, and nothing it keeps for backward may be a view of the
# caller's arrays. Degenerate shapes matter: with B = 1 or T = 1 a transpose
# of a contiguous buffer is itself contiguous, so np.ascontiguousarray returns
# a view instead of a copy.

ALIAS_SHAPES = [(1, 5, None), (4, 1, None), (3, 4, None), (1, 1, None), (3, 4, [4, 1, 2]),
                (1, 5, [3])]


def _results(net, X, h0, c0, lengths, seed):
    rng = np.random.default_rng(seed)
    out, (h_n, c_n) = net.forward(X, h0, c0, lengths)
    grad_X = net.backward(rng.standard_normal(out.shape), rng.standard_normal(h_n.shape),
                          rng.standard_normal(c_n.shape))
    return {"out": out, "h_n": h_n, "c_n": c_n, "grad_X": grad_X, **net.grads}


@pytest.mark.parametrize("batch,steps,lengths", ALIAS_SHAPES)
@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
def test_results_survive_a_later_call(batch, steps, lengths, training):
    net = clstm.LSTM(I, H, num_layers=2, bidirectional=True, dtype="float64", random_state=0)
    net.train(training)
    rng = np.random.default_rng(1)
    shape = (4, batch, H)
    first = [rng.standard_normal((batch, steps, I)), rng.standard_normal(shape),
             rng.standard_normal(shape)]
    second = [rng.standard_normal((batch, steps, I)), rng.standard_normal(shape),
              rng.standard_normal(shape)]
    kept = _results(net, *first, lengths, seed=2)
    copies = {k: v.copy() for k, v in kept.items()}
    _results(net, *second, lengths, seed=3)
    for k in copies:
        np.testing.assert_array_equal(kept[k], copies[k],
                                      err_msg=f"{k} was overwritten by the next call")


@pytest.mark.parametrize("batch,steps,lengths", ALIAS_SHAPES)
def test_inputs_mutated_after_forward_do_not_change_backward(batch, steps, lengths):
    net = clstm.LSTM(I, H, num_layers=2, bidirectional=True, dtype="float64", random_state=0)
    rng = np.random.default_rng(4)
    shape = (4, batch, H)
    X, h0, c0 = (rng.standard_normal((batch, steps, I)), rng.standard_normal(shape),
                 rng.standard_normal(shape))
    gout = rng.standard_normal((batch, steps, 2 * H))
    net.forward(X, h0, c0, lengths)
    ref_gX = net.backward(gout).copy()
    ref = {k: v.copy() for k, v in net.grads.items()}
    net.forward(X, h0, c0, lengths)
    for a in (X, h0, c0):
        a[...] = 7.0          # the caller reuses its buffers before backward
    np.testing.assert_array_equal(net.backward(gout), ref_gX)
    for k, v in ref.items():
        np.testing.assert_array_equal(net.grads[k], v, err_msg=k)
