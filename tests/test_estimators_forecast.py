"""Recursive forecasts and (n, horizon, n_columns) targets.

Oracle: the loop written by hand over ``predict`` (take the last ``lookback``
observations, predict, append the prediction, repeat); the values must be
equal, not close.
"""

import pickle

import numpy as np
import pytest
from sklearn.metrics import r2_score

import clstm
from clstm import LSTMRegressor, make_windows

FAST = dict(hidden_size=6, max_iter=3, random_state=0)
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _series(T=160, k=2):
    t = np.arange(T)
    cols = [np.sin(t / 5), np.cos(t / 7), np.sin(t / 3) * 0.5]
    return np.stack(cols[:k], axis=1)


def _by_hand(reg, history, steps, lookback, h, k):
    """The recursive loop over predict for a batch (n, T, k)."""
    series = np.array(history, dtype=np.float64)
    out = []
    while sum(p.shape[1] for p in out) < steps:
        pred = reg.predict(series[:, -lookback:])
        pred = np.asarray(pred).reshape(len(series), h, k)
        out.append(pred)
        series = np.concatenate([series, pred], axis=1)
    return np.concatenate(out, axis=1)[:, :steps]


def test_univariate_one_step_model_equals_the_hand_loop():
    s = _series(k=1)[:, 0]
    X, y = make_windows(s, lookback=12)
    reg = LSTMRegressor(**FAST).fit(X, y)
    assert reg.n_timesteps_in_ == 12
    f = reg.forecast(s, steps=9)
    assert f.shape == (9,)
    np.testing.assert_array_equal(f, _by_hand(reg, s[None, :, None], 9, 12, 1, 1)[0, :, 0])
    # (T, 1) history keeps its column axis
    np.testing.assert_array_equal(reg.forecast(s[:, None], 9), f[:, None])


@pytest.mark.parametrize("horizon, steps", [(1, 5), (3, 7), (4, 8)])
def test_multivariate_direct_horizon_model_feeds_back_h_steps_at_a_time(horizon, steps):
    series = _series(k=2)
    X, y = make_windows(series, lookback=10, horizon=horizon)
    reg = LSTMRegressor(**FAST).fit(X, y)
    f = reg.forecast(series, steps)
    assert f.shape == (steps, 2)
    np.testing.assert_array_equal(f, _by_hand(reg, series[None], steps, 10, horizon, 2)[0])


def test_batch_history_equals_the_hand_loop_on_the_batch():
    series = _series(k=2)
    X, y = make_windows(series, lookback=10, horizon=2)
    reg = LSTMRegressor(**FAST).fit(X, y)
    batch = np.stack([series[:100], series[30:130], series[60:160]])
    f = reg.forecast(batch, 5)
    assert f.shape == (3, 5, 2)
    np.testing.assert_array_equal(f, _by_hand(reg, batch, 5, 10, 2, 2))
    # each series alone gives the same forecast up to float32 batching
    np.testing.assert_allclose(reg.forecast(batch[1], 5), f[1], rtol=1e-5, atol=1e-6)


def test_univariate_horizon_targets_and_flattened_multicolumn_targets():
    s = _series(k=1)[:, 0]
    X, y = make_windows(s, lookback=8, horizon=3)           # y (n, 3)
    reg = LSTMRegressor(**FAST).fit(X, y)
    np.testing.assert_array_equal(reg.forecast(s, 7), _by_hand(reg, s[None, :, None], 7, 8,
                                                               3, 1)[0, :, 0])
    series = _series(k=2)
    X, y = make_windows(series, lookback=8, horizon=2)      # y (n, 2, 2)
    flat = LSTMRegressor(**FAST).fit(X, y.reshape(len(y), -1))   # step-major (n, 4)
    np.testing.assert_array_equal(flat.forecast(series, 6),
                                  _by_hand(flat, series[None], 6, 8, 2, 2)[0])


def test_lookback_argument_and_ragged_training():
    s = _series(k=1)[:, 0]
    rng = np.random.default_rng(0)
    starts = rng.integers(0, 100, size=40)
    lens = rng.integers(5, 15, size=40)
    seqs = [s[a:a + n] for a, n in zip(starts, lens)]
    y = np.array([s[a + n] for a, n in zip(starts, lens)])
    reg = LSTMRegressor(**FAST).fit(seqs, y)
    assert reg.n_timesteps_in_ is None
    with pytest.raises(ValueError, match="pass lookback="):
        reg.forecast(s, 3)
    np.testing.assert_array_equal(reg.forecast(s, 4, lookback=9),
                                  _by_hand(reg, s[None, :, None], 4, 9, 1, 1)[0, :, 0])


