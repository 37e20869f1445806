"""Streaming prediction on fitted estimators: predict_step / predict_proba_step.

Stepping a window's steps one at a time from the zero state equals predict
on the window (sequence-to-one: after step t, predict on X[:, :t + 1]; per
step: predict's output at step t), for every cell, with the estimator's
input standardisation and target de-standardisation; the state is returned,
never stored, so interleaved streams stay independent.
"""

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from clstm import LSTMClassifier, LSTMRegressor

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

VARIANTS = [
    {},
    {"cell": "gru"},
    {"proj_size": 3},
    {"peephole": True, "coupled_gates": True},
    {"layer_norm": True},
    {"num_layers": 2},
    {"cell": "gru", "num_layers": 2},
]
IDS = ["lstm", "gru", "proj", "peephole-cifg", "layernorm", "lstm-2layers", "gru-2layers"]

# float64 networks: stepping and the whole-window scan differ only by rounding
TOL = dict(rtol=1e-9, atol=1e-10)
FAST = dict(hidden_size=6, max_iter=3, dtype="float64", random_state=0)


def _series(n=24, T=7, F=2, seed=0):
    """Inputs far from zero mean / unit scale, so the standardisation matters."""
    rng = np.random.default_rng(seed)
    X = 40.0 + 15.0 * rng.standard_normal((n, T, F))
    return X, 1000.0 + 300.0 * (X[:, :, 0].mean(axis=1) - 40.0) / 15.0 + X[:, -1, -1]


def _stepped(step, X, state=None):
    """The outputs of step over X's timesteps (a list, one per step) and the last state."""
    outs = []
    for t in range(X.shape[1]):
        y_t, state = step(X[:, t], state)
        outs.append(y_t)
    return outs, state


@pytest.mark.parametrize("kw", VARIANTS, ids=IDS)
def test_regressor_steps_equal_predict_on_every_prefix(kw):
    X, y = _series()
    reg = LSTMRegressor(**FAST, **kw).fit(X, y)
    outs, _ = _stepped(reg.predict_step, X)
    assert outs[-1].shape == (X.shape[0],)
    for t, y_t in enumerate(outs):
        np.testing.assert_allclose(y_t, reg.predict(X[:, :t + 1]), **TOL)
    # de-standardised: the predictions live on the targets' scale
    assert abs(outs[-1].mean() - 1000.0) < 500.0


@pytest.mark.parametrize("kw", VARIANTS, ids=IDS)
def test_per_step_regressor_and_classifier_equal_predict_at_every_step(kw):
    X, y = _series()
    Y = np.stack([X[:, :, 0].cumsum(axis=1), 1e3 * X[:, :, 1]], axis=-1)     # (n, T, 2)
    reg = LSTMRegressor(return_sequences=True, **FAST, **kw).fit(X, Y)
    outs, _ = _stepped(reg.predict_step, X)
    P = reg.predict(X)
    assert P.shape == Y.shape
    for t, y_t in enumerate(outs):
        assert y_t.shape == (X.shape[0], 2)
        np.testing.assert_allclose(y_t, P[:, t], **TOL)

    labels = np.where(X[:, :, 0] > 40.0, "up", "down")
    clf = LSTMClassifier(return_sequences=True, **FAST, **kw).fit(X, labels)
    probas, _ = _stepped(clf.predict_proba_step, X)
    steps, _ = _stepped(clf.predict_step, X)
    P, L = clf.predict_proba(X), clf.predict(X)
    for t in range(X.shape[1]):
        np.testing.assert_allclose(probas[t], P[:, t], **TOL)
        np.testing.assert_array_equal(steps[t], L[:, t])


@pytest.mark.parametrize("n_classes", [2, 3])
@pytest.mark.parametrize("kw", [{}, {"cell": "gru"}], ids=["lstm", "gru"])
def test_classifier_steps_equal_predict_and_predict_proba(kw, n_classes):
    X, y = _series(n=30)
    labels = np.array(["a", "b", "c"])[np.digitize(y, np.quantile(y, [0.5, 0.75]))
                                       % n_classes]
    clf = LSTMClassifier(**FAST, **kw).fit(X, labels)
    probas, _ = _stepped(clf.predict_proba_step, X)
    steps, _ = _stepped(clf.predict_step, X)
    assert probas[-1].shape == (X.shape[0], n_classes)
    for t in range(X.shape[1]):
        np.testing.assert_allclose(probas[t], clf.predict_proba(X[:, :t + 1]), **TOL)
        np.testing.assert_array_equal(steps[t], clf.predict(X[:, :t + 1]))
    np.testing.assert_array_equal(steps[-1], clf.classes_[probas[-1].argmax(axis=1)])


