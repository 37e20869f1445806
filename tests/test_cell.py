"""The cell kernels (clstm._cell): activations and one LSTM step, forward and backward.

float64 runs libm and is checked against NumPy formulas to rounding; float32
runs the rational tanh approximation and is checked against float64.
Gate order is torch's: a gate row holds i | f | g | o.
"""

import numpy as np
import pytest

from clstm import _cell

pytestmark = pytest.mark.kernel


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# --- activations --------------------------------------------------------------

def test_dispatch_level():
    assert _cell.dispatch_level() in {"x86-64-v4", "x86-64-v3", "baseline", "no-dispatch"}


def test_tanh_float32_accuracy():
    x = np.linspace(-20.0, 20.0, 400_001).astype(np.float32)
    y = _cell.tanh(x)
    assert y.dtype == np.float32
    err = np.abs(y - np.tanh(x.astype(np.float64)))
    assert err.max() <= 5e-7, f"max abs error {err.max():.3g} at x={x[err.argmax()]}"
    assert np.abs(y).max() <= 1.0


def test_tanh_float32_relative_accuracy_near_zero():
    # small inputs must not be flushed: tanh(x) ~ x to float32 precision
    x = np.logspace(-30, 0, 3001).astype(np.float32)
    y = _cell.tanh(x)
    exact = np.tanh(x.astype(np.float64))
    assert np.max(np.abs(y - exact) / exact) <= 1e-6
    assert _cell.tanh(np.array([0.0], np.float32))[0] == 0.0


def test_sigmoid_float32_accuracy():
    x = np.linspace(-20.0, 20.0, 400_001).astype(np.float32)
    s = _cell.sigmoid(x)
    assert s.dtype == np.float32
    err = np.abs(s - _sigmoid(x.astype(np.float64)))
    assert err.max() <= 5e-7, f"max abs error {err.max():.3g} at x={x[err.argmax()]}"
    assert s.min() >= 0.0 and s.max() <= 1.0


def test_tanh_float32_exact_saturation():
    big = np.array([8.0, 9.0, 20.0, 1e4, 1e30, np.finfo(np.float32).max, np.inf],
                   dtype=np.float32)
    assert np.all(_cell.tanh(big) == 1.0)
    assert np.all(_cell.tanh(-big) == -1.0)
    assert np.all(_cell.sigmoid(2 * big[:-2]) == 1.0)
    assert np.all(_cell.sigmoid(np.array([np.inf], np.float32)) == 1.0)
    assert np.all(_cell.sigmoid(-2 * big[:-2]) == 0.0)
    assert np.all(_cell.sigmoid(np.array([-np.inf], np.float32)) == 0.0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fn", ["tanh", "sigmoid"])
def test_nan_propagates(dtype, fn):
    x = np.array([0.5, np.nan, -3.0, np.nan, 100.0, -100.0, np.nan], dtype=dtype)
    y = getattr(_cell, fn)(x)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(x))


def test_tanh_float32_odd_symmetry():
    x = np.random.default_rng(0).uniform(0, 12, 10_001).astype(np.float32)
    np.testing.assert_array_equal(_cell.tanh(-x), -_cell.tanh(x))
    assert np.signbit(_cell.tanh(np.array([-0.0], np.float32))[0])


def test_sigmoid_float32_symmetry():
    x = np.random.default_rng(1).uniform(-12, 12, 10_001).astype(np.float32)
    np.testing.assert_allclose(_cell.sigmoid(-x), 1.0 - _cell.sigmoid(x), rtol=0, atol=2e-7)


def test_float64_activations_are_libm():
    x = np.linspace(-30.0, 30.0, 6001)
    np.testing.assert_allclose(_cell.tanh(x), np.tanh(x), rtol=4e-16, atol=1e-300)
    np.testing.assert_allclose(_cell.sigmoid(x), _sigmoid(x), rtol=4e-16, atol=1e-300)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fn", ["tanh", "sigmoid"])
@pytest.mark.parametrize("n", [1, 3, 7, 8, 15, 16, 17, 31, 33, 67])
def test_vector_body_equals_scalar_tail(dtype, fn, n):
    # lengths around the vector widths: the vectorized body and the remainder
    # loop must compute the same function
    x = np.random.default_rng(n).uniform(-9, 9, n).astype(dtype)
    f = getattr(_cell, fn)
    whole = f(x)
    one_by_one = np.array([f(x[i:i + 1])[0] for i in range(n)], dtype=dtype)
    np.testing.assert_allclose(whole, one_by_one, rtol=2 * np.finfo(dtype).eps, atol=0)


