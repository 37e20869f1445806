"""The optimizers' compiled steps (clstm._optimizer_steps) against their NumPy
forms: bit for bit, in float32 and float64, for every optimizer, over flat
buffers, single parameters (contiguous or not) and row-sparse gradients."""

import numpy as np
import pytest

from clstm._flat import FlatParameters
from clstm._optimizer_steps import (adam_dense_update, adam_step, adam_steps, all_finite,
                                    rmsprop_dense_update, rmsprop_step, sgd_dense_update,
                                    sgd_step, sum_of_squares)
from clstm._optimizers import AdamOptimizer, RMSpropOptimizer, SGDOptimizer
from clstm._tokens import RowGradient

pytestmark = pytest.mark.kernel    # fast: also run against the bounds-checked build

DTYPES = [np.float32, np.float64]


# -- the NumPy forms (the oracle): each operation rounded in the dtype ------------
def numpy_adam(param, grad, m, v, beta_1, beta_2, step_size, epsilon):
    f = param.dtype.type
    m *= f(beta_1)
    m += f(1 - beta_1) * grad
    v *= f(beta_2)
    v += f(1 - beta_2) * np.square(grad)
    param += f(-step_size) * m / (np.sqrt(v) + f(epsilon))


def numpy_rmsprop(param, grad, s, rho, rate, epsilon):
    f = param.dtype.type
    s *= f(rho)
    s += f(1 - rho) * np.square(grad)
    param += f(-rate) * grad / (np.sqrt(s) + f(epsilon))


def numpy_sgd(param, grad, v, rate, momentum, nesterov):
    f = param.dtype.type
    lr = f(rate)
    if momentum == 0:
        param += -lr * grad
        return
    mu = f(momentum)
    v *= mu
    v -= lr * grad
    param += mu * v - lr * grad if nesterov else v


def _arrays(rng, n, dtype, k):
    """param, grad and k slots (slots >= 0 where they hold squares)."""
    param = rng.standard_normal(n).astype(dtype)
    grad = (rng.standard_normal(n) * 10.0 ** rng.integers(-6, 3, n)).astype(dtype)
    slots = [np.abs(rng.standard_normal(n)).astype(dtype) for _ in range(k)]
    return param, grad, slots


def _same_bits(a, b):
    np.testing.assert_array_equal(np.ascontiguousarray(a).view(np.uint8),
                                  np.ascontiguousarray(b).view(np.uint8))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 3, 4, 7, 1000, 4513])
def test_adam_step_is_numpys_bit_for_bit(dtype, n):
    rng = np.random.default_rng(n)
    f = np.dtype(dtype).type
    param, grad, (m, v) = _arrays(rng, n, dtype, 2)
    ref = [a.copy() for a in (param, m, v)]
    for beta_1, beta_2, step, eps in [(0.9, 0.999, 1e-3, 1e-8), (0.8, 0.99, 0.3, 1e-6)]:
        numpy_adam(ref[0], grad, ref[1], ref[2], beta_1, beta_2, step, eps)
        adam_step(param, grad, m, v, f(beta_1), f(1 - beta_1), f(beta_2), f(1 - beta_2),
                  f(-step), f(eps))
        for got, want in zip((param, m, v), ref):
            _same_bits(got, want)


def test_adam_steps_round_the_scalars_per_array_and_step_each():
    """adam_steps (one call for many parameters) takes the scalars as doubles and
    rounds them to each array's dtype: bit for bit NumPy's form per array, float32
    and float64 arrays in one call."""
    rng = np.random.default_rng(7)
    beta_1, beta_2, step, eps = 0.9, 0.999, 1e-3 / 3, 1e-8     # (1e-3 / 3: not a float32)
    batch, refs = [], []
    for n, dtype in [(5, np.float32), (4513, np.float32), (0, np.float32), (17, np.float64)]:
        param, grad, (m, v) = _arrays(rng, n, dtype, 2)
        refs.append(([a.copy() for a in (param, m, v)], grad))
        batch.append((param, grad, m, v))
    for _ in range(2):
        adam_steps(batch, beta_1, 1 - beta_1, beta_2, 1 - beta_2, -step, eps)
        for (ref, grad) in refs:
            numpy_adam(ref[0], grad, ref[1], ref[2], beta_1, beta_2, step, eps)
    for (param, _, m, v), (ref, _) in zip(batch, refs):
        for got, want in zip((param, m, v), ref):
            _same_bits(got, want)
    with pytest.raises(ValueError, match="same size"):
        adam_steps([(np.zeros(3), np.zeros(4), np.zeros(3), np.zeros(3))], 0.9, 0.1, 0.999,
                   0.001, -1e-3, 1e-8)


