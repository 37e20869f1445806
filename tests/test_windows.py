"""make_windows: shapes, exact values on arange series, bad input."""

import numpy as np
import pytest

from clstm._windows import make_windows


def _arange_2d(n_steps, n_features):
    """Column j of row t holds 10 * t + j, so every value names its step and column."""
    return 10.0 * np.arange(n_steps)[:, None] + np.arange(n_features)[None, :]


# ---------------------------------------------------------------- values


def test_1d_one_step_exact_values():
    X, y = make_windows(np.arange(6.0), lookback=3)
    assert X.shape == (3, 3, 1)
    assert y.shape == (3,)
    np.testing.assert_array_equal(X[:, :, 0], [[0, 1, 2], [1, 2, 3], [2, 3, 4]])
    np.testing.assert_array_equal(y, [3, 4, 5])


def test_1d_horizon_and_stride_exact_values():
    X, y = make_windows(np.arange(10.0), lookback=3, horizon=2, stride=2)
    # starts 0, 2, 4; the window starting at 6 would need steps up to 10
    np.testing.assert_array_equal(X[:, :, 0], [[0, 1, 2], [2, 3, 4], [4, 5, 6]])
    np.testing.assert_array_equal(y, [[3, 4], [5, 6], [7, 8]])


def test_stride_leaves_tail_unused():
    X, y = make_windows(np.arange(9.0), lookback=2, horizon=1, stride=3)
    # n_windows = (9 - 2 - 1) // 3 + 1 = 3, starts 0, 3, 6; targets 2, 5, 8
    np.testing.assert_array_equal(y, [2, 5, 8])
    X, y = make_windows(np.arange(8.0), lookback=2, horizon=1, stride=3)
    np.testing.assert_array_equal(y, [2, 5])  # step 7 is never a target


def test_exact_fit_gives_one_window():
    X, y = make_windows(np.arange(5.0), lookback=3, horizon=2)
    np.testing.assert_array_equal(X[:, :, 0], [[0, 1, 2]])
    np.testing.assert_array_equal(y, [[3, 4]])


@pytest.mark.parametrize("n_steps", [7, 8, 20])
@pytest.mark.parametrize("lookback", [1, 3])
@pytest.mark.parametrize("horizon", [1, 2, 4])
@pytest.mark.parametrize("stride", [1, 2, 5])
def test_matches_loop_definition(n_steps, lookback, horizon, stride):
    series = _arange_2d(n_steps, 3)
    X, y = make_windows(series, lookback, horizon, stride, target=[2, 0])
    starts = range(0, n_steps - lookback - horizon + 1, stride)
    X_loop = np.stack([series[s : s + lookback] for s in starts])
    y_loop = np.stack([series[s + lookback : s + lookback + horizon][:, [2, 0]] for s in starts])
    if horizon == 1:
        y_loop = y_loop[:, 0]
    assert len(X) == (n_steps - lookback - horizon) // stride + 1
    np.testing.assert_array_equal(X, X_loop)
    np.testing.assert_array_equal(y, y_loop)


def test_target_of_window_i_starts_at_documented_step():
    lookback, stride = 4, 3
    X, y = make_windows(np.arange(30.0), lookback, stride=stride)
    np.testing.assert_array_equal(y, lookback + np.arange(len(y)) * stride)


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    "n_features, target, horizon, y_shape",
    [
        (None, None, 1, (7,)),  # 1-D series
        (None, None, 3, (5, 3)),
        (3, None, 1, (7, 3)),  # all columns keep the feature axis
        (3, None, 3, (5, 3, 3)),
        (3, 1, 1, (7,)),  # an int target drops it
        (3, 1, 3, (5, 3)),
        (3, -1, 1, (7,)),
        (3, [1], 1, (7, 1)),  # a list keeps it, even of length one
        (3, [0, 2], 3, (5, 3, 2)),
        (1, None, 1, (7, 1)),
    ],
)
def test_shapes(n_features, target, horizon, y_shape):
    n_steps, lookback = 10, 3
    if n_features is None:
        series = np.arange(n_steps, dtype=float)
    else:
        series = _arange_2d(n_steps, n_features)
    X, y = make_windows(series, lookback, horizon, target=target)
    assert X.shape == (y_shape[0], lookback, n_features or 1)
    assert y.shape == y_shape
    assert X.flags.c_contiguous and y.flags.c_contiguous


def test_2d_targets_select_columns():
    series = _arange_2d(6, 3)
    _, y_int = make_windows(series, 2, target=2)
    _, y_neg = make_windows(series, 2, target=-1)
    _, y_all = make_windows(series, 2)
    np.testing.assert_array_equal(y_int, [22, 32, 42, 52])
    np.testing.assert_array_equal(y_neg, y_int)
    np.testing.assert_array_equal(y_all[:, 2], y_int)
    np.testing.assert_array_equal(y_all[0], [20, 21, 22])
    _, y_multi = make_windows(series, 2, horizon=2, target=[2, 0])
    np.testing.assert_array_equal(y_multi[0], [[22, 20], [32, 30]])  # [step, target column]