def test_empty_input():
    assert _cell.tanh(np.empty(0, np.float32)).shape == (0,)
    assert _cell.sigmoid(np.empty(0, np.float64)).shape == (0,)


# --- one cell step --------------------------------------------------------------

def _np_cell_forward(z, c_prev):
    H = c_prev.shape[1]
    i, f, g, o = (z[:, k * H:(k + 1) * H] for k in range(4))
    i, f, g, o = _sigmoid(i), _sigmoid(f), np.tanh(g), _sigmoid(o)
    c = f * c_prev + i * g
    h = o * np.tanh(c)
    return np.concatenate([i, f, g, o], axis=1), c, h


def _np_cell_backward(act, c_prev, c, grad_h, grad_c):
    H = c_prev.shape[1]
    i, f, g, o = (act[:, k * H:(k + 1) * H] for k in range(4))
    tc = np.tanh(c)
    dc = grad_c + grad_h * o * (1 - tc ** 2)
    grad_gates = np.concatenate([dc * g * i * (1 - i), dc * c_prev * f * (1 - f),
                                 dc * i * (1 - g ** 2), grad_h * tc * o * (1 - o)], axis=1)
    return grad_gates, dc * f


def _cell_inputs(B, H, seed, scale=2.0):
    rng = np.random.default_rng(seed)
    z = scale * rng.standard_normal((B, 4 * H))
    c_prev = rng.standard_normal((B, H))
    grad_h = rng.standard_normal((B, H))
    grad_c = rng.standard_normal((B, H))
    return z, c_prev, grad_h, grad_c


SHAPES = [(1, 1), (1, 5), (3, 7), (4, 16), (2, 33)]