def test_three_d_targets_predict_score_and_persist(tmp_path):
    series = _series(k=3)
    X, y = make_windows(series, lookback=10, horizon=4)
    assert y.shape[1:] == (4, 3)
    reg = LSTMRegressor(**FAST).fit(X, y)
    pred = reg.predict(X)
    assert pred.shape == (len(X), 4, 3) and reg.n_outputs_ == 12
    assert reg.score(X, y) == pytest.approx(
        r2_score(y.reshape(len(y), -1), pred.reshape(len(y), -1)), abs=1e-12)
    reg.save(tmp_path / "m.npz")
    for back in (clstm.load(tmp_path / "m.npz"), pickle.loads(pickle.dumps(reg))):
        np.testing.assert_array_equal(back.predict(X), pred)
        np.testing.assert_array_equal(back.forecast(series, 6), reg.forecast(series, 6))
    y_t, _ = reg.predict_step(X[:2, 0])
    assert y_t.shape == (2, 4, 3)
    # continuing needs the same target shape
    reg.set_params(warm_start=True)
    with pytest.raises(ValueError, match=r"fitted with 12 of shape \(4, 3\)"):
        reg.fit(X, y.reshape(len(y), 2, 6))
    with pytest.raises(ValueError, match=r"validation_data: y has 6 outputs of shape \(2, 3\)"):
        LSTMRegressor(**FAST).fit(X, y, validation_data=(X, y[:, :2]))


def test_validation_data_with_three_d_targets_scores_like_score():
    series = _series(k=2)
    X, y = make_windows(series, lookback=10, horizon=3)
    reg = LSTMRegressor(**FAST).fit(X[:100], y[:100], validation_data=(X[100:], y[100:]))
    assert reg.validation_scores_[-1] == pytest.approx(reg.score(X[100:], y[100:]), abs=1e-7)


@pytest.mark.parametrize("make, call, match", [
    (lambda s: make_windows(s, 10, target=0), lambda r, s: r.forecast(s, 3),
     "must predict every input column: it reads 2"),
    (lambda s: make_windows(s, 10), lambda r, s: r.forecast(s[:5], 3),
     "history has 5 steps, fewer than lookback=10"),
    (lambda s: make_windows(s, 10), lambda r, s: r.forecast(s, 0), "steps must be an int"),
    (lambda s: make_windows(s, 10), lambda r, s: r.forecast(s, 2.5), "steps must be an int"),
    (lambda s: make_windows(s, 10), lambda r, s: r.forecast(s, 2, lookback=0), "lookback"),
    (lambda s: make_windows(s, 10), lambda r, s: r.forecast(s[:, :1], 2),
     "history has 1 column"),
    (lambda s: make_windows(s, 10), lambda r, s: r.forecast(s[None, None], 2),
     "history must be"),
    (lambda s: make_windows(s, 10), lambda r, s: r.forecast(np.full((20, 2), np.nan), 2),
     "NaN"),
])
def test_forecast_refuses_what_cannot_be_fed_back(make, call, match):
    series = _series(k=2)
    reg = LSTMRegressor(**FAST).fit(*make(series))
    with pytest.raises(ValueError, match=match):
        call(reg, series)


def test_forecast_refuses_per_step_models_and_unfitted():
    from sklearn.exceptions import NotFittedError
    with pytest.raises(NotFittedError):
        LSTMRegressor().forecast(np.zeros(10), 2)
    X = np.random.default_rng(0).standard_normal((20, 6, 1))
    reg = LSTMRegressor(return_sequences=True, **FAST).fit(X, X[:, :, 0])
    with pytest.raises(ValueError, match="return_sequences=True"):
        reg.forecast(np.zeros(10), 2)


def test_forecast_docstring_example_runs():
    import doctest
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in finder.find(LSTMRegressor.forecast, "forecast", globs={}):
        runner.run(test)
    assert runner.failures == 0 and runner.tries > 0


def test_seq2seq_regressor_forecasts_validates_and_schedules(tmp_path):
    from clstm import LSTMSeq2SeqRegressor
    series = _series(k=2)
    X, y = make_windows(series, lookback=10, horizon=3)          # y (n, 3, 2)
    reg = LSTMSeq2SeqRegressor(hidden_size=6, max_iter=3, random_state=0,
                               learning_rate="invscaling", early_stopping=True,
                               validation_holdout="last")
    reg.fit(X, y)
    assert reg.validation_scores_[-1] <= reg.best_validation_score_
    np.testing.assert_allclose(reg.learning_rate_curve_, [1e-3 / e ** 0.5 for e in (1, 2, 3)])
    np.testing.assert_array_equal(reg.forecast(series, 7),
                                  _by_hand(reg, series[None], 7, 10, 3, 2)[0])
    reg.save(tmp_path / "s.npz")
    back = clstm.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.forecast(series, 7), reg.forecast(series, 7))
    assert back.learning_rate_curve_ == reg.learning_rate_curve_
