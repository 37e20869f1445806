"""Central finite differences, float64, for every parameter and X, h0, c0.

Loss = sum(out * R) + sum(h_n * Rh) + sum(c_n * Rc) for fixed random R's, so
net.backward(R, Rh, Rc) must return its exact gradient. Also in training mode
with dropout and recurrent dropout, the masks fixed by reseeding the net's
generator before every forward.
"""

import numpy as np
import pytest

import clstm

B, T, I, H = 3, 4, 2, 3
EPS = 1e-6


def _setup(num_layers, bidirectional, lengths, seed, **kwargs):
    rng = np.random.default_rng(seed)
    D = 2 if bidirectional else 1
    net = clstm.LSTM(I, H, num_layers=num_layers, bidirectional=bidirectional,
                     dtype="float64", random_state=seed, **kwargs)
    # larger-than-default weights so the gates are away from their linear regime
    net.load_state_dict({k: 2.0 * v for k, v in net.state_dict().items()})
    shape = (num_layers * D, B, H)
    inputs = {"X": rng.standard_normal((B, T, I)),
              "h0": 0.5 * rng.standard_normal(shape),
              "c0": 0.5 * rng.standard_normal(shape)}
    R = (rng.standard_normal((B, T, D * H)), rng.standard_normal(shape),
         rng.standard_normal(shape))
    return net, inputs, R


def _gradcheck(net, inputs, R, lengths, reseed=None):
    R_out, R_h, R_c = R

    def loss():
        if reseed is not None:
            net._rng = np.random.default_rng(reseed)
        out, (h_n, c_n) = net.forward(inputs["X"], inputs["h0"], inputs["c0"], lengths)
        return np.sum(out * R_out) + np.sum(h_n * R_h) + np.sum(c_n * R_c)

    loss()
    analytic = {"X": net.backward(R_out, R_h, R_c)}
    analytic.update(net.grads)
    # perturb the arrays the net holds (forward reads them each call)
    targets = dict(net.params)
    targets.update(inputs)
    checked = 0
    for name, arr in targets.items():
        numeric = np.empty_like(arr)
        for idx in np.ndindex(arr.shape):
            orig = arr[idx]
            arr[idx] = orig + EPS
            lp = loss()
            arr[idx] = orig - EPS
            lm = loss()
            arr[idx] = orig
            numeric[idx] = (lp - lm) / (2 * EPS)
        np.testing.assert_allclose(analytic[name], numeric, rtol=1e-6, atol=1e-8,
                                   err_msg=f"gradient of {name}")
        checked += 1
    assert checked == len(net.params) + 3
    return analytic


CONFIGS = [
    pytest.param(1, False, None, id="L1-uni", marks=pytest.mark.kernel),
    pytest.param(1, True, None, id="L1-bi"),
    pytest.param(1, False, [2, 4, 1], id="L1-uni-lengths"),
    pytest.param(1, True, [2, 4, 1], id="L1-bi-lengths", marks=pytest.mark.kernel),
    pytest.param(2, False, None, id="L2-uni"),
    pytest.param(2, True, None, id="L2-bi"),
    pytest.param(2, False, [4, 1, 3], id="L2-uni-lengths"),
    pytest.param(2, True, [3, 1, 4], id="L2-bi-lengths"),
]


@pytest.mark.parametrize("num_layers,bidirectional,lengths", CONFIGS)
def test_gradcheck(num_layers, bidirectional, lengths):
    net, inputs, R = _setup(num_layers, bidirectional, lengths, seed=num_layers)
    analytic = _gradcheck(net, inputs, R, lengths)
    if lengths is not None:
        # nothing flows into the padding
        for b, L in enumerate(lengths):
            assert np.all(analytic["X"][b, L:] == 0.0)


@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("dropout,recurrent_dropout", [(0.4, 0.0), (0.0, 0.4), (0.3, 0.3)],
                         ids=["dropout", "recurrent", "both"])
