"""The BLAS wrapper (clstm._blas) through its Python-callable twins.

Each twin is checked against a one-line NumPy oracle over dtype x transpose x
memory order x leading dimension (a slice of a larger array, so lda > the
logical width), the layouts the layer kernels hand to it.
"""

import numpy as np
import pytest

from clstm._blas import axpy_py, gemm_py, gemv_py, scal_py

pytestmark = pytest.mark.kernel

DTYPES = [np.float32, np.float64]
# relative tolerance per dtype: a sum of ~10 products each rounded once
RTOL = {np.float32: 1e-5, np.float64: 1e-13}


def _layout(a, order, padded):
    """a copy of `a` in `order`, optionally as a slice of a larger array (lda > width)."""
    if not padded:
        return np.array(a, order=order, copy=True)
    m, n = a.shape
    big = np.full((m + 3, n + 5), np.nan, dtype=a.dtype, order=order)
    view = big[1:m + 1, 2:n + 2]
    view[...] = a
    # the view keeps unit stride along one axis and a leading dimension of the big array
    if order == "C":
        assert view.strides[1] == a.itemsize and view.strides[0] == (n + 5) * a.itemsize
    else:
        assert view.strides[0] == a.itemsize and view.strides[1] == (m + 3) * a.itemsize
    return view


def _assert_close(actual, expected, dtype):
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(actual, expected, rtol=RTOL[dtype], atol=RTOL[dtype] * scale)


@pytest.mark.parametrize("dtype", DTYPES)
def test_axpy(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(17).astype(dtype)
    y = rng.standard_normal(17).astype(dtype)
    expected = 2.5 * x.astype(np.float64) + y
    axpy_py(x, y, 2.5)
    _assert_close(y, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_scal(dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(13).astype(dtype)
    expected = -0.75 * x.astype(np.float64)
    scal_py(x, -0.75)
    _assert_close(x, expected, dtype)


def test_axpy_length_mismatch():
    with pytest.raises(ValueError, match="same length"):
        axpy_py(np.ones(3), np.ones(4), 1.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans", [False, True])
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("padded", [False, True], ids=["lda=width", "lda>width"])
@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_gemv(dtype, trans, order, padded, beta):
    rng = np.random.default_rng(2)
    m, n = 7, 5
    A = _layout(rng.standard_normal((m, n)).astype(dtype), order, padded)
    opA = A.T if trans else A
    x = rng.standard_normal(opA.shape[1]).astype(dtype)
    y = rng.standard_normal(opA.shape[0]).astype(dtype)
    expected = 1.5 * opA.astype(np.float64) @ x + beta * y
    gemv_py(A, x, y, 1.5, beta, trans)
    _assert_close(y, expected, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("padded", [False, True], ids=["ld=width", "ld>width"])
@pytest.mark.parametrize("beta", [0.0, 1.0, -0.5])
def test_gemm(dtype, trans_a, trans_b, order, padded, beta):
    rng = np.random.default_rng(3)
    m, n, k = 6, 4, 9      # all different, so a swapped dimension cannot pass
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    c = rng.standard_normal((m, n)).astype(dtype)
    A, B, C = (_layout(v, order, padded) for v in (a, b, c))
    opA = a.T if trans_a else a
    opB = b.T if trans_b else b
    expected = 0.7 * opA.astype(np.float64) @ opB + beta * c
    gemm_py(A, B, C, 0.7, beta, trans_a, trans_b)
    _assert_close(C, expected, dtype)
    if padded:
        # nothing written outside the view
        assert np.isnan(C.base[0]).all() and np.isnan(C.base[:, 0]).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_beta_zero_ignores_nan_in_c(dtype):
    # BLAS semantics: beta == 0 means C is not read (the kernels rely on it
    # only with initialised buffers, but a wrong beta path would show here)
    rng = np.random.default_rng(4)
    A = rng.standard_normal((3, 4)).astype(dtype)
    B = rng.standard_normal((4, 2)).astype(dtype)
    C = np.full((3, 2), np.nan, dtype=dtype)
    gemm_py(A, B, C, 1.0, 0.0)
    _assert_close(C, A.astype(np.float64) @ B, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padded", [False, True], ids=["ld=width", "ld>width"])
def test_gemm_single_row_and_column(dtype, padded):
    # 1-wide matrices have an ambiguous stride (a (1, n) array is both C- and
    # F-contiguous); the twin resolves them as row-major, with a valid ld.
    rng = np.random.default_rng(5)
    A = _layout(rng.standard_normal((1, 5)).astype(dtype), "C", padded)
    B = _layout(rng.standard_normal((5, 1)).astype(dtype), "C", padded)
    C = np.zeros((1, 1), dtype=dtype)
    gemm_py(A, B, C, 1.0, 0.0)
    _assert_close(C, A.astype(np.float64) @ B, dtype)
    C2 = np.zeros((5, 5), dtype=dtype)
    gemm_py(B, A, C2, 2.0, 0.0)
    _assert_close(C2, 2.0 * B.astype(np.float64) @ A, dtype)


def test_gemm_mixed_orders_rejected():
    A = np.ones((3, 4))
    B = np.asfortranarray(np.ones((4, 2)))
    C = np.zeros((3, 2))
    with pytest.raises(ValueError, match="memory order"):
        gemm_py(A, B, C, 1.0, 0.0)


def test_non_unit_stride_rejected():
    A = np.ones((6, 8))[::2, ::2]
    with pytest.raises(ValueError, match="unit stride"):
        gemv_py(A, np.ones(4), np.zeros(3), 1.0, 0.0)


def test_dtype_specialisation_is_picked_by_arrays():
    # float32 arrays must run sgemm (float32 rounding), not be rejected or upcast
    A = np.array([[1.0 + 2.0 ** -20]], dtype=np.float32)
    B = np.array([[1.0 + 2.0 ** -20]], dtype=np.float32)
    C = np.zeros((1, 1), dtype=np.float32)
    gemm_py(A, B, C, 1.0, 0.0)
    assert C.dtype == np.float32
    assert C[0, 0] == np.float32(A[0, 0] * B[0, 0])
    with pytest.raises((TypeError, ValueError)):
        gemm_py(A, B.astype(np.float64), C, 1.0, 0.0)
