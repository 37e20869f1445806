"""The weight-gradient kernel (clstm_wgrad in _packed_gemm.h): C (+)= A^T @ B
over all steps' rows, in blocks of 128 rows; A read transposed in place and
B packed, or (where the panels waste less that way) C^T = B^T @ A with A
packed; A's block copied where its rows lie a multiple of 4 KB apart.
Checked against float64 NumPy at shapes that cross every edge (block of rows,
panel, tile height, copy chunk) in both orientations, split by rows bit for
bit, and in the networks' backward against the float64 gradients and the
BLAS path."""

import numpy as np
import pytest

from clstm import _scan

from _weight_gradients import CELLS, float32_and_reference, gradients

pytestmark = [
    pytest.mark.kernel,     # fast: also run against the bounds-checked build
    pytest.mark.skipif(not _scan.HAVE_PACKED_GEMM, reason="this build uses BLAS"),
]


def _reference(a, b):
    return a.astype(np.float64).T @ b.astype(np.float64)


def _close(c, want, M):
    """float32 sums of M products of standard normals: errors grow like sqrt(M)."""
    np.testing.assert_allclose(c, want, rtol=0, atol=2e-6 * max(M, 1) ** 0.5 * 4 + 1e-6)


@pytest.mark.parametrize("M", [0, 1, 127, 128, 129, 300])
@pytest.mark.parametrize("G,N", [(1, 1), (3, 5), (8, 16), (13, 17), (32, 33),
                                 (64, 136), (200, 51), (20, 80)])
@pytest.mark.parametrize("accumulate", [False, True])
def test_matches_float64(M, G, N, accumulate):
    rng = np.random.default_rng(M * 1000 + G * 10 + N)
    a = rng.standard_normal((M, G), dtype=np.float32)
    b = rng.standard_normal((M, N), dtype=np.float32)
    c0 = rng.standard_normal((G, N), dtype=np.float32)
    c = c0.copy()
    _scan.wgrad_matmul(a, b, c, accumulate)
    _close(c, _reference(a, b) + (c0 if accumulate else 0), M)


def test_both_orientations_are_chosen():
    assert _scan.wgrad_swapped(128, 33)          # 3 panels of 33 columns, 8 of 128 rows
    assert _scan.wgrad_swapped(200, 51)
    assert not _scan.wgrad_swapped(512, 136)     # 9 panels: 6 % wasted, within 10 %
    assert not _scan.wgrad_swapped(64, 16)


def test_rows_a_multiple_of_4_kb_apart_take_the_copy():
    """G = 1024 (lda 4 KB): the block's A is copied, 128 columns at a time
    (whole and partial copy chunks)."""
    rng = np.random.default_rng(7)
    for G in (1024, 2048):
        assert not _scan.wgrad_swapped(G, 48)
        a = rng.standard_normal((300, G), dtype=np.float32)
        b = rng.standard_normal((300, 48), dtype=np.float32)
        c = np.empty((G, 48), np.float32)
        _scan.wgrad_matmul(a, b, c, False)
        _close(c, _reference(a, b), 300)
        # a row range that starts and ends inside a copy chunk
        part = np.zeros_like(c)
        _scan.wgrad_matmul(a, b, part, False, 200, 1000)
        assert np.array_equal(part[200:1000], c[200:1000])
        assert not part[:200].any() and not part[1000:].any()


@pytest.mark.parametrize("G,N", [(64, 136), (200, 51), (128, 33), (1024, 40)])
def test_any_split_by_rows_gives_the_same_bits(G, N):
    """Every thread split of C's rows (whole tiles or panels or not; in the
    swapped orientation, columns of the transpose, each from its own columns
    of A packed) sums each element in the same order: the team's results do
    not depend on its size."""
    rng = np.random.default_rng(G + N)
    a = rng.standard_normal((520, G), dtype=np.float32)
    b = rng.standard_normal((520, N), dtype=np.float32)
    whole = np.zeros((G, N), np.float32)
    _scan.wgrad_matmul(a, b, whole, True)
    R = G
    for cuts in ([0, 8, R], [0, 3, 11, R], [0, R // 3, 2 * R // 3 + 1, R]):
        parts = np.zeros((G, N), np.float32)
        for g0, g1 in zip(cuts[:-1], cuts[1:]):
            _scan.wgrad_matmul(a, b, parts, True, g0, g1)
        assert np.array_equal(parts, whole), cuts


def test_no_rows_overwrites_or_keeps():
    c = np.ones((5, 7), np.float32)
    empty_a, empty_b = np.empty((0, 5), np.float32), np.empty((0, 7), np.float32)
    _scan.wgrad_matmul(empty_a, empty_b, c, True)
    assert (c == 1).all()
    _scan.wgrad_matmul(empty_a, empty_b, c, False)
    assert not c.any()


def test_shapes_are_checked():
    a = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="internal layout error"):
        _scan.wgrad_matmul(a, np.zeros((5, 2), np.float32), np.zeros((3, 2), np.float32), False)
    with pytest.raises(ValueError, match="internal layout error"):
        _scan.wgrad_matmul(a, np.zeros((4, 2), np.float32), np.zeros((3, 2), np.float32),
                           False, 2, 4)


@pytest.fixture
def blas_path():
    """Every weight gradient on the kernel, whatever its size (no blocks of
    the BLAS's small-product kernel to keep them there); a block of the test
    with them all on SciPy's BLAS."""
    class Switch:
        def __enter__(self):
            self.saved = _scan.set_wgrad_kernel(False)

        def __exit__(self, *exc):
            _scan.set_wgrad_kernel(self.saved)
    volume = _scan.set_small_gemm_volume(0)
    yield Switch()
    _scan.set_small_gemm_volume(volume)


@pytest.mark.parametrize("ragged", [False, True], ids=["full", "ragged"])
@pytest.mark.parametrize("name", list(CELLS))
def test_network_gradients_on_the_kernel(blas_path, name, ragged):
    """The backward on the kernel gives the float64 network's gradients (to
    float32 rounding), as the BLAS path does, and another summation order
    than the BLAS somewhere (the kernel was used)."""
    net32, X, lengths, want = float32_and_reference(name, ragged, B=6, T=40, H=8)
    kernel = gradients(net32, X, lengths)
    with blas_path:
        blas = gradients(net32, X, lengths)
    assert any(not np.array_equal(kernel[k], blas[k]) for k in kernel if k.startswith("weight"))
    for k, w in want.items():
        scale = np.abs(w).max()
        np.testing.assert_allclose(kernel[k], w, rtol=0, atol=2e-5 * scale + 1e-6, err_msg=k)
        np.testing.assert_allclose(blas[k], w, rtol=0, atol=2e-5 * scale + 1e-6, err_msg=k)


def test_setting_is_returned():
    previous = _scan.set_wgrad_kernel(False)
    assert _scan.set_wgrad_kernel(previous) is False
