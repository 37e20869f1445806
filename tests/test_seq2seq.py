"""LSTMSeq2SeqRegressor / Seq2SeqModel: exact gradients (central differences,
float64), a pure-NumPy reference of teacher-forced training outputs and of
free-running decoding, predict against a hand-written step loop, the
scikit-learn API (clone, pickle, save/load, warm start, ragged input) and
the refusals."""

import pickle
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError

import clstm
from clstm import LSTMSeq2SeqRegressor
from clstm._reference import reference_network_forward
from clstm._seq2seq import Seq2SeqModel
from _finite_differences import check_loss_gradient

ATTENTION = ["general", "dot", None]
FAST = dict(hidden_size=5, max_iter=3, random_state=0)


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def _model(attention, dtype="float64", cell="lstm", num_layers=2, F=2, K=2, horizon=3):
    params = dict(hidden_size=3, num_layers=num_layers, bidirectional=False, cell=cell,
                  dropout=0.0, recurrent_dropout=0.0, dtype=dtype, n_jobs=None)
    model = Seq2SeqModel.create(F, params, K, horizon, attention, np.random.RandomState(0))
    if model.attention is not None and attention == "general":
        model.attention.params["weight"] *= 3.0      # a softmax far from uniform
    return model


def _batch(B=4, T=5, F=2, K=2, horizon=3, seed=1):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(B, T, F))
    lengths = np.array([5, 2, 4, 1])[:B]
    Y = rng.normal(size=(B, horizon, K))
    W = rng.uniform(0.5, 2, size=B)
    return X, lengths, Y, W


# ----------------------------------------------------------------------------
# gradients
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("attention,cell", [("general", "lstm"), ("dot", "lstm"),
                                            (None, "lstm"), ("general", "gru")])
def test_gradient_equals_central_differences(attention, cell):
    """Every parameter (encoder, decoder, attention, head), lengths, L2, float64."""
    model = _model(attention, cell=cell)
    X, lengths, Y, W = _batch()
    alpha = 0.2
    loss, grads = model.loss_and_grad(X, lengths, Y, W, alpha=alpha)
    assert set(grads) == set(model.params)
    rng = np.random.default_rng(0)
    check_loss_gradient(model, grads, ((X, lengths, Y, W), {"alpha": alpha}),
                        lambda name, size: (range(size) if name.startswith(("attention.", "head."))
                                            else rng.choice(size, min(4, size), replace=False)))


def test_float32_gradients_agree_with_float64():
    m64, m32 = _model("general"), _model("general", dtype="float32")
    for name, p in m64.params.items():
        m32.params[name][...] = p.astype(np.float32)
    X, lengths, Y, W = _batch()
    l64, g64 = m64.loss_and_grad(X, lengths, Y, W, alpha=0.1)
    l32, g32 = m32.loss_and_grad(X.astype(np.float32), lengths, Y.astype(np.float32), W,
                                 alpha=0.1)
    assert abs(l32 - l64) <= 1e-5 * abs(l64)
    for name in g64:
        assert g32[name].dtype == np.float32
        np.testing.assert_allclose(g32[name], g64[name], rtol=2e-3, atol=2e-5, err_msg=name)


# ----------------------------------------------------------------------------
# a pure-NumPy reference
# ----------------------------------------------------------------------------
def _reference_outputs(model, X, lengths, decoder_inputs):
    """Encoder and decoder by clstm._reference; attention and head by loops over
    sequences and decoder steps, reading only each sequence's valid steps."""
    E, state, _ = reference_network_forward(model.network.state_dict(), X, lengths=lengths)
    H, _, _ = reference_network_forward(model.decoder.state_dict(), decoder_inputs,
                                        state=state)
    W_o, b_o = model.head_weight, model.head_bias
    Z = np.zeros(H.shape[:2] + (model.n_outputs,))
    for b in range(X.shape[0]):
        e = E[b, :lengths[b]]
        for j in range(H.shape[1]):
            h = H[b, j]
            if model.attention is None:
                Z[b, j] = h @ W_o + b_o
                continue
            keys = e @ model.attention.params["weight"].T if model.attention.kind == "general" \
                else e
            s = np.array([h @ k for k in keys])
            a = np.exp(s - s.max())
            a /= a.sum()
            Z[b, j] = np.concatenate([h, a @ e]) @ W_o + b_o
    return Z