def _dense_case(rng, n_slots):
    """Parameters of both dtypes (and an empty one), gradients, slots: dicts."""
    params, grads, slots = {}, {}, [{} for _ in range(n_slots)]
    for name, shape, dtype in [("w", (6, 5), np.float32), ("b", (7,), np.float64),
                               ("e", (0, 3), np.float32), ("u", (3, 4, 2), np.float32)]:
        n = int(np.prod(shape))
        param, grad, arrays = _arrays(rng, n, dtype, n_slots)
        params[name], grads[name] = param.reshape(shape), grad.reshape(shape)
        for slot, a in zip(slots, arrays):
            slot[name] = a.reshape(shape)
    return params, grads, slots


# kind: (slots, the compiled update over dicts, the NumPy form on one array);
# 1e-3 / 3 and 0.1 / 3: not float32 numbers, so the scalars' rounding shows
DENSE = {
    "adam": (2, lambda p, g, s: adam_dense_update(p, g, *s, 0.9, 1 - 0.9, 0.999, 1 - 0.999,
                                                  -1e-3 / 3, 1e-8),
             lambda p, g, s: numpy_adam(p, g, *s, 0.9, 0.999, 1e-3 / 3, 1e-8)),
    "rmsprop": (1, lambda p, g, s: rmsprop_dense_update(p, g, *s, 0.8, 1 - 0.8, -0.1 / 3, 1e-7),
                lambda p, g, s: numpy_rmsprop(p, g, *s, 0.8, 0.1 / 3, 1e-7)),
    "sgd-nesterov": (1, lambda p, g, s: sgd_dense_update(p, g, *s, 0.1 / 3, 0.9, True),
                     lambda p, g, s: numpy_sgd(p, g, *s, 0.1 / 3, 0.9, True)),
    "sgd-momentum": (1, lambda p, g, s: sgd_dense_update(p, g, *s, 0.1 / 3, 0.5, False),
                     lambda p, g, s: numpy_sgd(p, g, *s, 0.1 / 3, 0.5, False)),
    "sgd-plain": (0, lambda p, g, s: sgd_dense_update(p, g, None, 0.1 / 3, 0.0, False),
                  lambda p, g, s: numpy_sgd(p, g, None, 0.1 / 3, 0.0, False)),
}


@pytest.mark.parametrize("kind", list(DENSE))
def test_dense_update_steps_every_parameter_numpys_way(kind):
    """One call over dicts of parameters, gradients and slots: per array
    NumPy's form, bit for bit, float32 and float64 arrays in one call."""
    n_slots, update, numpy_step = DENSE[kind]
    params, grads, slots = _dense_case(np.random.default_rng(8), n_slots)
    ref = {k: [params[k].copy()] + [s[k].copy() for s in slots] for k in params}
    for _ in range(2):
        assert update(params, grads, slots) is True
        for k, (p, *s) in ref.items():
            numpy_step(p, grads[k], s)
    for k, want in ref.items():
        for got, w in zip([params[k]] + [s[k] for s in slots], want):
            _same_bits(got, w)


@pytest.mark.parametrize("kind", ["adam", "rmsprop", "sgd-momentum"])
@pytest.mark.parametrize("case", ["no slot", "slot shape", "fortran param", "read-only slot",
                                  "grad dtype", "no grad", "list grad", "int param"])
def test_dense_update_declines_and_changes_nothing(kind, case):
    """Anything the per-parameter loop would convert, make or refuse: False,
    and no array changed (the first parameters pass the checks, the last not)."""
    n_slots, update, _ = DENSE[kind]
    params, grads, slots = _dense_case(np.random.default_rng(9), n_slots)
    last = "u"
    if case == "no slot":
        del slots[-1][last]
    elif case == "slot shape":
        slots[0][last] = slots[0][last].reshape(4, 3, 2)
    elif case == "fortran param":
        params[last] = np.asfortranarray(params[last])
    elif case == "read-only slot":
        slots[-1][last].flags.writeable = False
    elif case == "grad dtype":
        grads[last] = grads[last].astype(np.float64)
    elif case == "no grad":
        del grads[last]
    elif case == "list grad":
        grads[last] = grads[last].tolist()
    else:
        for d in [params, grads] + slots:
            d[last] = np.zeros(params[last].shape, np.int32)
    arrays = [a for d in [params] + slots for a in d.values()]
    before = [a.copy() for a in arrays]
    assert update(params, grads, slots) is False
    for got, want in zip(arrays, before):
        _same_bits(got, want)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 5, 4513])