def test_float32_steps_match_predict_to_float32_rounding():
    X, y = _series()
    reg = LSTMRegressor(hidden_size=6, max_iter=3, random_state=0).fit(X, y)
    outs, _ = _stepped(reg.predict_step, X)
    np.testing.assert_allclose(outs[-1], reg.predict(X), rtol=1e-4, atol=1e-4 * np.std(y))


def test_streams_are_independent_and_the_state_is_not_stored():
    X, y = _series()
    reg = LSTMRegressor(**FAST).fit(X, y)
    before = {k: v for k, v in vars(reg).items()}
    expected = reg.predict(X[:2])
    # two streams, each with its own state, their calls interleaved
    state_a = state_b = None
    for t in range(X.shape[1]):
        y_a, state_a = reg.predict_step(X[0:1, t], state_a)
        y_b, state_b = reg.predict_step(X[1:2, t], state_b)
    np.testing.assert_allclose(np.concatenate([y_a, y_b]), expected, **TOL)
    # the same steps as one batch of two streams
    outs, state = _stepped(reg.predict_step, X[:2])
    np.testing.assert_allclose(outs[-1], expected, **TOL)
    # a state is a value: stepping from it again gives the same result and leaves it as it was
    kept = tuple(s.copy() for s in state)
    first, _ = reg.predict_step(X[:2, 0], state)
    again, _ = reg.predict_step(X[:2, 0], state)
    np.testing.assert_array_equal(first, again)
    for s, k in zip(state, kept):
        np.testing.assert_array_equal(s, k)
    # nothing about the streams is stored on the estimator
    assert set(vars(reg)) == set(before)
    assert all(vars(reg)[k] is v for k, v in before.items())
    np.testing.assert_array_equal(reg.predict(X[:2]), expected)


def test_univariate_2d_layout_takes_a_column_per_step():
    X, y = _series(F=1)
    X2 = X[:, :, 0]                          # (n, T): univariate sequences
    reg = LSTMRegressor(**FAST).fit(X2, y)
    outs, _ = _stepped(reg.predict_step, X2)     # x_t = X2[:, t] of shape (n,)
    np.testing.assert_allclose(outs[-1], reg.predict(X2), **TOL)
    y_col, _ = reg.predict_step(X2[:, :1])       # (n, 1) is accepted too
    np.testing.assert_array_equal(y_col, outs[0])


def test_refusals():
    X, y = _series()
    with pytest.raises(NotFittedError):
        LSTMRegressor().predict_step(X[:, 0])
    bi = LSTMRegressor(bidirectional=True, **FAST).fit(X, y)
    with pytest.raises(ValueError, match="bidirectional"):
        bi.predict_step(X[:, 0])
    clf = LSTMClassifier(bidirectional=True, **FAST).fit(X, y > np.median(y))
    for method in (clf.predict_step, clf.predict_proba_step):
        with pytest.raises(ValueError, match="bidirectional"):
            method(X[:, 0])
    reg = LSTMRegressor(**FAST).fit(X, y)
    with pytest.raises(ValueError, match="n_streams, 2"):
        reg.predict_step(X[0, 0])                # one stream without its batch axis
    with pytest.raises(ValueError, match="n_streams, 2"):
        reg.predict_step(X[:, :, 0])             # wrong number of features
    with pytest.raises(ValueError):
        reg.predict_step(np.full((3, 2), np.nan))
    _, state = reg.predict_step(X[:3, 0])
    with pytest.raises(ValueError, match="state"):
        reg.predict_step(X[:4, 1], state)        # a state of 3 streams for 4


def test_readme_live_forecast_loop():
    """The README's loop: after a window's values, the forecast is predict(window)."""
    from clstm import make_windows

    t = np.arange(200)
    series = 20.0 + 5.0 * np.sin(t / 6.0) + 0.1 * np.random.default_rng(0).standard_normal(200)
    X, y = make_windows(series, lookback=24, horizon=1)
    reg = LSTMRegressor(**FAST).fit(X[:-40], y[:-40])
    state = None
    for value in series[:24]:
        forecast, state = reg.predict_step(np.array([[value]]), state)
    np.testing.assert_allclose(forecast, reg.predict(X[:1]), **TOL)
    for value in series[24:30]:
        forecast, state = reg.predict_step(np.array([[value]]), state)
    # the state carried over 30 values: the same as predict on the 30-step history
    np.testing.assert_allclose(forecast, reg.predict(series[None, :30, None]), **TOL)