@pytest.mark.parametrize("attention", ATTENTION)
def test_teacher_forced_outputs_equal_the_reference(attention):
    model = _model(attention)
    X, lengths, Y, _ = _batch()
    garbage = X.copy()
    garbage[np.arange(X.shape[1])[None, :] >= lengths[:, None]] = 1e6
    Z, _ = model.teacher_forced(garbage, lengths, Y)
    ref = _reference_outputs(model, X, lengths, model.decoder_inputs(Y))
    np.testing.assert_allclose(Z, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("attention", ATTENTION)
def test_decoding_equals_the_reference_fed_its_own_predictions(attention):
    """Free-running decoding: the reference reruns the teacher-forced reference with
    the predictions so far as the decoder's inputs (nothing of net.step)."""
    model = _model(attention)
    X, lengths, Y, _ = _batch()
    pred = model.decode(X, lengths)
    fed = np.zeros_like(Y)
    for j in range(Y.shape[1]):
        ref = _reference_outputs(model, X, lengths, model.decoder_inputs(fed))
        fed[:, j] = ref[:, j]
    np.testing.assert_allclose(pred, fed, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------
# the estimator
# ----------------------------------------------------------------------------
def _series_windows(n=300, lookback=16, horizon=4, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    series = np.column_stack([np.sin(t / 5.0), np.cos(t / 7.0)]) + 0.05 * rng.normal(size=(n, 2))
    return clstm.make_windows(series, lookback=lookback, horizon=horizon)


def test_predict_equals_a_hand_written_step_loop():
    X, y = _series_windows()              # y (n, horizon, 2)
    est = LSTMSeq2SeqRegressor(dtype="float64", **FAST).fit(X, y)
    x_mean, x_scale = est._x_stats
    y_mean, y_scale = est._y_stats
    enc, dec, model = est.lstm_, est.decoder_, est._model
    W_a = model.attention.params["weight"]
    E, (h, c) = enc.forward((X - x_mean) / x_scale)
    state = (h, c)
    x = np.zeros((len(X), 3))
    x[:, 2] = 1.0                           # the start input
    steps = []
    for _ in range(est.horizon_):
        out, state = dec.step(x, state)
        scores = np.einsum("bp,btp->bt", out, E @ W_a.T)
        a = np.exp(scores - scores.max(axis=1, keepdims=True))
        a /= a.sum(axis=1, keepdims=True)
        context = np.einsum("bt,btp->bp", a, E)
        z = np.concatenate([out, context], axis=1) @ model.head_weight + model.head_bias
        steps.append(z * y_scale + y_mean)
        x = np.concatenate([z, np.zeros((len(X), 1))], axis=1)
    np.testing.assert_allclose(est.predict(X), np.stack(steps, axis=1), rtol=1e-10,
                               atol=1e-10)


@pytest.mark.parametrize("shape", ["1d", "2d", "3d"])
def test_target_layouts_round_trip(shape):
    X, y = _series_windows()
    y = {"1d": y[:, 0, 0], "2d": y[..., 0], "3d": y}[shape]
    est = LSTMSeq2SeqRegressor(**FAST).fit(X, y)
    assert est.predict(X).shape == y.shape
    assert est.horizon_ == (1 if shape == "1d" else 4)
    assert est.n_outputs_ == (2 if shape == "3d" else 1)
    assert np.isfinite(est.score(X, y))


def test_padding_never_changes_a_result_and_attention_weights():
    X, y = _series_windows(n=120)
    lengths = np.random.default_rng(0).integers(3, X.shape[1] + 1, size=len(X))
    ragged = [X[i, -lengths[i]:] for i in range(len(X))]     # the most recent steps
    padded = np.full_like(X, np.nan)
    for i, seq in enumerate(ragged):
        padded[i, :lengths[i]] = seq
    a = LSTMSeq2SeqRegressor(**FAST).fit(ragged, y)
    b = LSTMSeq2SeqRegressor(**FAST).fit(padded, y, lengths=lengths)
    np.testing.assert_array_equal(a.predict(ragged), b.predict(padded, lengths=lengths))
    weights = a.attention_weights(ragged)
    assert [w.shape for w in weights] == [(4, L) for L in lengths]
    for w, v in zip(weights, b.attention_weights(padded, lengths=lengths)):
        np.testing.assert_array_equal(w, v)
        np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-6)
    full = a.attention_weights(X)
    assert full.shape == (len(X), 4, X.shape[1])
    # one sequence alone gives what it gives in a batch
    np.testing.assert_allclose(a.predict(ragged[:1]), a.predict(ragged)[:1], rtol=1e-6,
                               atol=1e-7)


def test_clone_pickle_save_load_and_warm_start(tmp_path):
    X, y = _series_windows()
    est = LSTMSeq2SeqRegressor(attention="dot", **FAST).fit(X, y)
    params = clone(est).get_params()
    assert params["attention"] == "dot" and "bidirectional" not in params
    est.save(tmp_path / "s2s.npz")
    for other in (clstm.load(tmp_path / "s2s.npz"), pickle.loads(pickle.dumps(est)),
                  LSTMSeq2SeqRegressor.load(tmp_path / "s2s.npz")):
        assert other.horizon_ == 4 and other.attention == "dot"
        np.testing.assert_array_equal(other.predict(X), est.predict(X))
    resumed = clstm.load(tmp_path / "s2s.npz").partial_fit(X, y)
    est.partial_fit(X, y)
    np.testing.assert_array_equal(resumed.predict(X), est.predict(X))
    assert est.n_iter_ == 4
    est.set_params(warm_start=True, max_iter=2).fit(X, y)
    assert est.n_iter_ == 6
    with pytest.raises(ValueError, match="horizon 4"):
        est.partial_fit(X, y[:, :2])
    est.set_params(attention="general")
    with pytest.raises(ValueError, match="differs from the fitted model"):
        est.fit(X, y)


def test_learns_a_multi_step_forecast():
    X, y = _series_windows(horizon=6)
    est = LSTMSeq2SeqRegressor(hidden_size=16, max_iter=40, learning_rate_init=1e-2,
                               random_state=0).fit(X[:200], y[:200])
    assert est.score(X[200:], y[200:]) > 0.9


def test_refusals():
    X, y = _series_windows()
    with pytest.raises(ValueError, match="'attention' must be None, 'general' or 'dot'"):
        LSTMSeq2SeqRegressor(attention="additive").fit(X, y)
    with pytest.raises(TypeError, match="unexpected keyword argument 'bidirectional'"):
        LSTMSeq2SeqRegressor(bidirectional=True)
    with pytest.raises(NotFittedError):
        LSTMSeq2SeqRegressor().predict(X)
    with pytest.raises(ValueError, match="y must be"):
        LSTMSeq2SeqRegressor(**FAST).fit(X, y[..., None])
    est = LSTMSeq2SeqRegressor(**FAST).fit(X, y)
    with pytest.raises(ValueError, match="use predict"):
        est.predict_step(X[:, 0])
    plain = LSTMSeq2SeqRegressor(attention=None, **FAST).fit(X, y)
    with pytest.raises(ValueError, match="no attention weights"):
        plain.attention_weights(X)
    pytest.importorskip("onnx")
    with pytest.raises(ValueError, match="cannot be exported to ONNX"):
        clstm.export_onnx(est, None)


def test_sample_weights_are_repetitions_and_early_stopping_runs():
    X, y = _series_windows(n=120)
    w = np.ones(len(X))
    w[:10] = 3
    weighted = LSTMSeq2SeqRegressor(**FAST).fit(X, y, sample_weight=w)
    repeated = LSTMSeq2SeqRegressor(**FAST).fit(np.concatenate([X] + [X[:10]] * 2),
                                                np.concatenate([y] + [y[:10]] * 2))
    np.testing.assert_array_equal(weighted.predict(X), repeated.predict(X))
    np.testing.assert_array_equal(weighted._y_stats[0], repeated._y_stats[0])
    est = LSTMSeq2SeqRegressor(early_stopping=True, **dict(FAST, max_iter=4)).fit(X, y)
    assert len(est.validation_scores_) == est.n_iter_
    assert np.all(np.isfinite(est.validation_scores_))