def test_rmsprop_step_is_numpys_bit_for_bit(dtype, n):
    rng = np.random.default_rng(10 + n)
    f = np.dtype(dtype).type
    param, grad, (s,) = _arrays(rng, n, dtype, 1)
    ref = [param.copy(), s.copy()]
    for _ in range(3):
        numpy_rmsprop(ref[0], grad, ref[1], 0.8, 1e-2, 1e-7)
        rmsprop_step(param, grad, s, f(0.8), f(1 - 0.8), f(-1e-2), f(1e-7))
        _same_bits(param, ref[0])
        _same_bits(s, ref[1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("momentum,nesterov", [(0.0, True), (0.9, True), (0.5, False)])
def test_sgd_step_is_numpys_bit_for_bit(dtype, momentum, nesterov):
    rng = np.random.default_rng(20)
    f = np.dtype(dtype).type
    param, grad, (v,) = _arrays(rng, 1001, dtype, 1)
    v = rng.standard_normal(v.size).astype(dtype)      # a velocity has both signs
    ref = [param.copy(), v.copy()]
    for _ in range(3):
        numpy_sgd(ref[0], grad, ref[1], 0.05, momentum, nesterov)
        sgd_step(param, grad, None if momentum == 0 else v, f(0.05), f(momentum), nesterov)
        _same_bits(param, ref[0])
        _same_bits(v, ref[1])


def test_steps_refuse_arrays_of_other_sizes():
    a, b = np.zeros(4, np.float32), np.zeros(3, np.float32)
    f = np.float32
    with pytest.raises(ValueError, match="same size"):
        adam_step(a, a, a.copy(), b, f(0.9), f(0.1), f(0.9), f(0.1), f(-1), f(1e-8))
    with pytest.raises(ValueError, match="same size"):
        rmsprop_step(a, b, a.copy(), f(0.9), f(0.1), f(-1), f(1e-8))
    with pytest.raises(ValueError, match="same size"):
        sgd_step(a, a.copy(), b, f(1), f(0.9), True)


def test_steps_refuse_what_they_cannot_update():
    a = np.zeros(4, np.float32)
    f = np.float32
    bad = {
        "float16": (ValueError, "float32 arrays expected", np.zeros(4, np.float16)),
        "not an array": (TypeError, "arrays expected", [0.0] * 4),
        "2-D": (ValueError, "1-D C-contiguous", np.zeros((2, 2), np.float32)),
        "strided": (ValueError, "1-D C-contiguous", np.zeros(8, np.float32)[::2]),
        "other dtype": (ValueError, "1-D C-contiguous", np.zeros(4, np.float64)),
    }
    for what, (error, match, arr) in bad.items():
        with pytest.raises(error, match=match):
            rmsprop_step(a.copy(), a, arr, f(0.9), f(0.1), f(-1), f(1e-8))
    read_only = np.zeros(4, np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        sgd_step(read_only, a, None, f(1), f(0), True)
    with pytest.raises(TypeError, match="float32 or float64"):
        sgd_step(np.zeros(4, np.float16), np.zeros(4, np.float16), None, f(1), f(0), True)
    with pytest.raises(TypeError, match="float32 or float64"):
        sum_of_squares(np.zeros(3, np.int64))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 3, 4, 9, 100_001])
def test_sum_of_squares_is_the_float64_sum(dtype, n):
    g = np.random.default_rng(n).standard_normal(n).astype(dtype)
    expected = float(np.sum(g.astype(np.float64) ** 2))
    assert sum_of_squares(g) == pytest.approx(expected, rel=1e-13, abs=0.0)
    assert sum_of_squares(g) == sum_of_squares(g.copy())            # fixed order


# -- the optimizers: every path runs the step NumPy's way -------------------------
OPTIMIZERS = {
    "adam": (lambda: AdamOptimizer(3e-3, beta_1=0.8, beta_2=0.99, epsilon=1e-6), ("m", "v")),
    "rmsprop": (lambda: RMSpropOptimizer(1e-2, rho=0.8), ("square_avg",)),
    "sgd-nesterov": (lambda: SGDOptimizer(0.05, momentum=0.9, nesterov=True), ("velocity",)),
    "sgd-momentum": (lambda: SGDOptimizer(0.05, momentum=0.5, nesterov=False), ("velocity",)),
    "sgd-plain": (lambda: SGDOptimizer(0.05, momentum=0.0), ()),
}


def _numpy_step(opt, name, param, grad, slots):
    """The optimizer's step on one array the NumPy way (t already advanced)."""
    if name == "adam":
        step = (opt.learning_rate * np.sqrt(1 - opt.beta_2 ** opt.t)
                / (1 - opt.beta_1 ** opt.t))
        numpy_adam(param, grad, *slots, opt.beta_1, opt.beta_2, step, opt.epsilon)
    elif name == "rmsprop":
        numpy_rmsprop(param, grad, *slots, opt.rho, opt.learning_rate, opt.epsilon)
    else:
        numpy_sgd(param, grad, slots[0] if slots else None, opt.learning_rate, opt.momentum,
                  opt.nesterov)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "fortran", "flat"])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_optimizer_updates_are_numpys_bit_for_bit(name, layout, dtype):
    make, slot_names = OPTIMIZERS[name]
    rng = np.random.default_rng(3)
    order = "F" if layout == "fortran" else "C"
    params = {"w": np.asarray(rng.standard_normal((5, 7)), dtype=dtype, order=order),
              "b": rng.standard_normal(7).astype(dtype)}
    ref = {k: v.copy() for k, v in params.items()}
    ref_slots = {k: [np.zeros_like(v) for _ in slot_names] for k, v in ref.items()}
    flat = FlatParameters(params) if layout == "flat" else None
    live = flat.params if flat is not None else params
    ids = {k: id(v) for k, v in live.items()}
    opt = make()
    for _ in range(4):
        grads = {k: np.asarray(rng.standard_normal(v.shape), dtype=dtype, order=order)
                 for k, v in params.items()}
        opt.update_params(live, grads, flat=flat)
        for k in ref:
            _numpy_step(opt, name, ref[k], grads[k], ref_slots[k])
    for k in ref:
        assert id(live[k]) == ids[k]                  # updated in place
        _same_bits(np.ascontiguousarray(live[k]), np.ascontiguousarray(ref[k]))
        for slot, want in zip(slot_names, ref_slots[k]):
            _same_bits(np.ascontiguousarray(opt.state[slot][k]), np.ascontiguousarray(want))


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_row_sparse_updates_touch_only_their_rows_numpys_way(name):
    make, slot_names = OPTIMIZERS[name]
    rng = np.random.default_rng(4)
    table = rng.standard_normal((9, 3)).astype(np.float32)
    ref = table.copy()
    ref_slots = [np.zeros_like(ref) for _ in slot_names]
    opt = make()
    for rows in ([1, 4, 5], [0, 4, 8], [4]):
        rows = np.array(rows)
        values = rng.standard_normal((rows.size, 3)).astype(np.float32)
        opt.update_params({"e": table}, {"e": RowGradient(rows, values, table.shape)})
        part = [ref[rows]] + [s[rows] for s in ref_slots]
        _numpy_step(opt, name, part[0], values, part[1:])
        for whole, p in zip([ref] + ref_slots, part):
            whole[rows] = p
    _same_bits(table, ref)
    for slot, want in zip(slot_names, ref_slots):
        _same_bits(opt.state[slot]["e"], want)
    untouched = np.setdiff1d(np.arange(9), [0, 1, 4, 5, 8])
    assert untouched.size and all(not s[untouched].any() for s in ref_slots)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 64, 1001])
def test_all_finite_finds_every_bad_entry(dtype, n):
    rng = np.random.default_rng(n)
    values = (rng.standard_normal(n) * 1e30).astype(dtype)
    values[: n // 3] = np.finfo(dtype).max          # large but finite
    assert all_finite(values) is True
    for bad in (np.nan, np.inf, -np.inf):
        for i in {0, n // 2, n - 1} if n else ():
            broken = values.copy()
            broken[i] = bad
            assert all_finite(broken) is False
            assert all_finite(broken.reshape(1, -1)) is False      # any shape
    # what it does not read: the caller asks NumPy instead
    if n > 2:
        assert all_finite(values[::2]) is None          # strided
    assert all_finite(np.zeros(n, np.float16)) is None
    assert all_finite(np.zeros(n, np.int64)) is None
    assert all_finite(list(values)) is None
