"""The fused cell (_fused_cell.h: the LSTM cell as the epilogue of each
step's product, inference forwards only) against the two-pass path it
replaces (the small GEMM writes the gates, then the cell kernel), which stays
as the oracle and is what training forwards run.

Bit for bit: both sum the same products in the same order and the vector
activations repeat the scalar ones operation by operation. That holds for
the gcc builds with runtime dispatch (the wheels); a build by another
compiler ("no-dispatch") may contract other multiply-adds into FMAs, so
there the two agree to a few float32 ulps of the outputs (|h| <= 1)."""

import pickle

import numpy as np
import pytest

import clstm
import clstm._rnn as rnn
from clstm import _cell, _scan

pytestmark = [pytest.mark.kernel,
              pytest.mark.skipif(not _scan.HAVE_FUSED_CELL,
                                 reason="build without vector extensions: no fused cell")]

VARIANTS = {"lstm": {}, "peephole": {"peephole": True}, "cifg": {"coupled_gates": True},
            "peephole_cifg": {"peephole": True, "coupled_gates": True}}
THIN, WIDE = 1, rnn.MIN_PACKED_INPUT_SIZE + 3       # per-step [x|h] product / hoisted


@pytest.fixture(autouse=True)
def always_fused():
    """Every step fused (by default only steps of at most
    fused_cell_max_rows rows are: see test_default_threshold_switches_per_step)."""
    previous = _scan.set_fused_cell_max_rows(1 << 30)
    yield
    _scan.set_fused_cell_max_rows(previous)


def assert_same(a, b):
    if _cell.dispatch_level() == "no-dispatch":
        np.testing.assert_allclose(a, b, rtol=0, atol=5e-7)
    else:
        np.testing.assert_array_equal(a, b)


def _inference(net, X, lengths, fused, **kw):
    saved = rnn.FUSED_CELL_FORWARD
    rnn.FUSED_CELL_FORWARD = fused
    try:
        out, state = net.run(X, lengths=lengths, keep_cache=False, **kw)
    finally:
        rnn.FUSED_CELL_FORWARD = saved
    return (out,) + tuple(state)


def _data(batch, input_size, n_steps=9, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((batch, n_steps, input_size)).astype(np.float32)
    lengths = rng.integers(1, n_steps + 1, batch)
    lengths[0] = n_steps
    return X, lengths


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("input_size", [THIN, WIDE], ids=["thin", "wide"])
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, True)], ids=["1", "2bi"])
@pytest.mark.parametrize("hidden", [1, 7, 8, 9, 40, 50, 64])
@pytest.mark.parametrize("batch", [1, 3, 32])
def test_fused_equals_two_pass(variant, input_size, layers, bidirectional, hidden, batch):
    net = clstm.LSTM(input_size, hidden, num_layers=layers, bidirectional=bidirectional,
                     random_state=hidden + batch, **VARIANTS[variant]).eval()
    X, lengths = _data(batch, input_size, seed=batch)
    # larger weights: the gates reach the activations' clamped range (|x| > 7.9)
    for name, value in net.params.items():
        value *= 4.0
    X *= 3.0
    # initial states: rows starting from h0/c0 mid-sequence (the reverse direction)
    rng = np.random.default_rng(1)
    D = 2 if bidirectional else 1
    h0 = rng.standard_normal((layers * D, batch, hidden)).astype(np.float32)
    c0 = rng.standard_normal((layers * D, batch, hidden)).astype(np.float32)
    for lens in (lengths, None):
        fused = _inference(net, X, lens, True, state=(h0, c0))
        two_pass = _inference(net, X, lens, False, state=(h0, c0))
        for a, b in zip(fused, two_pass):
            assert_same(a, b)
    # not vacuous: the inference weights carry the fused packing
    weights, _ = net._forward_weights(fused_cell=True)
    key = "fused_xh_t" if input_size == THIN else "fused_hh_t"
    assert all(w[key] is not None for w in weights[:D])


def test_fused_path_is_taken():
    """The fused forward never writes the gate buffer (thin inputs); the two
    passes do."""
    net = clstm.LSTM(THIN, 9, random_state=0).eval()
    X, _ = _data(4, THIN)
    for fused in (True, False):
        _inference(net, X, None, fused)         # builds (and keeps) the plan
        entry = rnn._last_plan_entry(net._inference_ws)
        gates = entry[3][0]["layers"][0]["directions"][0]["gates"]
        gates.fill(np.nan)
        _inference(net, X, None, fused)
        assert np.isnan(gates).all() == fused


