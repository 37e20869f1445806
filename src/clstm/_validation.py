"""Input checks shared by the network and the estimators.

Every failure is a ValueError or TypeError whose message names the argument,
what was received and what is expected.
"""

import numbers

import numpy as np

from clstm._optimizer_steps import all_finite

_DTYPES = {"float32": np.float32, "float64": np.float64}


class InvalidParameterError(ValueError, TypeError):
    """A hyperparameter of the wrong type or value (a ValueError and a TypeError,
    as scikit-learn's error of that name)."""


def resolve_dtype(dtype):
    """np.float32 or np.float64 from a name, a numpy dtype or a type."""
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in _DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return _DTYPES[name]


def check_positive_int(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name} must be a positive int, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def as_float_array(value, dtype, name):
    """Array of `dtype` from an array-like; integers and bools are cast,
    object, complex, string and other dtypes are refused."""
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged nested lists and the like
        raise ValueError(f"{name} could not be converted to a numeric array: {exc}") from None
    kind = arr.dtype.kind
    if kind == "c":
        raise TypeError(f"{name} has complex dtype {arr.dtype}; clstm needs real values")
    if kind not in "fiub":
        raise TypeError(f"{name} has dtype {arr.dtype}; expected a real numeric array "
                        f"(it is cast to {np.dtype(dtype).name})")
    return arr.astype(dtype, copy=False)


def is_finite(arr):
    """Whether every entry of the array ``arr`` is finite (compiled for
    C-contiguous float32 / float64 arrays: no boolean array of arr's size)."""
    finite = all_finite(arr)
    return bool(np.isfinite(arr).all()) if finite is None else finite


def check_finite(arr, name):
    if not is_finite(arr):
        n_bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name} contains {n_bad} NaN or infinite value(s); "
                         "clean or impute them first")


def check_state(value, shape, dtype, name):
    """An initial state / state gradient of exactly `shape` (zeros if None)."""
    if value is None:
        return np.zeros(shape, dtype=dtype)
    arr = as_float_array(value, dtype, name)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape (num_layers * num_directions, batch, "
                         f"hidden_size) = {shape}, got {arr.shape}")
    check_finite(arr, name)
    return np.ascontiguousarray(arr)


def check_lengths(lengths, batch_size, n_steps):
    """int64 lengths in [1, n_steps], one per sequence (None stays None: all n_steps)."""
    if lengths is None:
        return None
    arr = np.asarray(lengths)
    if arr.ndim != 1 or arr.shape[0] != batch_size:
        raise ValueError(f"lengths must be 1-D with one entry per sequence ({batch_size}), "
                         f"got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)):
            raise ValueError("lengths must be whole numbers")
    elif arr.dtype.kind not in "iu":
        raise TypeError(f"lengths must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if arr.min() < 1 or arr.max() > n_steps:
        raise ValueError(f"lengths must lie in [1, T={n_steps}], got values in "
                         f"[{arr.min()}, {arr.max()}]")
    return arr
