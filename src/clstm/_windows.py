"""Turn a time series into supervised (X, y) windows for sequence models.

:func:`make_windows` cuts one series into (X, y) windows up front;
:class:`LookbackWindows` is the transformer for a ``Pipeline``, where the
number of rows cannot change: each row of a time-ordered feature table
becomes the window of the ``lookback`` rows ending at it.
"""

import numbers

import numpy as np

__all__ = ["make_windows", "LookbackWindows"]


def _check_positive_int(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _check_target(target, n_features):
    """Return (list of target columns, whether y keeps a feature axis)."""
    if target is None:
        return list(range(n_features)), True
    if isinstance(target, (bool, np.bool_)):
        raise TypeError(f"target must be None, an int or a sequence of ints, got {target!r}")
    if isinstance(target, numbers.Integral):
        columns, keep_axis = [target], False
    else:
        try:
            columns = list(target)
        except TypeError:
            raise TypeError(
                f"target must be None, an int or a sequence of ints, got {target!r}"
            ) from None
        if not columns:
            raise ValueError("target must name at least one column, got an empty sequence")
        keep_axis = True
    for col in columns:
        if isinstance(col, (bool, np.bool_)) or not isinstance(col, numbers.Integral):
            raise TypeError(f"target columns must be ints, got {col!r}")
        if not -n_features <= col < n_features:
            raise ValueError(
                f"target column {col} is out of range for a series with {n_features} "
                f"feature(s)"
            )
    columns = [int(col) % n_features for col in columns]
    if len(set(columns)) != len(columns):
        raise ValueError(f"target columns must be distinct, got {list(target)}")
    return columns, keep_axis


def make_windows(series, lookback, horizon=1, stride=1, *, target=None, dtype=None):
    """Cut a time series into (X, y) windows: ``lookback`` past steps -> next ``horizon`` steps.

    Window ``i`` starts at step ``s = i * stride``. Its input is the ``lookback`` steps
    ``series[s : s + lookback]`` (all features) and its target is the ``horizon`` steps
    that follow, ``series[s + lookback : s + lookback + horizon]`` (the ``target``
    columns). Windows start at step 0, so with ``stride > 1`` a few steps at the end
    of the series may be left unused; the target of window ``i`` begins at step
    ``lookback + i * stride`` (use this to line predictions up with dates).

    Parameters
    ----------
    series : array-like of shape (n_steps,) or (n_steps, n_features)
        The series in chronological order, one row per time step. Finite
        numbers only (no NaN or inf).
    lookback : int >= 1
        Number of past steps in each input window (the sequence length ``T``).
    horizon : int >= 1, default=1
        Number of future steps to predict (``1`` for one-step-ahead).
    stride : int >= 1, default=1
        Steps between the starts of consecutive windows.
    target : None, int or sequence of int, default=None
        Which columns of a 2-D series are targets (negative indices count from
        the end). ``None`` means all columns. An int gives ``y`` without a
        feature axis; a sequence (even of length 1) keeps it. Must be ``None``
        for a 1-D series. ``X`` always holds every column, targets included.
    dtype : numpy dtype, default=None
        Dtype of ``X`` and ``y``. ``None`` keeps float32/float64 input as is and
        converts anything else (ints, bools) to float64.

    Returns
    -------
    X : ndarray of shape (n_windows, lookback, n_features)
        ``n_windows = (n_steps - lookback - horizon) // stride + 1``;
        ``n_features = 1`` for a 1-D series. C-contiguous copy, ready for
        ``LSTMRegressor.fit``.
    y : ndarray
        The targets, shaped by what was asked for:

        - 1-D series, or 2-D with ``target=j`` (an int): ``(n_windows,)`` for
          ``horizon=1``, ``(n_windows, horizon)`` otherwise;
        - 2-D with ``target=None`` (all n_features columns) or a sequence of
          k columns: ``(n_windows, k)`` for ``horizon=1``,
          ``(n_windows, horizon, k)`` otherwise.

        ``y[i, j]`` (horizon axis first) is step ``j + 1`` ahead. For a model that
        takes 2-D targets, flatten ``(n_windows, h, k)`` with
        ``y.reshape(len(y), -1)`` (columns ordered step-major: step 1's k
        targets, then step 2's, ...).

    Raises
    ------
    ValueError
        If the series is not 1-D or 2-D, has no features, contains NaN or
        inf, is not numeric, or is shorter than ``lookback + horizon`` steps;
        if ``lookback``, ``horizon`` or ``stride`` is < 1; if ``target`` names a
        missing or repeated column, or is given for a 1-D series.
    TypeError
        If ``lookback``, ``horizon``, ``stride`` or a target column is not an int.

    Examples
    --------
    >>> import numpy as np
    >>> from clstm import make_windows
    >>> X, y = make_windows(np.arange(6.0), lookback=3)
    >>> X.shape, y.shape
    ((3, 3, 1), (3,))
    >>> X[:, :, 0]
    array([[0., 1., 2.],
           [1., 2., 3.],
           [2., 3., 4.]])
    >>> y
    array([3., 4., 5.])
    >>> X, y = make_windows(np.arange(6.0), lookback=2, horizon=2, stride=2)
    >>> X[:, :, 0], y
    (array([[0., 1.],
           [2., 3.]]), array([[2., 3.],
           [4., 5.]]))
    """
    lookback = _check_positive_int(lookback, "lookback")
    horizon = _check_positive_int(horizon, "horizon")
    stride = _check_positive_int(stride, "stride")

    try:
        values = np.asarray(series)
    except Exception as exc:  # e.g. a ragged list
        raise ValueError(f"series could not be converted to an array: {exc}") from exc
    if values.dtype.kind not in "biuf":
        raise ValueError(
            f"series must be real numbers, got an array of dtype {values.dtype}"
        )
    if dtype is None:
        dtype = values.dtype if values.dtype.kind == "f" else np.float64
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a floating point dtype, got {dtype}")

    if values.ndim == 1:
        if target is not None:
            raise ValueError(
                "target must be None for a 1-D series (its only column is the target); "
                f"got target={target!r}"
            )
        values = values[:, np.newaxis]
        columns, keep_feature_axis = [0], False
    elif values.ndim == 2:
        if values.shape[1] == 0:
            raise ValueError(f"series has no features: shape {values.shape}")
        columns, keep_feature_axis = _check_target(target, values.shape[1])
    else:
        raise ValueError(
            "series must be 1-D (n_steps,) or 2-D (n_steps, n_features), got an array "
            f"with {values.ndim} dimension(s) of shape {values.shape}"
        )

    n_steps = values.shape[0]
    if n_steps < lookback + horizon:
        raise ValueError(
            f"series has {n_steps} step(s), too short for lookback={lookback} + "
            f"horizon={horizon}: at least {lookback + horizon} steps are needed"
        )
    values = values.astype(dtype, copy=False)
    if not np.all(np.isfinite(values)):
        bad = np.flatnonzero(~np.all(np.isfinite(values), axis=1))
        raise ValueError(
            f"series contains NaN or inf at {bad.size} step(s), first at step {bad[0]}"
        )

    n_windows = (n_steps - lookback - horizon) // stride + 1
    starts = np.arange(n_windows) * stride
    # X[i] = values[starts[i] : starts[i] + lookback]
    X = values[starts[:, np.newaxis] + np.arange(lookback)]
    # y[i] = values[starts[i] + lookback : starts[i] + lookback + horizon, columns]
    y = values[(starts + lookback)[:, np.newaxis] + np.arange(horizon)][:, :, columns]
    if not keep_feature_axis:
        y = y[:, :, 0]
    if horizon == 1:
        y = y[:, 0]
    return np.ascontiguousarray(X), np.ascontiguousarray(y)


def __getattr__(name):
    # LookbackWindows is built on first use, so that make_windows (and
    # ``import clstm``) do not import scikit-learn
    if name == "LookbackWindows":
        cls = _define_lookback_windows()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _define_lookback_windows():
    from sklearn.base import BaseEstimator, TransformerMixin
    from sklearn.utils.validation import check_is_fitted, validate_data

    class LookbackWindows(TransformerMixin, BaseEstimator):
        """Pipeline step: each row of a time-ordered table -> the window of rows ending at it.

        Row ``i`` of ``X`` (shape ``(n, n_features)``, oldest row first) becomes
        the sequence ``X[max(0, i - lookback + 1) : i + 1]``: the ``lookback``
        observations up to and including row ``i``. The number of rows does not
        change, so ``y`` (whatever row ``i`` should predict, e.g. the next value
        of the series) stays aligned, and ``lookback`` can be tuned by
        ``GridSearchCV`` with a ``TimeSeriesSplit``. The first ``lookback - 1``
        rows have less history: their windows are shorter, and the output is
        then a list of ``(length_i, n_features)`` arrays (ragged input, which the
        clstm estimators handle exactly); when every window is full it is an
        array ``(n, lookback, n_features)``.

        History between calls (the one honest choice to make): ``fit`` keeps
        the last ``lookback - 1`` rows it saw (``tail_``).

        * ``history="none"`` (default): every call windows only the rows it is
          given; the first rows of a test block get short windows even when the
          rows before them are known. Always correct, slightly pessimistic.
        * ``history="fit"``: :meth:`transform` treats its rows as the
          continuation of the rows given to ``fit`` and prepends ``tail_``, so a
          test block that directly follows the training block (each
          ``TimeSeriesSplit`` fold; the period after the training data when
          forecasting) gets its full windows. ``fit_transform`` never prepends
          (the training block has no known past). Wrong for rows that do not
          follow the fitted ones, e.g. ``transform`` of the training rows again
          (``GridSearchCV(return_train_score=True)``).

        Parameters
        ----------
        lookback : int, default=10
            Rows per window (the sequence length the model reads).
        history : {"none", "fit"}, default="none"
            Whether :meth:`transform` continues the rows seen by ``fit``; see above.

        Attributes
        ----------
        n_features_in_ : int
            Columns of ``X``.
        feature_names_in_ : ndarray of str
            Column names, when fitted on a DataFrame.
        tail_ : ndarray of shape (min(lookback - 1, n), n_features)
            The last rows seen by ``fit``.

        Examples
        --------
        >>> import numpy as np
        >>> from clstm import LookbackWindows
        >>> X = np.arange(5.0).reshape(-1, 1)
        >>> W = LookbackWindows(lookback=3).fit_transform(X)
        >>> [w[:, 0].tolist() for w in W]
        [[0.0], [0.0, 1.0], [0.0, 1.0, 2.0], [1.0, 2.0, 3.0], [2.0, 3.0, 4.0]]

        In a Pipeline, tuned over ``lookback`` on time-ordered folds::

            from sklearn.model_selection import GridSearchCV, TimeSeriesSplit
            from sklearn.pipeline import make_pipeline
            pipe = make_pipeline(LookbackWindows(history="fit"), LSTMRegressor())
            search = GridSearchCV(pipe, {"lookbackwindows__lookback": [5, 10, 20]},
                                  cv=TimeSeriesSplit(5)).fit(features, target)
        """

        def __init__(self, lookback=10, history="none"):
            self.lookback = lookback
            self.history = history

        def __sklearn_tags__(self):
            tags = super().__sklearn_tags__()
            tags.requires_fit = True
            tags.input_tags.allow_nan = False
            return tags

        def _check_params(self):
            _check_positive_int(self.lookback, "lookback")
            if self.history not in ("none", "fit"):
                raise ValueError(f"history must be 'none' or 'fit', got {self.history!r}")

        def _validate(self, X, reset):
            if np.ndim(X) == 3:
                raise ValueError(
                    f"X has shape {np.shape(X)}: LookbackWindows windows a time-ordered table "
                    "(n_steps, n_features); X is already a set of sequences, pass it to the "
                    "estimator directly")
            return validate_data(self, X, reset=reset, dtype=np.float64, ensure_all_finite=True)

        def fit(self, X, y=None):
            """Check ``X`` (n, n_features) and keep its last ``lookback - 1`` rows."""
            self._check_params()
            arr = self._validate(X, reset=True)
            keep = self.lookback - 1
            self.tail_ = arr[arr.shape[0] - keep:].copy() if keep else arr[:0].copy()
            return self

        def fit_transform(self, X, y=None):
            """``fit(X)`` then the windows of ``X`` alone (never prepends ``tail_``)."""
            self.fit(X)
            return self._windows(self._validate(X, reset=False), None)

        def transform(self, X):
            """The window of each row of ``X`` (after ``tail_`` with ``history="fit"``)."""
            check_is_fitted(self, "tail_")
            self._check_params()
            arr = self._validate(X, reset=False)
            return self._windows(arr, self.tail_ if self.history == "fit" else None)

        def _windows(self, arr, past):
            n, L = arr.shape[0], int(self.lookback)
            full = arr if past is None or len(past) == 0 else np.concatenate([past, arr])
            offset = full.shape[0] - n
            ends = offset + np.arange(n) + 1                   # row i's window ends before ends[i]
            starts = np.maximum(ends - L, 0)
            if np.all(ends - starts == L):
                # X[i] = full[ends[i] - L : ends[i]]
                return np.ascontiguousarray(full[starts[:, None] + np.arange(L)])
            return [full[a:b].copy() for a, b in zip(starts, ends)]

    LookbackWindows.__module__ = __name__
    LookbackWindows.__qualname__ = "LookbackWindows"
    return LookbackWindows