@pytest.mark.parametrize("B,H", SHAPES)
def test_cell_forward_float64(B, H):
    z, c_prev, _, _ = _cell_inputs(B, H, seed=B * 100 + H)
    act, c, h = _cell.cell_forward(z, c_prev)
    act_ref, c_ref, h_ref = _np_cell_forward(z, c_prev)
    np.testing.assert_allclose(act, act_ref, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(c, c_ref, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(h, h_ref, rtol=1e-14, atol=1e-15)


def test_cell_forward_gate_order():
    # saturate one gate at a time: i, f, g, o must be read from blocks 0..3
    H = 3
    c_prev = np.full((1, H), 0.5)
    big = 50.0
    z = np.array([[big] * H + [-big] * H + [big] * H + [big] * H])   # i=1 f=0 g=1 o=1
    _, c, h = _cell.cell_forward(z, c_prev)
    np.testing.assert_allclose(c, 1.0, atol=1e-15)
    np.testing.assert_allclose(h, np.tanh(1.0), atol=1e-15)
    z = np.array([[-big] * H + [big] * H + [big] * H + [-big] * H])  # i=0 f=1 o=0
    _, c, h = _cell.cell_forward(z, c_prev)
    np.testing.assert_allclose(c, 0.5, atol=1e-15)
    np.testing.assert_allclose(h, 0.0, atol=1e-15)


@pytest.mark.parametrize("B,H", SHAPES)
def test_cell_backward_float64(B, H):
    z, c_prev, grad_h, grad_c = _cell_inputs(B, H, seed=B * 100 + H + 1)
    act, c, _ = _np_cell_forward(z, c_prev)
    grad_gates, grad_c_prev = _cell.cell_backward(act, c_prev, c, grad_h, grad_c)
    gg_ref, gc_ref = _np_cell_backward(act, c_prev, c, grad_h, grad_c)
    np.testing.assert_allclose(grad_gates, gg_ref, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(grad_c_prev, gc_ref, rtol=1e-13, atol=1e-15)


def test_cell_backward_is_the_derivative_of_forward():
    # central differences through the forward twin, float64
    B, H = 2, 3
    z, c_prev, grad_h, grad_c = _cell_inputs(B, H, seed=7, scale=1.0)

    def loss(z_, c_prev_):
        _, c, h = _cell.cell_forward(z_, c_prev_)
        return np.sum(h * grad_h) + np.sum(c * grad_c)

    act, c, _ = _cell.cell_forward(z, c_prev)
    grad_gates, grad_c_prev = _cell.cell_backward(act, c_prev, c, grad_h, grad_c)
    eps = 1e-6
    for arr, analytic in ((z, grad_gates), (c_prev, grad_c_prev)):
        numeric = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            orig = arr[idx]
            arr[idx] = orig + eps
            lp = loss(z, c_prev)
            arr[idx] = orig - eps
            lm = loss(z, c_prev)
            arr[idx] = orig
            numeric[idx] = (lp - lm) / (2 * eps)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("B", [1, 2, 7, 8, 9, 32, 33])
@pytest.mark.parametrize("H", [1, 2, 5, 15, 17, 50, 100, 127])
def test_cell_forward_tails_equal_whole_vectors(B, H):
    # the units past a row's last whole vector are gathered across rows into
    # vectors of their own; padded to a width of whole vectors (zero units
    # after H), the same units run in the vector body: the same bits
    Hp = -(-H // 16) * 16
    rng = np.random.default_rng(B * 1000 + H)
    z = (4 * rng.standard_normal((B, 4, H))).astype(np.float32)
    z[0, :, 0] = [30.0, -30.0, np.inf, 9.0]          # saturated and infinite entries
    c_prev = rng.standard_normal((B, H)).astype(np.float32)
    bias = rng.standard_normal((4, H)).astype(np.float32)

    def padded(a):
        out = np.zeros(a.shape[:-1] + (Hp,), np.float32)
        out[..., :H] = a
        return out

    act, c, h = _cell.cell_forward(z.reshape(B, 4 * H), c_prev, bias.reshape(-1))
    act_p, c_p, h_p = _cell.cell_forward(padded(z).reshape(B, 4 * Hp), padded(c_prev),
                                         padded(bias).reshape(-1))
    np.testing.assert_array_equal(act.reshape(B, 4, H), act_p.reshape(B, 4, Hp)[..., :H])
    np.testing.assert_array_equal(c, c_p[:, :H])
    np.testing.assert_array_equal(h, h_p[:, :H])


@pytest.mark.parametrize("B,H", SHAPES)
def test_cell_forward_float32_vs_float64(B, H):
    z, c_prev, _, _ = _cell_inputs(B, H, seed=B * 10 + H)
    z32, c32 = z.astype(np.float32), c_prev.astype(np.float32)
    act32, c_32, h32 = _cell.cell_forward(z32, c32)
    act64, c_64, h64 = _cell.cell_forward(z32.astype(np.float64), c32.astype(np.float64))
    assert act32.dtype == c_32.dtype == h32.dtype == np.float32
    np.testing.assert_allclose(act32, act64, rtol=0, atol=1e-6)
    np.testing.assert_allclose(c_32, c_64, rtol=0, atol=4e-6)
    np.testing.assert_allclose(h32, h64, rtol=0, atol=2e-6)


@pytest.mark.parametrize("B,H", SHAPES)
def test_cell_backward_float32_vs_float64(B, H):
    z, c_prev, grad_h, grad_c = _cell_inputs(B, H, seed=B * 10 + H + 5)
    act, c, _ = _np_cell_forward(z, c_prev)
    args32 = [a.astype(np.float32) for a in (act, c_prev, c, grad_h, grad_c)]
    gg32, gc32 = _cell.cell_backward(*args32)
    gg64, gc64 = _cell.cell_backward(*[a.astype(np.float64) for a in args32])
    assert gg32.dtype == gc32.dtype == np.float32
    np.testing.assert_allclose(gg32, gg64, rtol=0, atol=1e-5)
    np.testing.assert_allclose(gc32, gc64, rtol=0, atol=1e-5)


def test_cell_forward_does_not_modify_inputs():
    z, c_prev, _, _ = _cell_inputs(2, 4, seed=3)
    z0, c0 = z.copy(), c_prev.copy()
    _cell.cell_forward(z, c_prev)
    np.testing.assert_array_equal(z, z0)
    np.testing.assert_array_equal(c_prev, c0)


def test_cell_forward_shape_mismatch():
    with pytest.raises(ValueError, match="gates must be"):
        _cell.cell_forward(np.zeros((2, 7)), np.zeros((2, 2)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cell_forward_adds_the_bias(dtype):
    """The bias is folded into the cell kernel: act(z + b) == act((z + b) with no bias)."""
    rng = np.random.default_rng(3)
    B, H = 5, 7
    z = rng.standard_normal((B, 4 * H)).astype(dtype)
    bias = rng.standard_normal(4 * H).astype(dtype)
    c_prev = rng.standard_normal((B, H)).astype(dtype)
    with_bias = _cell.cell_forward(z, c_prev, bias)
    folded = _cell.cell_forward(np.ascontiguousarray(z + bias), c_prev)
    for a, b in zip(with_bias, folded):
        np.testing.assert_array_equal(a, b)
