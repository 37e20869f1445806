"""ConvLSTMRegressor: next-frame prediction on a ConvLSTM (clstm._nowcast).

Oracles: central finite differences (float64) of the model's loss for every
parameter, a NumPy head and loss, a hand-written forward through
clstm.ConvLSTM with the fitted weights, a hand-written forecast loop.
"""

import pickle
import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError

import clstm
from clstm._nowcast import NowcastModel
from clstm.datasets import make_moving_shapes
from _finite_differences import check_loss_gradient


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def _data(n=12, T=4, spatial=(5, 6), C=2, K=2, seed=0, per_step=False):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, T) + spatial + (C,))
    y = rng.standard_normal((n,) + ((T,) if per_step else ()) + spatial + (K,))
    return X, y


def _model(return_sequences, spatial_dims=2, C=2, K=2, num_layers=2, seed=0):
    params = {"filters": 3, "kernel_size": 3, "num_layers": num_layers, "dtype": "float64",
              "dropout": 0.0, "n_jobs": 1}
    return NowcastModel.create(C, spatial_dims, params, K, return_sequences,
                               np.random.RandomState(seed))


# ---------------------------------------------------------------------------------
# the model: gradient and head against independent oracles
# ---------------------------------------------------------------------------------
@pytest.mark.parametrize("return_sequences", [False, True])
@pytest.mark.parametrize("spatial_dims", [1, 2])
def test_gradient_matches_central_differences(return_sequences, spatial_dims):
    model = _model(return_sequences, spatial_dims)
    rng = np.random.default_rng(1)
    spatial = (4, 5) if spatial_dims == 2 else (6,)
    B, T = 3, 4
    X = rng.standard_normal((B, T) + spatial + (2,))
    lengths = np.array([4, 2, 3])
    X[1, 2:] = 0.0
    X[2, 3:] = 0.0
    if return_sequences:
        Y = rng.standard_normal((B, T) + spatial + (2,))
        W = (np.arange(T)[None, :] < lengths[:, None]) * np.array([1.0, 2.0, 0.5])[:, None]
        Y[W == 0] = 0.0
    else:
        Y = rng.standard_normal((B,) + spatial + (2,))
        W = np.array([1.0, 2.0, 0.5])
    alpha = 0.3
    _, grads = model.loss_and_grad(X, lengths, Y, W, alpha=alpha)
    pick = np.random.default_rng(2)
    check_loss_gradient(model, grads, ((X, lengths, Y, W), {"alpha": alpha}),
                        lambda name, size: pick.choice(size, min(size, 25), replace=False),
                        atol=1e-8)