def test_default_threshold_switches_per_step():
    """By default steps with more than fused_cell_max_rows rows run the two
    passes, the others fused: a ragged batch mixes both, same values."""
    _scan.set_fused_cell_max_rows(16)
    net = clstm.LSTM(THIN, 50, num_layers=2, bidirectional=True, random_state=0).eval()
    X, _ = _data(32, THIN, n_steps=20)
    lengths = np.repeat([20, 14, 9, 3], 8)          # 32, 24, 16 and 8 rows active
    for a, b in zip(_inference(net, X, lengths, True), _inference(net, X, lengths, False)):
        assert_same(a, b)
    with pytest.raises(ValueError, match=">= 0"):
        _scan.set_fused_cell_max_rows(-1)


def test_large_batches_pack_nothing_extra():
    """Sub-batches of more rows than fused_cell_max_rows, all full length,
    never fuse a step: no fused weights are packed for them."""
    _scan.set_fused_cell_max_rows(8)
    net = clstm.LSTM(THIN, 9, random_state=0).eval()
    X, lengths = _data(12, THIN)
    _inference(net, X, None, True)
    assert "_fused_memo" not in net.__dict__
    _inference(net, X, lengths, True)        # ragged: the tail steps have few rows
    assert "_fused_memo" in net.__dict__


def test_fused_matches_the_numpy_reference():
    """An independent oracle: the LSTM written out in NumPy (float64)."""
    net = clstm.LSTM(2, 9, peephole=True, random_state=0).eval()
    X, lengths = _data(4, 2)
    out = _inference(net, X, None, True)[0]
    p = {k: v.astype(np.float64) for k, v in net.params.items()}
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))      # noqa: E731
    h = np.zeros((4, 9))
    c = np.zeros((4, 9))
    pi, pf, po = np.split(p["weight_peephole_l0"], 3)
    for t in range(X.shape[1]):
        a = X[:, t] @ p["weight_ih_l0"].T + h @ p["weight_hh_l0"].T + p["bias_ih_l0"] \
            + p["bias_hh_l0"]
        ai, af, ag, ao = np.split(a, 4, axis=1)
        i, f = sig(ai + pi * c), sig(af + pf * c)
        c = f * c + i * np.tanh(ag)
        h = sig(ao + po * c) * np.tanh(c)
        np.testing.assert_allclose(out[:, t], h, rtol=0, atol=2e-6)


def test_recurrent_dropout_and_threads(monkeypatch):
    """Recurrent masks (a forward in training mode without a cache) and
    sub-batches on C threads take the fused path too, both ways equal."""
    monkeypatch.setattr(rnn, "MIN_WORK_PER_C_THREAD", 0)
    monkeypatch.setattr(rnn, "MIN_ROWS_PER_THREAD", 1)
    X, lengths = _data(7, THIN)
    for n_jobs in (1, 2):
        net = clstm.LSTM(THIN, 9, num_layers=2, bidirectional=True, recurrent_dropout=0.3,
                         dropout=0.2, random_state=4, n_jobs=n_jobs).train()
        rng = net.rng_state
        fused = _inference(net, X, lengths, True)
        net.rng_state = rng
        two_pass = _inference(net, X, lengths, False)
        for a, b in zip(fused, two_pass):
            assert_same(a, b)


def test_per_layer_path_also_fused(monkeypatch):
    monkeypatch.setattr(rnn, "ONE_CALL_FORWARD", False)
    net = clstm.LSTM(WIDE, 9, num_layers=2, coupled_gates=True, random_state=0).eval()
    X, lengths = _data(5, WIDE)
    for a, b in zip(_inference(net, X, lengths, True), _inference(net, X, lengths, False)):
        assert_same(a, b)


def test_training_forward_keeps_the_gates():
    """A forward that keeps a cache never takes the fused path (its backward
    reads the activated gates), before or after inference calls: the
    gradients equal those of a network that never ran one."""
    X, lengths = _data(6, THIN)
    grad_out = np.random.default_rng(2).standard_normal((6, 9, 2 * 8)).astype(np.float32)
    results = []
    for infer_first in (False, True):
        net = clstm.LSTM(THIN, 8, bidirectional=True, peephole=True, random_state=3)
        if infer_first:
            _inference(net, X, lengths, True)
        out, _ = net.run(X, lengths=lengths)
        net.backward(grad_out)
        cache_weights = net._cache["parts"][0]["layers"][0]["directions"][0]
        assert cache_weights.get("fused_xh_t") is None
        assert cache_weights.get("fused_hh_t") is None
        results.append((out, {k: v.copy() for k, v in net.grads.items()}))
        if infer_first:           # and inference after training still fused, still equal
            assert_same(_inference(net, X, lengths, True)[0],
                        _inference(net, X, lengths, False)[0])
    np.testing.assert_array_equal(results[0][0], results[1][0])
    for k in results[0][1]:
        np.testing.assert_array_equal(results[0][1][k], results[1][1][k])


