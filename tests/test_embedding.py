"""The embedding kernels (gather / scatter-add) and input layer against NumPy oracles."""

import numpy as np
import pytest

from clstm import _embedding
from clstm._tokens import Embedding, RowGradient, check_token_ids, token_sequences

pytestmark = pytest.mark.kernel
DTYPES = [np.float32, np.float64]


def _batch(rng, B=5, T=7, V=6):
    """Ids with many repeats (V small), ragged lengths, garbage past each length."""
    ids = rng.randint(0, V, size=(B, T)).astype(np.int64)
    lengths = rng.randint(1, T + 1, size=B).astype(np.int64)
    lengths[0] = T
    for b in range(B):
        ids[b, lengths[b]:] = 10 ** 9          # never read
    return ids, lengths


def _reference_backward(ids, lengths, grad_out, V, padding_idx=None):
    """np.add.at into a dense table, then its non-zero rows."""
    dense = np.zeros((V, grad_out.shape[-1]))
    valid = np.arange(ids.shape[1])[None, :] < lengths[:, None]
    np.add.at(dense, ids[valid], grad_out[valid].astype(np.float64))
    used = np.unique(ids[valid])
    if padding_idx is not None:
        used = used[used != padding_idx]
        dense[padding_idx] = 0
    return used, dense


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_equals_fancy_indexing_and_zero_padding(dtype):
    rng = np.random.RandomState(0)
    ids, lengths = _batch(rng)
    weight = rng.randn(6, 3).astype(dtype)
    out = np.full((5, 7, 3), np.nan, dtype=dtype)
    _embedding.gather(weight, ids, lengths, out)
    valid = np.arange(7)[None, :] < lengths[:, None]
    np.testing.assert_array_equal(out[valid], weight[ids[valid]])
    assert np.all(out[~valid] == 0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("padding_idx", [None, 2])
def test_backward_equals_add_at_on_used_rows_only(dtype, padding_idx):
    rng = np.random.RandomState(1)
    V = 6
    ids, lengths = _batch(rng, V=V)
    layer = Embedding(rng.randn(V, 3).astype(dtype), padding_idx=padding_idx)
    grad_out = rng.randn(5, 7, 3).astype(dtype)
    g = layer.backward(ids, grad_out, lengths)
    rows, dense = _reference_backward(ids, lengths, grad_out, V, padding_idx)
    np.testing.assert_array_equal(g.rows, rows)          # sorted distinct ids, no padding id
    assert g.values.shape == (rows.size, 3) and g.values.dtype == dtype
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(g.values, dense[rows], rtol=tol, atol=tol)
    np.testing.assert_allclose(g.toarray(), dense, rtol=tol, atol=tol)


def test_repeated_id_accumulates():
    layer = Embedding(np.zeros((4, 2)))
    ids = np.array([[1, 1, 1]])
    g = layer.backward(ids, np.ones((1, 3, 2)))
    np.testing.assert_array_equal(g.rows, [1])
    np.testing.assert_array_equal(g.values, [[3.0, 3.0]])


def test_padding_row_is_zero_in_forward():
    rng = np.random.RandomState(2)
    layer = Embedding(rng.randn(5, 3), padding_idx=4)
    out = layer.forward(np.array([[4, 1, 4]]))
    assert np.all(out[0, 0] == 0) and np.all(out[0, 2] == 0)
    np.testing.assert_array_equal(out[0, 1], layer.weight[1])


def test_forward_backward_finite_differences():
    """d/dW sum(R * forward(W)) in float64 by central differences."""
    rng = np.random.RandomState(3)
    ids, lengths = _batch(rng, B=3, T=4, V=5)
    layer = Embedding(rng.randn(5, 2))
    R = rng.randn(3, 4, 2)
    g = layer.backward(ids, R, lengths).toarray()
    num = np.zeros_like(layer.weight)
    eps = 1e-6
    for idx in np.ndindex(*layer.weight.shape):
        w0 = layer.weight[idx]
        layer.weight[idx] = w0 + eps
        up = np.sum(R * layer.forward(ids, lengths))
        layer.weight[idx] = w0 - eps
        down = np.sum(R * layer.forward(ids, lengths))
        layer.weight[idx] = w0
        num[idx] = (up - down) / (2 * eps)
    np.testing.assert_allclose(g, num, rtol=1e-7, atol=1e-9)


def test_row_gradient_scaling_norm_and_sum():
    a = RowGradient(np.array([1, 3]), np.array([[1.0, 2.0], [3.0, 4.0]]), (5, 2))
    b = RowGradient(np.array([0, 3]), np.array([[1.0, 1.0], [1.0, 1.0]]), (5, 2))
    dense = a.toarray() + b.toarray()
    a += b
    np.testing.assert_array_equal(a.toarray(), dense)
    a *= 0.5
    np.testing.assert_array_equal(a.toarray(), 0.5 * dense)
    assert np.linalg.norm(a.ravel()) == pytest.approx(np.linalg.norm(0.5 * dense))


@pytest.mark.parametrize("bad, message", [
    ([[1, 2, 7]], r"token id 7 at position \(0, 2\) is outside the vocabulary \[0, 5\)"),
    ([[1, -1]], r"token id -1 at position \(0, 1\)"),
    ([[1.0, 2.5]], r"must be integers, got 2.5 at position \(0, 1\)"),
    ([[True, False]], r"must be integers"),
])
def test_bad_ids_are_refused_with_id_and_position(bad, message):
    with pytest.raises(ValueError, match=message):
        check_token_ids(np.array(bad), 5)


def test_token_sequences_layouts():
    arr, lengths, ragged = token_sequences([np.array([1, 2, 3]), [4]], 5)
    np.testing.assert_array_equal(arr, [[1, 2, 3], [4, 0, 0]])
    np.testing.assert_array_equal(lengths, [3, 1])
    assert ragged
    padded = np.array([[1, 2, 99], [3, 99, 99]])       # padding out of range: never checked
    arr, lengths, ragged = token_sequences(padded, 5, lengths=[2, 1])
    np.testing.assert_array_equal(arr, [[1, 2], [3, 0]])
    arr, lengths, ragged = token_sequences(np.array([[1.0, 2.0]]), 5)   # integral floats
    assert arr.dtype == np.int64 and not ragged
    with pytest.raises(ValueError, match=r"X\[1\]: token id 9 at position 0"):
        token_sequences([[1], [9]], 5)
    with pytest.raises(ValueError, match="X\\[0\\] is empty"):
        token_sequences([[], [1]], 5)
    with pytest.raises(ValueError, match="encode text first"):
        token_sequences(["abc"], 5)
    with pytest.raises(ValueError, match="list of 1-D integer arrays"):
        token_sequences(np.zeros((2, 3, 1), dtype=int), 5)


def test_kernel_shape_checks():
    w = np.zeros((3, 2))
    with pytest.raises(ValueError, match="out must be"):
        _embedding.gather(w, np.zeros((2, 2), dtype=np.int64), np.ones(2, dtype=np.int64),
                          np.zeros((2, 3, 2)))