def test_flattened_multi_horizon_targets_are_step_major():
    _, y = make_windows(_arange_2d(6, 2), 2, horizon=2)
    np.testing.assert_array_equal(y.reshape(len(y), -1)[0], [20, 21, 30, 31])


def test_returns_copies_not_views():
    series = np.arange(8.0)
    X, y = make_windows(series, 3)
    X[0, 0, 0] = y[0] = -1.0
    np.testing.assert_array_equal(series, np.arange(8.0))
    assert X[1, 0, 0] == 1.0  # overlapping windows do not share memory


# ---------------------------------------------------------------- dtypes and array-likes


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_float_dtype_is_kept(dtype):
    X, y = make_windows(np.arange(5, dtype=dtype), 2)
    assert X.dtype == dtype and y.dtype == dtype


@pytest.mark.parametrize("values", [np.arange(5), np.arange(5) % 2 == 0, list(range(5))])
def test_ints_bools_and_lists_become_float64(values):
    X, y = make_windows(values, 2)
    assert X.dtype == np.float64 and y.dtype == np.float64
    expected = np.lib.stride_tricks.sliding_window_view(np.asarray(values, float)[:-1], 2)
    np.testing.assert_array_equal(X[:, :, 0], expected)


def test_dtype_argument():
    X, y = make_windows(np.arange(5.0), 2, dtype="float32")
    assert X.dtype == np.float32 and y.dtype == np.float32


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "series, match",
    [
        (np.float64(3.0), "1-D .* or 2-D"),
        (np.zeros((10, 2, 2)), "3 dimension"),
        (np.zeros((10, 0)), "no features"),
        (np.zeros(0), "0 step.*at least 4"),
        (np.zeros(3), "3 step.*too short for lookback=3 \\+ horizon=1"),
        (np.array([0.0, 1.0, np.nan, 3.0, 4.0, 5.0]), "NaN or inf at 1 step.*first at step 2"),
        (np.array([[0.0, 1.0]] * 5 + [[np.inf, 0.0]]), "NaN or inf.*step 5"),
        (np.array(["a", "b", "c", "d", "e"]), "real numbers"),
        (np.arange(6) + 1j, "real numbers"),
        (np.array([None] * 6), "real numbers"),
        ([[1.0, 2.0], [3.0]] * 3, "could not be converted"),
    ],
)
def test_bad_series(series, match):
    with pytest.raises(ValueError, match=match):
        make_windows(series, lookback=3)


@pytest.mark.parametrize("name", ["lookback", "horizon", "stride"])
@pytest.mark.parametrize("value", [0, -2])
def test_nonpositive_sizes(name, value):
    kwargs = {"lookback": 2, name: value}
    with pytest.raises(ValueError, match=f"{name} must be >= 1, got {value}"):
        make_windows(np.arange(10.0), **kwargs)


@pytest.mark.parametrize("name", ["lookback", "horizon", "stride"])
@pytest.mark.parametrize("value", [2.0, "3", None, True])
def test_non_integer_sizes(name, value):
    kwargs = {"lookback": 2, name: value}
    with pytest.raises(TypeError, match=f"{name} must be an int"):
        make_windows(np.arange(10.0), **kwargs)


def test_numpy_integer_sizes_are_accepted():
    X, y = make_windows(np.arange(10.0), np.int64(3), np.int32(2), np.uint8(2))
    assert X.shape == (3, 3, 1) and y.shape == (3, 2)


def test_too_short_for_horizon():
    with pytest.raises(ValueError, match="at least 7 steps"):
        make_windows(np.arange(6.0), lookback=4, horizon=3)


@pytest.mark.parametrize(
    "target, exc, match",
    [
        (3, ValueError, "column 3 is out of range.*3 feature"),
        (-4, ValueError, "column -4 is out of range"),
        ([0, 5], ValueError, "column 5 is out of range"),
        ([0, 0], ValueError, "distinct"),
        ([0, -3], ValueError, "distinct"),
        ([], ValueError, "at least one column"),
        (1.0, TypeError, "target must be None, an int or a sequence"),
        (True, TypeError, "target must be None, an int or a sequence"),
        ([0, 1.5], TypeError, "target columns must be ints"),
        ("a", TypeError, "target columns must be ints"),
    ],
)
def test_bad_target(target, exc, match):
    with pytest.raises(exc, match=match):
        make_windows(_arange_2d(10, 3), 2, target=target)


def test_target_with_1d_series():
    with pytest.raises(ValueError, match="target must be None for a 1-D series"):
        make_windows(np.arange(10.0), 2, target=0)


def test_integer_dtype_argument_rejected():
    with pytest.raises(ValueError, match="floating point dtype"):
        make_windows(np.arange(10.0), 2, dtype=np.int64)


def test_public_export():
    import clstm

    assert clstm.make_windows is make_windows
    assert "make_windows" in clstm.__all__