def test_loss_and_head_gradients_match_numpy():
    model = _model(False, num_layers=1)
    rng = np.random.default_rng(3)
    X = rng.standard_normal((4, 3, 5, 5, 2))
    Y = rng.standard_normal((4, 5, 5, 2))
    W = np.array([1.0, 0.0, 3.0, 0.5])
    loss, grads = model.loss_and_grad(X, np.full(4, 3), Y, W)
    _, (h_n, _) = model.network.forward(X)
    H = h_n[-1]                                                   # (B, 5, 5, F)
    Z = np.einsum("bhwf,fk->bhwk", H, model.head_weight) + model.head_bias
    per_sample = 0.5 * np.mean((Z - Y) ** 2, axis=(1, 2, 3))
    assert loss == pytest.approx(np.sum(W * per_sample) / W.sum(), rel=1e-12)
    G = W[:, None, None, None] * (Z - Y) / (W.sum() * 5 * 5 * 2)
    np.testing.assert_allclose(grads["head.weight"], np.einsum("bhwf,bhwk->fk", H, G),
                               rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(grads["head.bias"], G.sum(axis=(0, 1, 2)), rtol=1e-10,
                               atol=1e-14)


# ---------------------------------------------------------------------------------
# the estimator against a hand-written forward
# ---------------------------------------------------------------------------------
def _hand_forward(est):
    """clstm.ConvLSTM with the fitted weights + the head, per-channel scaling by hand."""
    net = clstm.ConvLSTM(**est.lstm_.get_config(), random_state=0)
    net.load_state_dict(est.lstm_.state_dict())
    head_w = est._model.head_weight.astype(np.float64)
    head_b = est._model.head_bias.astype(np.float64)
    return net, head_w, head_b


def test_predict_equals_hand_written_forward_with_per_channel_standardisation():
    X, y = _data(spatial=(5, 6), C=2, K=3)
    X = X * np.array([10.0, 0.1]) + np.array([5.0, -2.0])
    y = y * np.array([3.0, 1.0, 0.5]) + 7.0
    est = clstm.ConvLSTMRegressor(filters=4, max_iter=3, dtype="float64", random_state=0)
    est.fit(X, y)
    # the statistics: per channel, over samples, steps and pixels
    x_mean, x_std = X.reshape(-1, 2).mean(axis=0), X.reshape(-1, 2).std(axis=0)
    y_mean, y_std = y.reshape(-1, 3).mean(axis=0), y.reshape(-1, 3).std(axis=0)
    net, head_w, head_b = _hand_forward(est)
    _, (h_n, _) = net.forward((X - x_mean) / x_std)
    expected = (np.einsum("bhwf,fk->bhwk", h_n[-1], head_w) + head_b) * y_std + y_mean
    np.testing.assert_allclose(est.predict(X), expected, rtol=1e-9, atol=1e-9)
    assert est.predict(X).shape == y.shape
    assert est.n_outputs_ == 3 and est.n_features_in_ == 2 and est.spatial_dims_ == 2


def test_predict_per_step_and_one_d_maps():
    X, y = _data(spatial=(7,), C=1, K=1, per_step=True)
    est = clstm.ConvLSTMRegressor(filters=3, kernel_size=5, max_iter=2, dtype="float64",
                                  return_sequences=True, standardize=False, random_state=0)
    est.fit(X, y)
    net, head_w, head_b = _hand_forward(est)
    out, _ = net.forward(X)
    expected = out @ head_w + head_b
    np.testing.assert_allclose(est.predict(X), expected, rtol=1e-10, atol=1e-12)
    assert est.spatial_dims_ == 1 and est.lstm_.kernel_size == (5,)


def test_forecast_equals_hand_written_loop():
    X, y = _data(C=2, K=2)
    est = clstm.ConvLSTMRegressor(filters=3, max_iter=2, dtype="float64", random_state=0)
    est.fit(X, y)
    frames = est.forecast(X[:5], steps=3)
    seq = X[:5]
    for k in range(3):
        nxt = est.predict(seq)
        np.testing.assert_allclose(frames[:, k], nxt, rtol=1e-9, atol=1e-10)
        seq = np.concatenate([seq, nxt[:, None]], axis=1)
    assert frames.shape == (5, 3) + X.shape[2:]


def test_forecast_continues_each_sequence_from_its_own_length():
    X, y = _data(C=1, K=1)
    est = clstm.ConvLSTMRegressor(filters=3, max_iter=2, dtype="float64", random_state=0)
    est.fit(X, y)
    lengths = np.array([4, 2, 3])
    padded = X[:3].copy()
    padded[1, 2:] = np.nan
    padded[2, 3:] = 1e30
    frames = est.forecast(padded, steps=2, lengths=lengths)
    for i, L in enumerate(lengths):
        np.testing.assert_allclose(frames[i], est.forecast(X[i:i + 1, :L], steps=2)[0],
                                   rtol=1e-10, atol=1e-12)


def test_padding_never_changes_a_result():
    X, y = _data(n=10, per_step=True)
    lengths = np.array([4, 2, 3, 4, 1, 2, 4, 3, 3, 2])
    clean, dirty = X.copy(), X.copy()
    yc, yd = y.copy(), y.copy()
    rng = np.random.default_rng(5)
    for i, L in enumerate(lengths):
        clean[i, L:] = 0.0
        dirty[i, L:] = rng.choice([np.nan, np.inf, 1e300, -7.0])
        yc[i, L:] = 0.0
        yd[i, L:] = np.nan
    kw = dict(filters=3, max_iter=2, dtype="float64", random_state=0, return_sequences=True)
    a = clstm.ConvLSTMRegressor(**kw).fit(clean, yc, lengths=lengths)
    b = clstm.ConvLSTMRegressor(**kw).fit(dirty, yd, lengths=lengths)
    assert a.loss_curve_ == b.loss_curve_
    pa, pb = a.predict(clean, lengths=lengths), b.predict(dirty, lengths=lengths)
    np.testing.assert_array_equal(pa, pb)
    assert np.all(pa[np.arange(4)[None, :] >= lengths[:, None]] == 0)
    # each sequence alone, truncated to its length, gives its valid steps
    for i in (1, 4):
        alone = a.predict(X[i:i + 1, :lengths[i]])
        np.testing.assert_allclose(pa[i, :lengths[i]], alone[0], rtol=1e-10, atol=1e-12)
    assert a.score(clean, yc, lengths=lengths) == b.score(dirty, yd, lengths=lengths)


def test_score_is_pixel_r2_per_channel():
    X, y = _data(K=2)
    est = clstm.ConvLSTMRegressor(filters=3, max_iter=2, random_state=0).fit(X, y)
    p = est.predict(X)
    r2 = [1 - np.sum((y[..., k] - p[..., k]) ** 2) / np.sum((y[..., k] - y[..., k].mean()) ** 2)
          for k in range(2)]
    assert est.score(X, y) == pytest.approx(np.mean(r2), rel=1e-10)


def test_float32_close_to_float64():
    X, y = _data()
    kw = dict(filters=3, max_iter=2, random_state=0)
    p32 = clstm.ConvLSTMRegressor(dtype="float32", **kw).fit(X, y).predict(X)
    p64 = clstm.ConvLSTMRegressor(dtype="float64", **kw).fit(X, y).predict(X)
    np.testing.assert_allclose(p32, p64, rtol=1e-3, atol=1e-3)


def test_sample_weight_two_is_a_duplicate():
    X, y = _data(n=6)
    kw = dict(filters=3, max_iter=2, dtype="float64", random_state=0, shuffle=False)
    w = clstm.ConvLSTMRegressor(**kw).fit(X, y, sample_weight=[2, 1, 1, 1, 1, 0])
    d = clstm.ConvLSTMRegressor(**kw).fit(np.concatenate([X[:1], X[:5]]),
                                          np.concatenate([y[:1], y[:5]]))
    np.testing.assert_allclose(w.predict(X), d.predict(X), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------------------------
# persistence, clone, continued training
# ---------------------------------------------------------------------------------
def test_save_load_pickle_clone(tmp_path):
    X, y = _data(C=1, K=1)
    est = clstm.ConvLSTMRegressor(filters=3, kernel_size=(3, 1), num_layers=2, max_iter=2,
                                  random_state=0).fit(X, y)
    p = est.predict(X)
    path = tmp_path / "nowcast.npz"
    est.save(path)
    for other in (clstm.load(path), clstm.ConvLSTMRegressor.load(path),
                  pickle.loads(pickle.dumps(est))):
        assert type(other) is clstm.ConvLSTMRegressor
        np.testing.assert_array_equal(other.predict(X), p)
        np.testing.assert_array_equal(other.forecast(X[:2], 2), est.forecast(X[:2], 2))
        assert other.get_params() == est.get_params()
        assert other.loss_curve_ == est.loss_curve_ and other.spatial_dims_ == 2
    # continuing a loaded model equals continuing the original
    a = clstm.load(path).partial_fit(X, y)
    b = est.partial_fit(X, y)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    c = clone(est)
    assert c.get_params() == est.get_params() and not hasattr(c, "lstm_")
    c.set_params(filters=5)
    assert c.fit(X, y).lstm_.filters == 5


def test_partial_fit_and_warm_start_continue():
    X, y = _data()
    kw = dict(filters=3, dtype="float64", random_state=0)
    two = clstm.ConvLSTMRegressor(max_iter=2, **kw).fit(X, y)
    one = clstm.ConvLSTMRegressor(max_iter=1, warm_start=True, **kw).fit(X, y)
    loss_one = one.loss_
    one.fit(X, y)
    assert one.n_iter_ == 2 and one.loss_ != loss_one
    np.testing.assert_allclose(one.predict(X), two.predict(X), rtol=1e-12, atol=1e-12)
    inc = clstm.ConvLSTMRegressor(**kw)
    inc.partial_fit(X, y)
    inc.partial_fit(X, y)
    assert inc.n_iter_ == 2 and inc.t_ == two.t_
    with pytest.raises(ValueError, match="filters=4 differs"):
        inc.set_params(filters=4).partial_fit(X, y)


def test_early_stopping_and_dropout():
    X, y = _data(n=20)
    est = clstm.ConvLSTMRegressor(filters=3, num_layers=2, dropout=0.2, max_iter=3,
                                  early_stopping=True, n_iter_no_change=1, random_state=0)
    est.fit(X, y)
    assert len(est.validation_scores_) == est.n_iter_
    assert est.best_validation_score_ == max(est.validation_scores_)


# ---------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------
def test_bad_input_errors():
    X, y = _data(K=1)
    est = clstm.ConvLSTMRegressor(filters=3, max_iter=1, random_state=0)
    with pytest.raises(NotFittedError):
        est.predict(X)
    with pytest.raises(ValueError, match="got a 3-D array"):
        est.fit(X[:, :, 0, 0], y)
    with pytest.raises(ValueError, match="at least one sample"):
        est.fit(X[:0], y[:0])
    bad = X.copy()
    bad[0, 1, 2, 3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        est.fit(bad, y)
    with pytest.raises(ValueError, match="y must have shape"):
        est.fit(X, y[:, :4])
    with pytest.raises(ValueError, match="y must have shape"):
        est.fit(X, y[..., 0])
    with pytest.raises(ValueError, match="NaN or infinite"):
        est.fit(X, np.full_like(y, np.inf))
    with pytest.raises(ValueError, match="not a list of sequences"):
        est.fit([X[0], X[1, :2]], y[:2])
    with pytest.raises(ValueError, match="lengths must be in"):
        est.fit(X, y, lengths=np.full(len(X), 9))
    with pytest.raises(clstm._validation.InvalidParameterError, match="kernel_size"):
        clstm.ConvLSTMRegressor(kernel_size=2, max_iter=1).fit(X, y)
    with pytest.raises(clstm._validation.InvalidParameterError, match="filters"):
        clstm.ConvLSTMRegressor(filters=0, max_iter=1).fit(X, y)
    est.fit(X, y)
    with pytest.raises(ValueError, match="channels"):
        est.predict(np.concatenate([X, X], axis=-1))
    with pytest.raises(ValueError, match="must be 5-D"):
        est.predict(X[:, :, 0])
    with pytest.raises(ValueError, match="steps must be an int"):
        est.forecast(X, 0)
    with pytest.raises(ValueError, match="y has shape"):
        est.score(X, y[:, :3])
    with pytest.raises(ValueError, match="same channels"):      # 2 channels in, 1 out
        est.forecast(X, 2)
    # a larger map is fine: 'same' convolutions do not fix the size
    big = np.random.default_rng(0).standard_normal((2, 4, 9, 9, 2))
    assert est.predict(big).shape == (2, 9, 9, 1)


# ---------------------------------------------------------------------------------
# the generator and learning
# ---------------------------------------------------------------------------------
def test_moving_shapes_dynamics():
    movie = make_moving_shapes(30, n_steps=7, size=10, n_shapes=1, shape_size=2,
                               return_frames=True, random_state=4)
    X, y = make_moving_shapes(30, n_steps=7, size=10, n_shapes=1, shape_size=2, random_state=4)
    np.testing.assert_array_equal(X, movie[:, :-1])
    np.testing.assert_array_equal(y, movie[:, -1])
    assert set(np.unique(movie)) <= {0.0, 1.0}
    # one 2x2 shape: its top-left corner moves by a constant velocity, reversed at walls
    for m in movie:
        corners = np.array([np.argwhere(f[..., 0])[0] if f.any() else (-1, -1) for f in m])
        assert (corners >= 0).all() and (corners <= 8).all()
        steps = np.diff(corners, axis=0)
        assert np.all(np.abs(steps) <= 1) and np.all(np.abs(steps).sum(axis=1) > 0)
    with pytest.raises(ValueError, match="shape_size"):
        make_moving_shapes(2, size=3, shape_size=4)


def test_learns_moving_shapes_better_than_persistence():
    X, y = make_moving_shapes(500, n_steps=6, size=12, n_shapes=1, random_state=0)
    Xtr, ytr, Xte, yte = X[:300], y[:300], X[300:], y[300:]
    est = clstm.ConvLSTMRegressor(filters=8, max_iter=10, learning_rate_init=0.01,
                                  batch_size=16, random_state=0).fit(Xtr, ytr)
    mse = np.mean((est.predict(Xte) - yte) ** 2)
    persistence = np.mean((Xte[:, -1] - yte) ** 2)
    assert mse < 0.4 * persistence, (mse, persistence)
    assert est.score(Xte, yte) > 0.5


def test_files_of_one_estimator_are_refused_by_another(tmp_path):
    import json
    X, y = _data(C=1, K=1)
    est = clstm.ConvLSTMRegressor(filters=3, max_iter=1, random_state=0).fit(X, y)
    path = tmp_path / "nowcast.npz"
    est.save(path)
    with pytest.raises(ValueError, match="not a LSTMClassifier"):
        clstm.LSTMClassifier.load(path)
    # a ConvLSTM network under an LSTMRegressor's name: refused, not a crash
    with np.load(path, allow_pickle=False) as f:
        contents = {k: f[k] for k in f.files}
    meta = json.loads(contents["__metadata__"].tobytes().decode())
    meta["estimator"] = "LSTMRegressor"
    meta["params"] = clstm.LSTMRegressor().get_params()
    contents["__metadata__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    forged = tmp_path / "forged.npz"
    np.savez(forged, **contents)
    with pytest.raises(ValueError, match="ConvLSTM reads maps"):
        clstm.load(forged)
