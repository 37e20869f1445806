"""Network-level behaviour of every cell kind on the shared scan: thread-count
invariance, the packed small-GEMM path against BLAS, dropout, and the
network contract (config, pickling, refusal of stale activations, errors)."""

import pickle

import numpy as np
import pytest

import clstm
import clstm._rnn as rnn_module
from clstm import _scan

pytestmark = pytest.mark.kernel

# (class, options): every cell kind and a combination of the LSTM options
CELLS = [
    (clstm.LSTM, {}),
    (clstm.LSTM, {"proj_size": 3}),
    (clstm.LSTM, {"peephole": True}),
    (clstm.LSTM, {"coupled_gates": True}),
    (clstm.LSTM, {"coupled_gates": True, "peephole": True}),
    (clstm.LSTM, {"layer_norm": True}),
    (clstm.LSTM, {"proj_size": 4, "peephole": True, "layer_norm": True}),
    (clstm.GRU, {}),
]
IDS = ["lstm", "proj", "peephole", "cifg", "cifg-peephole", "layernorm", "proj-peep-ln", "gru"]


def _make(cls, options, I, H, **kw):
    return cls(I, H, random_state=0, **options, **kw)


def _assert_close(actual, desired, rel, name=""):
    """max |actual - desired| <= rel * max(1, max |desired|): float32 rounding
    grows with the size of the values (large under layer norm)."""
    scale = max(1.0, float(np.max(np.abs(desired))))
    err = float(np.max(np.abs(np.asarray(actual, np.float64) - desired)))
    assert err <= rel * scale, f"{name}: max abs error {err:.3g} > {rel} * {scale:.3g}"


def _run(net, X, lengths, seed=1):
    """forward + backward with fixed random output/state gradients."""
    rng = np.random.default_rng(seed)
    out, state = net.run(X, None, lengths)
    grad_out = rng.standard_normal(out.shape)
    grad_state = tuple(rng.standard_normal(s.shape) for s in state)
    grad_X = net.backward_state(grad_out, grad_state)
    return out, state, grad_X, dict(net.grads)