def test_edited_weights_repack():
    net = clstm.LSTM(THIN, 9, random_state=0).eval()
    X, _ = _data(3, THIN)
    before = _inference(net, X, None, True)[0]
    net.params["bias_ih_l0"] += 0.5           # in place: the memo compares values
    after = _inference(net, X, None, True)[0]
    assert not np.array_equal(before, after)
    assert_same(after, _inference(net, X, None, False)[0])


@pytest.mark.parametrize("kwargs", [{"dtype": "float64"}, {"layer_norm": True},
                                    {"proj_size": 3}])
def test_other_cells_keep_two_passes(kwargs):
    net = clstm.LSTM(THIN, 9, random_state=0, **kwargs).eval()
    weights, _ = net._forward_weights(fused_cell=True)
    assert all("fused_xh_t" not in w and "fused_hh_t" not in w for w in weights)
    X, lengths = _data(3, THIN)
    X = X.astype(net.dtype)
    np.testing.assert_array_equal(_inference(net, X, lengths, True)[0],
                                  _inference(net, X, lengths, False)[0])


def test_gru_and_blas_products_keep_two_passes(monkeypatch):
    gru = clstm.GRU(THIN, 9, random_state=0).eval()
    assert rnn.fused_cell_weights(gru._forward_weights()[0], gru._plan()["cfg"]) \
        is gru._forward_weights()[0]
    monkeypatch.setattr(rnn, "USE_PACKED_GEMM", False)
    net = clstm.LSTM(THIN, 9, random_state=0).eval()
    weights, _ = net._forward_weights(fused_cell=True)
    assert all("fused_xh_t" not in w for w in weights)


def test_pickled_network_drops_the_packing():
    net = clstm.LSTM(THIN, 9, random_state=0).eval()
    X, _ = _data(2, THIN)
    out = _inference(net, X, None, True)[0]
    assert "_fused_memo" in net.__dict__
    clone = pickle.loads(pickle.dumps(net))
    assert "_fused_memo" not in clone.__dict__
    np.testing.assert_array_equal(_inference(clone, X, None, True)[0], out)


# --- the packed layout and the kernel's width ----------------------------------
def test_width_follows_the_dispatch_level():
    """The fused kernel picks its ISA as the small GEMM and the cell kernels
    do (forced to the baseline under qemu by tools/check_wheel.sh)."""
    widths = {"x86-64-v4": 16, "x86-64-v3": 8, "baseline": 4, "no-dispatch": 4}
    assert _scan.fused_cell_width() == widths[_cell.dispatch_level()]


@pytest.mark.parametrize("coupled,peephole", [(False, False), (True, True)])
def test_pack_layout(coupled, peephole):
    """Group u, row k, gate q, lane l holds [W_ih | W_hh]^T[k, q*H + u*V + l];
    then the bias row and the peephole row; zeros past H."""
    H, I, ng = 11, 2, 3 if coupled else 4
    V = _scan.fused_cell_width()
    rng = np.random.default_rng(0)
    w_ih = rng.standard_normal((ng * H, I)).astype(np.float32)
    w_hh = rng.standard_normal((ng * H, H)).astype(np.float32)
    bias = rng.standard_normal(ng * H).astype(np.float32)
    peep = rng.standard_normal((ng - 1) * H).astype(np.float32) if peephole else None
    packed = _scan.pack_fused_cell(w_ih, w_hh, bias, peep, H, True)
    assert packed.ctypes.data % 64 == 0 and packed.flags.c_contiguous
    n_groups, rows = -(-H // V), I + H + 1 + peephole
    blocks = packed.reshape(n_groups, rows, ng, V)
    wt = np.concatenate([w_ih, w_hh], axis=1).T          # (K, ng*H)
    expected = np.zeros((n_groups, rows, ng, V), np.float32)
    for j in range(H):
        u, lane = divmod(j, V)
        for q in range(ng):
            expected[u, :I + H, q, lane] = wt[:, q * H + j]
            expected[u, I + H, q, lane] = bias[q * H + j]
        if peephole:
            for q in range(ng - 1):
                expected[u, I + H + 1, q, lane] = peep[q * H + j]
    np.testing.assert_array_equal(blocks, expected)


def test_pack_rejects_bad_shapes():
    w = np.zeros((12, 3), np.float32)
    with pytest.raises(ValueError, match="fused cell shapes"):
        _scan.pack_fused_cell(w, np.zeros((12, 3), np.float32), np.zeros(12, np.float32),
                              None, 5, False)
    with pytest.raises(ValueError, match="peephole shape"):
        _scan.pack_fused_cell(w, np.zeros((12, 3), np.float32), np.zeros(12, np.float32),
                              np.zeros(5, np.float32), 3, False)