def test_gradcheck_dropout(bidirectional, dropout, recurrent_dropout):
    lengths = [4, 2, 3]
    net, inputs, R = _setup(2, bidirectional, lengths, seed=11, dropout=dropout,
                            recurrent_dropout=recurrent_dropout)
    # the masks must actually act: training output differs from inference
    out_eval, _ = net.eval().forward(inputs["X"], inputs["h0"], inputs["c0"], lengths)
    net.train()
    net._rng = np.random.default_rng(0)
    out_train, _ = net.forward(inputs["X"], inputs["h0"], inputs["c0"], lengths)
    assert not np.allclose(out_train, out_eval)
    # the same seed gives the same masks (else the finite differences are noise)
    net._rng = np.random.default_rng(0)
    out_again, _ = net.forward(inputs["X"], inputs["h0"], inputs["c0"], lengths)
    np.testing.assert_array_equal(out_train, out_again)
    _gradcheck(net, inputs, R, lengths, reseed=0)


def test_dropout_is_off_in_eval_mode():
    lengths = [4, 2, 3]
    net, inputs, R = _setup(2, True, lengths, seed=12, dropout=0.5, recurrent_dropout=0.5)
    plain = clstm.LSTM(I, H, num_layers=2, bidirectional=True, dtype="float64")
    plain.load_state_dict(net.state_dict())
    args = (inputs["X"], inputs["h0"], inputs["c0"], lengths)
    out, (h_n, c_n) = net.eval().forward(*args)
    out_p, (h_p, c_p) = plain.forward(*args)
    np.testing.assert_array_equal(out, out_p)
    np.testing.assert_array_equal(h_n, h_p)
    np.testing.assert_array_equal(c_n, c_p)


# The weight gradients take one of two routes by input width (clstm._rnn.
# MAX_FUSED_GRADIENT_INPUT): thin inputs gather [x | h_prev] into one GEMM,
# wider ones read x and h_seq in place (rows that start from h0 added step
# by step, masked h_prev copied). The tests above use thin inputs; these
# force the in-place route on the same cases.
@pytest.mark.parametrize("num_layers,bidirectional,lengths,dropout,recurrent_dropout", [
    pytest.param(1, False, None, 0.0, 0.0, id="L1-uni"),
    pytest.param(2, True, [3, 1, 4], 0.0, 0.0, id="L2-bi-lengths"),
    pytest.param(2, True, [4, 2, 3], 0.3, 0.3, id="L2-bi-lengths-dropout"),
])
def test_gradcheck_in_place_weight_gradients(monkeypatch, num_layers, bidirectional, lengths,
                                             dropout, recurrent_dropout):
    monkeypatch.setattr("clstm._rnn.MAX_FUSED_GRADIENT_INPUT", 0)
    net, inputs, R = _setup(num_layers, bidirectional, lengths, seed=21, dropout=dropout,
                            recurrent_dropout=recurrent_dropout)
    _gradcheck(net, inputs, R, lengths, reseed=0 if dropout else None)
    assert all(arrays.get("xh") is None for arrays in _backward_buffer_sets(net))


def _backward_buffer_sets(net):
    """The backward buffer dicts the network built (to see which route ran)."""
    chunks = net._workspace._local.__dict__["chunks"]
    return [found[1] for buffers in chunks.values()
            for key, found in buffers.sets.items() if key[:2] == ("buffers", True)]


@pytest.mark.parametrize("kwargs", [{}, {"proj_size": 2}, {"peephole": True},
                                    {"coupled_gates": True}, {"peephole": True, "proj_size": 2}],
                         ids=["lstm", "proj", "peephole", "cifg", "peephole-proj"])
def test_both_weight_gradient_routes_agree(monkeypatch, kwargs):
    lengths = [3, 1, 4]
    results = []
    for limit in (0, 10 ** 6):          # in place / one GEMM over [x | h_prev]
        monkeypatch.setattr("clstm._rnn.MAX_FUSED_GRADIENT_INPUT", limit)
        net, inputs, (R_out, R_h, R_c) = _setup(2, True, lengths, seed=5, **kwargs)
        P = net.output_size
        R_out = R_out[..., :2 * P]
        R_h = R_h[..., :P]
        net.forward(inputs["X"], inputs["h0"][..., :P], inputs["c0"], lengths)
        grad_X = net.backward(R_out, R_h, R_c)
        routes = {arrays.get("xh") is None for arrays in _backward_buffer_sets(net)}
        assert routes == {limit == 0}
        results.append({"X": grad_X, **net.grads})
    for name, value in results[0].items():
        np.testing.assert_allclose(results[1][name], value, rtol=1e-12, atol=1e-14,
                                   err_msg=name)