@pytest.mark.parametrize("cls,options", CELLS, ids=IDS)
def test_thread_count_does_not_change_results(monkeypatch, cls, options):
    monkeypatch.setattr(rnn_module, "FIXED_PART_MIN_WORK", 0)
    monkeypatch.setattr(rnn_module, "MIN_ROWS_PER_THREAD", 1)
    monkeypatch.setattr(clstm._parallel, "ROWS_PER_FIXED_PART", 2)   # training parts
    rng = np.random.default_rng(0)
    X = rng.standard_normal((9, 6, 5))
    lengths = rng.integers(1, 7, size=9)
    results = []
    for n_jobs in (1, 2, 3):
        net = _make(cls, options, 5, 7, num_layers=2, bidirectional=True, dtype="float64",
                    n_jobs=n_jobs)
        results.append(_run(net, X, lengths))
    for other in results[1:]:
        np.testing.assert_allclose(other[0], results[0][0], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(other[2], results[0][2], rtol=1e-12, atol=1e-12)
        for a, b in zip(other[1], results[0][1]):
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        for name, g in results[0][3].items():
            np.testing.assert_allclose(other[3][name], g, rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("cls,options", CELLS, ids=IDS)
@pytest.mark.parametrize("I", [3, 40])          # fused thin-input path and packed projection
@pytest.mark.skipif(not _scan.HAVE_PACKED_GEMM, reason="build without the small-GEMM kernel")
def test_packed_small_gemm_equals_blas_path(monkeypatch, cls, options, I):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((6, 5, I)).astype(np.float32)
    lengths = np.array([5, 1, 3, 5, 2, 4])
    results = {}
    for use in (True, False):
        monkeypatch.setattr(rnn_module, "USE_PACKED_GEMM", use)
        net = _make(cls, options, I, 8, num_layers=2, bidirectional=True)
        results[use] = _run(net, X, lengths)
    packed, blas = results[True], results[False]
    _assert_close(packed[0], blas[0], 1e-5, "out")
    _assert_close(packed[2], blas[2], 1e-5, "grad_X")
    for name, g in blas[3].items():
        _assert_close(packed[3][name], g, 5e-5, name)


@pytest.mark.parametrize("cls,options", CELLS, ids=IDS)
def test_float32_follows_float64(cls, options):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((5, 7, 4))
    lengths = np.array([7, 3, 6, 1, 5])
    net64 = _make(cls, options, 4, 6, num_layers=2, bidirectional=True, dtype="float64")
    net32 = _make(cls, options, 4, 6, num_layers=2, bidirectional=True, dtype="float32")
    net32.load_state_dict(net64.state_dict())
    r64, r32 = _run(net64, X, lengths), _run(net32, X.astype(np.float32), lengths)
    assert r32[0].dtype == np.float32
    _assert_close(r32[0], r64[0], 2e-5, "out")
    _assert_close(r32[2], r64[2], 2e-5, "grad_X")
    for name, g in r64[3].items():
        _assert_close(r32[3][name], g, 5e-5, name)


@pytest.mark.parametrize("cls,options", CELLS, ids=IDS)
def test_dropout_masks_are_seeded_and_only_in_training(cls, options):
    X = np.random.default_rng(3).standard_normal((4, 6, 3))
    kw = dict(num_layers=2, dtype="float64", dropout=0.5, recurrent_dropout=0.5)
    a, b = _make(cls, options, 3, 5, **kw), _make(cls, options, 3, 5, **kw)
    out_eval, _ = a.run(X, keep_cache=False)
    out_a, _ = a.train().run(X)
    out_b, _ = b.train().run(X)
    np.testing.assert_array_equal(out_a, out_b)            # same seed, same masks
    assert not np.allclose(out_a, out_eval)                # dropout changed something
    out_eval2, _ = a.eval().run(X, keep_cache=False)
    np.testing.assert_array_equal(out_eval, out_eval2)     # eval: deterministic, no masks


@pytest.mark.parametrize("cls,options", CELLS, ids=IDS)
def test_config_pickle_and_state_dict_round_trip(cls, options):
    net = _make(cls, options, 3, 6, num_layers=2, bidirectional=True)
    X = np.random.default_rng(4).standard_normal((3, 4, 3)).astype(np.float32)
    out, _ = net.run(X, keep_cache=False)
    twin = type(net)(**net.get_config())
    twin.load_state_dict(net.state_dict())
    np.testing.assert_array_equal(twin.run(X, keep_cache=False)[0], out)
    clone = pickle.loads(pickle.dumps(net))
    np.testing.assert_array_equal(clone.run(X, keep_cache=False)[0], out)
    assert repr(net).startswith(cls.__name__ + "(3, 6")


@pytest.mark.parametrize("cls,options", CELLS, ids=IDS)
def test_backward_refuses_parameters_edited_in_place(cls, options):
    net = _make(cls, options, 3, 6, dtype="float64")
    X = np.ones((2, 3, 3))
    out, _ = net.run(X)
    net.params["weight_hh_l0"][0, 0] += 0.5
    with pytest.raises(RuntimeError, match="modified in place"):
        net.backward_state(np.ones_like(out))
    out, _ = net.run(X)                       # a fresh forward makes it valid again
    assert net.backward_state(np.ones_like(out)).shape == X.shape


def test_parameter_names_and_shapes():
    I, H, P = 5, 8, 3
    net = clstm.LSTM(I, H, num_layers=2, bidirectional=True, proj_size=P, peephole=True,
                     layer_norm=True)
    shapes = {k: v.shape for k, v in net.params.items()}
    assert shapes["weight_ih_l0"] == (4 * H, I)
    assert shapes["weight_ih_l1_reverse"] == (4 * H, 2 * P)
    assert shapes["weight_hh_l1"] == (4 * H, P)
    assert shapes["weight_hr_l0_reverse"] == (P, H)
    assert shapes["weight_peephole_l1"] == (3 * H,)
    assert shapes["weight_ln_ih_l0"] == shapes["weight_ln_hh_l0"] == (4 * H,)
    assert shapes["weight_ln_c_l1"] == shapes["bias_ln_c_l1"] == (H,)
    np.testing.assert_array_equal(net.params["weight_ln_c_l0"], 1.0)
    np.testing.assert_array_equal(net.params["bias_ln_c_l0"], 0.0)
    cifg = clstm.LSTM(I, H, coupled_gates=True, peephole=True)
    assert cifg.params["weight_ih_l0"].shape == (3 * H, I)
    assert cifg.params["weight_peephole_l0"].shape == (2 * H,)
    gru = clstm.GRU(I, H)
    assert sorted(gru.params) == ["bias_hh_l0", "bias_ih_l0", "weight_hh_l0", "weight_ih_l0"]
    assert gru.params["weight_hh_l0"].shape == (3 * H, H)
    out, h_n = gru.forward(np.zeros((2, 4, I)))
    assert out.shape == (2, 4, H) and h_n.shape == (1, 2, H)
    out, (h_n, c_n) = net.forward(np.zeros((2, 4, I)))
    assert out.shape == (2, 4, 2 * P) and h_n.shape == (4, 2, P) and c_n.shape == (4, 2, H)


@pytest.mark.parametrize("kw,error,match", [
    ({"proj_size": 8}, ValueError, "proj_size"),
    ({"proj_size": -1}, ValueError, "proj_size"),
    ({"proj_size": 1.5}, TypeError, "proj_size"),
    ({"peephole": "yes"}, TypeError, "peephole"),
    ({"coupled_gates": 1}, TypeError, "coupled_gates"),
    ({"layer_norm": None}, TypeError, "layer_norm"),
    ({"n_jobs": 0}, ValueError, "n_jobs"),
    ({"dropout": 1.0}, ValueError, "dropout"),
])
def test_bad_options_are_refused_at_construction(kw, error, match):
    with pytest.raises(error, match=match):
        clstm.LSTM(3, 8, **kw)


def test_wrong_initial_states_are_refused():
    gru = clstm.GRU(3, 4)
    X = np.zeros((2, 5, 3))
    with pytest.raises(ValueError, match="h0"):
        gru.forward(X, h0=np.zeros((1, 2, 5)))
    lstmp = clstm.LSTM(3, 4, proj_size=2)
    with pytest.raises(ValueError, match="h0"):
        lstmp.forward(X, h0=np.zeros((1, 2, 4)))          # h has proj_size units
    out, _ = lstmp.forward(X, h0=np.zeros((1, 2, 2)), c0=np.zeros((1, 2, 4)))
    assert out.shape == (2, 5, 2)
    with pytest.raises(ValueError, match="state"):
        gru.run(X, (np.zeros((1, 2, 4)), np.zeros((1, 2, 4))))


def test_state_dict_of_another_cell_is_refused():
    with pytest.raises(ValueError, match="missing keys"):
        clstm.LSTM(3, 4, peephole=True).load_state_dict(clstm.LSTM(3, 4).state_dict())
    with pytest.raises(ValueError, match="shape"):
        clstm.GRU(3, 4).load_state_dict(clstm.LSTM(3, 4).state_dict())


@pytest.mark.parametrize("cls,options", CELLS, ids=IDS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_step_by_step_equals_the_whole_sequence(cls, options, dtype):
    rng = np.random.default_rng(5)
    X = rng.standard_normal((3, 7, 4)).astype(dtype)
    net = _make(cls, options, 4, 6, num_layers=2, dtype=dtype)
    state0 = tuple(rng.standard_normal(s.shape).astype(dtype)
                   for s in net.run(X, keep_cache=False)[1])
    out, final = net.run(X, state0, keep_cache=False)
    state, ys = state0, []
    for t in range(X.shape[1]):
        y, state = net.step(X[:, t], state)
        ys.append(y)
    # float32: the step's products (BLAS GEMV) sum in another order than the whole
    # sequence's (the packed kernel); layer norm's division amplifies that rounding
    # to a few 1e-6 (seen in the bounds-checked -O0 build)
    tol = 1e-12 if dtype == "float64" else 1e-5
    np.testing.assert_allclose(np.stack(ys, axis=1), out, rtol=tol, atol=tol)
    for a, b in zip(state, final):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    y0, s0 = net.step(X[:, 0])                     # no state: zeros
    np.testing.assert_allclose(y0, net.run(X[:, :1], keep_cache=False)[0][:, 0], rtol=tol,
                               atol=tol)


def test_step_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="unidirectional"):
        clstm.LSTM(3, 4, bidirectional=True).step(np.zeros((1, 3)))
    net = clstm.GRU(3, 4)
    with pytest.raises(ValueError, match="x_t must have shape"):
        net.step(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="state must be a tuple"):
        net.step(np.zeros((2, 3)), np.zeros((1, 2, 4)))
    with pytest.raises(ValueError, match="state 'h'"):
        net.step(np.zeros((2, 3)), (np.zeros((1, 3, 4)),))
    with pytest.raises(ValueError, match="NaN"):
        net.step(np.full((2, 3), np.nan))
