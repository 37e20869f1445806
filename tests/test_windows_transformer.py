"""LookbackWindows: the windowing step of a Pipeline (rows stay aligned with y).

Oracles: windows built by hand with slices; the scores of a Pipeline inside
GridSearchCV(TimeSeriesSplit) equal the same steps done by hand per split.
"""

import pickle
import subprocess
import sys

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, TimeSeriesSplit
from sklearn.pipeline import make_pipeline

from clstm import LookbackWindows, LSTMRegressor

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _by_hand(rows, lookback, past=None):
    full = rows if past is None else np.concatenate([past, rows])
    off = len(full) - len(rows)
    return [full[max(0, off + i - lookback + 1):off + i + 1] for i in range(len(rows))]


def _same(got, expected):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)


def test_each_row_becomes_the_window_ending_at_it():
    X = np.arange(24.0).reshape(12, 2)
    W = LookbackWindows(lookback=4).fit_transform(X)
    assert isinstance(W, list) and [len(w) for w in W] == [1, 2, 3] + [4] * 9
    _same(W, _by_hand(X, 4))
    # full windows only: an array (n, lookback, n_features)
    one = LookbackWindows(lookback=1).fit_transform(X)
    assert isinstance(one, np.ndarray) and one.shape == (12, 1, 2)
    np.testing.assert_array_equal(one[:, 0], X)


def test_history_fit_continues_the_fitted_rows_and_none_does_not():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((30, 3))
    train, test = X[:20], X[20:]
    cont = LookbackWindows(lookback=5, history="fit").fit(train)
    np.testing.assert_array_equal(cont.tail_, train[-4:])
    W = cont.transform(test)
    assert isinstance(W, np.ndarray) and W.shape == (10, 5, 3)
    _same(W, _by_hand(X, 5)[20:])                     # = windows of the whole series
    _same(LookbackWindows(lookback=5).fit(train).transform(test), _by_hand(test, 5))
    # fit_transform never prepends the tail (the training block has no known past)
    _same(LookbackWindows(lookback=5, history="fit").fit_transform(train), _by_hand(train, 5))
    # a fit block shorter than lookback - 1: the tail is all of it
    short = LookbackWindows(lookback=5, history="fit").fit(X[:2])
    _same(short.transform(X[2:6]), _by_hand(X[:6], 5)[2:])


def test_dataframe_columns_are_checked():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"a": np.arange(6.0), "b": np.ones(6)})
    t = LookbackWindows(lookback=2).fit(df)
    assert list(t.feature_names_in_) == ["a", "b"]
    _same(t.transform(df), _by_hand(df.to_numpy(), 2))
    with pytest.raises(ValueError, match="feature names"):
        t.transform(df.rename(columns={"a": "z"}))


@pytest.mark.parametrize("params, X, error, match", [
    (dict(lookback=0), np.zeros((5, 1)), ValueError, "lookback must be >= 1"),
    (dict(lookback=2.5), np.zeros((5, 1)), TypeError, "lookback must be an int"),
    (dict(history="all"), np.zeros((5, 1)), ValueError, "history must be 'none' or 'fit'"),
    ({}, np.zeros((5, 2, 2)), ValueError, "already a set of sequences"),
    ({}, np.full((5, 1), np.nan), ValueError, "NaN"),
])
def test_bad_input_is_refused(params, X, error, match):
    with pytest.raises(error, match=match):
        LookbackWindows(**params).fit(X)


def test_transform_checks_fitted_and_features():
    with pytest.raises(NotFittedError):
        LookbackWindows().transform(np.zeros((3, 1)))
    t = LookbackWindows(lookback=2).fit(np.zeros((5, 2)))
    with pytest.raises(ValueError, match="3 features"):
        t.transform(np.zeros((5, 3)))


def test_clone_pickle_and_no_sklearn_for_make_windows():
    t = LookbackWindows(lookback=3, history="fit").fit(np.arange(10.0).reshape(5, 2))
    assert clone(t).get_params() == {"lookback": 3, "history": "fit"}
    back = pickle.loads(pickle.dumps(t))
    np.testing.assert_array_equal(back.tail_, t.tail_)
    code = ("import sys, clstm; from clstm import make_windows; "
            "print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**__import__("os").environ})
    assert out.stdout.strip() == "False"


def test_pipeline_gridsearch_over_lookback_with_timeseriessplit():
    """The target is the feature 3 rows back: lookback 2 cannot see it, 5 can.
    Each split's test score equals the same steps done by hand."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((240, 1))
    y = np.r_[np.zeros(3), x[:-3, 0]]
    reg = LSTMRegressor(hidden_size=8, max_iter=25, learning_rate_init=0.02, random_state=0)
    pipe = make_pipeline(LookbackWindows(history="fit"), reg)
    cv = TimeSeriesSplit(3)
    search = GridSearchCV(pipe, {"lookbackwindows__lookback": [2, 5]}, cv=cv).fit(x, y)
    assert search.best_params_ == {"lookbackwindows__lookback": 5}
    scores = search.cv_results_["mean_test_score"]
    assert scores[1] > 0.4 and scores[0] < 0.1
    train, test = list(cv.split(x))[0]
    by_hand = clone(reg).fit(_by_hand(x[train], 5), y[train])
    expected = by_hand.score(_by_hand(x, 5)[test[0]:test[-1] + 1], y[test])
    assert search.cv_results_["split0_test_score"][1] == pytest.approx(expected, abs=1e-12)


def test_docstring_example_runs():
    import doctest
    test = doctest.DocTestParser().get_doctest(LookbackWindows.__doc__, {}, "LookbackWindows",
                                               None, 0)
    runner = doctest.DocTestRunner()
    runner.run(test)
    assert runner.tries > 0 and runner.failures == 0
