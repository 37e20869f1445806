"""The float32 small-GEMM kernel (packed weights) against NumPy, and the
network computed with it against the network computed with BLAS."""

import numpy as np
import pytest

import clstm
import clstm._rnn as rnn_module
from clstm import _scan

pytestmark = [
    pytest.mark.kernel,
    pytest.mark.skipif(not _scan.HAVE_PACKED_GEMM, reason="build without the small-GEMM kernel"),
]

# rows around the tile heights (2, 4, 6) and every leftover block height (1-5),
# columns around the panel widths (16, 64)
SHAPES = [(1, 1, 1), (1, 64, 256), (2, 3, 16), (5, 7, 17), (7, 50, 200), (13, 33, 64),
          (33, 17, 70), (64, 128, 512), (3, 200, 50), (4, 9, 80), (10, 20, 48),
          (16, 51, 200), (11, 5, 130),
          # B past one panel group (_packed_gemm.h: CLSTM_GROUP_BYTES): groups of
          # 4 panels at K = 600, of 12 at K = 160, a partial last panel
          (9, 600, 200), (6, 160, 1000),
          # right edges of 2 panels, and of 2 + 1 (the 2-panel edge tile)
          (6, 40, 32), (5, 64, 40), (3, 17, 100),
          # one panel: 8-row tiles first (AVX-512), the rows left on 1-4-row ones
          (19, 40, 12), (16, 9, 16),
          # an odd number of panels: the last one on 8-row tiles first (AVX-512)
          (32, 50, 200), (13, 50, 200), (20, 30, 48), (9, 17, 80)]


@pytest.mark.parametrize("n, K, N", SHAPES)
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("accumulate", [False, True])
def test_packed_matmul_matches_numpy(n, K, N, transposed, accumulate):
    rng = np.random.default_rng(n * 1000 + K * 10 + N)
    a = rng.standard_normal((n, K)).astype(np.float32)
    B = rng.standard_normal((K, N)).astype(np.float32)
    weight = np.ascontiguousarray(B.T) if transposed else B
    c0 = rng.standard_normal((n, N)).astype(np.float32)
    c = c0.copy()
    _scan.packed_matmul(a, weight, transposed, c, accumulate)
    expected = a.astype(np.float64) @ B.astype(np.float64) + (c0 if accumulate else 0)
    scale = np.abs(a).max() * np.abs(B).max() * K + 1
    np.testing.assert_allclose(c, expected, rtol=0, atol=4e-7 * scale)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize("K, N", [(80, 256), (24, 240), (17, 100), (33, 48), (7, 16), (160, 1000)])
def test_panel_order_changes_no_value(n, K, N):
    # odd steps of a scan take the panels right to left (the first block of
    # rows; the next blocks alternate), to start on those still in L1: the
    # same sums, bit for bit, on every tile width (single AVX-512 rows: 8
    # panels, then 4, 2 and 1 at the right edge: N = 240 is 8 + 4 + 2 + 1)
    rng = np.random.default_rng(n * 7 + K + N)
    a = rng.standard_normal((n, K)).astype(np.float32)
    w = rng.standard_normal((N, K)).astype(np.float32)
    c0 = rng.standard_normal((n, N)).astype(np.float32)
    results = []
    for order in (0, 1):
        for accumulate in (False, True):
            c = c0.copy()
            _scan.packed_matmul(a, w, True, c, accumulate, order=order)
            results.append(c)
    np.testing.assert_array_equal(results[0], results[2])
    np.testing.assert_array_equal(results[1], results[3])
    expected = a.astype(np.float64) @ w.T.astype(np.float64)
    scale = np.abs(a).max() * np.abs(w).max() * K + 1
    np.testing.assert_allclose(results[0], expected, rtol=0, atol=4e-7 * scale)


def _one_row_case(seed, N, K, accumulate):
    """A one-row product's operands: w (K x N), a (K), c0 (N), and its float64
    value c0 (if accumulate) + a @ w with the tolerance of a float32 sum."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((K, N)).astype(np.float32)
    a = rng.standard_normal(K).astype(np.float32)
    c0 = rng.standard_normal(N).astype(np.float32)
    expected = a.astype(np.float64) @ w.astype(np.float64) + (c0 if accumulate else 0)
    return w, a, c0, expected, 4e-7 * (np.abs(a).max() * np.abs(w).max() * K + 1)


@pytest.mark.parametrize("N", [1, 15, 16, 17, 200, 256])
@pytest.mark.parametrize("K", [1, 13, 16, 64, 80])
@pytest.mark.parametrize("accumulate", [False, True])
def test_row_gemv_matches_numpy(N, K, accumulate):
    # the streaming step's product on the live weights: 16 rows at a time and
    # the rows left one by one, k in 16-lane vectors with a masked tail
    w, a, c0, expected, atol = _one_row_case(N * 100 + K, N, K, accumulate)
    c = c0.copy()
    if not _scan.row_gemv(np.ascontiguousarray(w.T), a, c, accumulate):
        np.testing.assert_array_equal(c, c0)
        pytest.skip("the row kernel runs on AVX-512 only (BLAS elsewhere)")
    np.testing.assert_allclose(c, expected, rtol=0, atol=atol)


@pytest.mark.parametrize("N", [1, 16, 17, 40, 64, 65, 100, 256])
@pytest.mark.parametrize("K", [1, 2, 3, 64, 255, 256])
@pytest.mark.parametrize("accumulate", [False, True])
def test_row_split_matches_numpy(N, K, accumulate):
    # batch 1's grad_h product: two halves of k per output (an odd row in the
    # second), 4-, 2- and 1-panel groups, in either order of k
    w, a, c0, expected, atol = _one_row_case(N * 1000 + K, N, K, accumulate)
    for order in (0, 1):
        c = c0.copy()
        _scan.packed_row_split(a, w, c, accumulate, order)
        np.testing.assert_allclose(c, expected, rtol=0, atol=atol)


@pytest.mark.parametrize("cls", [clstm.LSTM, clstm.GRU])
def test_batch_one_backward_matches_finite_differences(cls):
    # the batch-1 backward (grad_h in two halves of k, alternating the order
    # by step; the GRU adds it to its direct path) against central differences
    # in float64 of the float32 network's loss, and against the same row
    # inside a batch of three
    rng = np.random.default_rng(11)
    I, H, T = 5, 40, 7
    X = rng.standard_normal((1, T, I)).astype(np.float32)
    net = cls(I, H, random_state=3, dtype="float32")
    out, _ = net.forward(X)
    g_out = rng.standard_normal(out.shape).astype(np.float32)
    net.backward(g_out)
    grads = {k: v.copy() for k, v in net.grads.items()}
    batch = cls(I, H, random_state=3, dtype="float32")
    X3 = np.concatenate([X, rng.standard_normal((2, T, I)).astype(np.float32)])
    out3, _ = batch.forward(X3)
    g3 = np.zeros_like(out3)
    g3[:1] = g_out
    batch.backward(g3)
    rows = {"weight_hh_l0": [(0, 0), (3, 7), (110, 39)], "weight_ih_l0": [(5, 1), (100, 4)]}
    net64 = cls(I, H, random_state=3, dtype="float64")
    net64.load_state_dict({k: v.astype(np.float64) for k, v in net.state_dict().items()})
    for name, entries in rows.items():
        np.testing.assert_allclose(grads[name], batch.grads[name], rtol=1e-5, atol=1e-6)
        for i, j in entries:
            eps = 1e-6
            w = net64.params[name]
            keep = w[i, j]
            w[i, j] = keep + eps
            plus = float(np.sum(net64.forward(X.astype(np.float64))[0] * g_out))
            w[i, j] = keep - eps
            minus = float(np.sum(net64.forward(X.astype(np.float64))[0] * g_out))
            w[i, j] = keep
            np.testing.assert_allclose(grads[name][i, j], (plus - minus) / (2 * eps),
                                       rtol=1e-4, atol=1e-5)


def _whole_product(n, K, N):
    """a (n, K), w (N, K) and a @ w.T on the small-GEMM kernel, seeded by the shape."""
    rng = np.random.default_rng(n + K + N)
    a = rng.standard_normal((n, K)).astype(np.float32)
    w = rng.standard_normal((N, K)).astype(np.float32)
    whole = np.zeros((n, N), np.float32)
    _scan.packed_matmul(a, w, True, whole, False)
    return a, w, whole


@pytest.mark.parametrize("n, K, N", [(16, 51, 200), (32, 144, 512), (23, 9, 70), (9, 128, 40),
                                     (21, 64, 12), (19, 50, 200), (20, 30, 48)])
def test_rows_do_not_depend_on_their_block(n, K, N):
    # the rows left over after the full tiles run on shorter tiles; each row's
    # sums must be bit for bit those of the same row in any other block, as
    # thread splits of the batch rely on
    a, w, whole = _whole_product(n, K, N)
    for start in range(n):
        for stop in (start + 1, min(n, start + 4), n):
            part = np.zeros((stop - start, N), np.float32)
            _scan.packed_matmul(np.ascontiguousarray(a[start:stop]), w, True, part, False)
            np.testing.assert_array_equal(part, whole[start:stop])


@pytest.mark.parametrize("n, K, N", [(9, 600, 200), (6, 160, 1000), (1, 2100, 70)])
def test_columns_do_not_depend_on_their_panel_group(n, K, N):
    # a B larger than a panel group runs group by group over all rows; each
    # column's sums are bit for bit those of a product with that column's
    # panel alone (one group)
    a, w, whole = _whole_product(n, K, N)
    for j0 in range(0, N, 16):
        part = np.zeros((n, min(16, N - j0)), np.float32)
        _scan.packed_matmul(a, np.ascontiguousarray(w[j0:j0 + 16]), True, part, False)
        np.testing.assert_array_equal(part, whole[:, j0:j0 + 16])


def test_packed_matmul_on_a_weight_packed_once():
    # the benchmarks time the kernel on a weight packed once (as the scan runs
    # it T times): the same bits as packing on the call; a packing of another
    # shape is refused, not read past its end
    rng = np.random.default_rng(5)
    a = rng.standard_normal((7, 40)).astype(np.float32)
    w = rng.standard_normal((40, 70)).astype(np.float32)
    fresh, kept = np.zeros((7, 70), np.float32), np.zeros((7, 70), np.float32)
    _scan.packed_matmul(a, w, False, fresh, False)
    _scan.packed_matmul(a, w, False, kept, False, _scan.pack_weight(w, False))
    np.testing.assert_array_equal(kept, fresh)
    with pytest.raises(ValueError, match="packed size"):
        _scan.packed_matmul(a, w, False, kept, False, _scan.pack_weight(w[:, :50].copy(), False))


def test_pack_weight_layout():
    w = np.arange(3 * 20, dtype=np.float32).reshape(3, 20)     # K=3, N=20
    packed = _scan.pack_weight(w, False)
    assert packed.shape == (2 * 3 * 16,)
    panels = packed.reshape(2, 3, 16)
    np.testing.assert_array_equal(panels[0], w[:, :16])
    np.testing.assert_array_equal(panels[1, :, :4], w[:, 16:])
    np.testing.assert_array_equal(panels[1, :, 4:], 0)          # zero padding
    np.testing.assert_array_equal(_scan.pack_weight(np.ascontiguousarray(w.T), True), packed)
    # whole panels of a transposed B go 4 x 4 at a time (SSE), the k left over
    # and a partial panel one by one: the same layout either way
    for K, N in [(10, 37), (80, 256), (4, 16), (7, 33)]:
        w = np.random.default_rng(K * N).standard_normal((K, N)).astype(np.float32)
        np.testing.assert_array_equal(_scan.pack_weight(np.ascontiguousarray(w.T), True),
                                      _scan.pack_weight(w, False))


def test_packed_weights_start_on_a_cache_line():
    # a panel row split across two cache lines made whole forwards ~25 %
    # slower; the packs of a network (kept, then refreshed in place) start on
    # a 64-byte boundary in every process, whatever NumPy's allocator returns
    rng = np.random.default_rng(6)
    for K, N in [(3, 20), (80, 256), (64, 257)]:
        w = rng.standard_normal((K, N)).astype(np.float32)
        for transposed in (False, True):
            packed = _scan.pack_weight(w if not transposed else np.ascontiguousarray(w.T),
                                       transposed)
            assert packed.ctypes.data % 64 == 0
    net = clstm.LSTM(16, 64, dtype="float32", random_state=0)
    X = rng.standard_normal((1, 30, 16)).astype(np.float32)
    net.forward(X)
    net.backward(np.ones((1, 30, 64), np.float32))
    net.run(X, keep_cache=False)
    lists = [net.__dict__["_weights_memo"][1], net.__dict__["_backward_memo"][1],
             *(fused for _, fused in net.__dict__["_fused_memo"].values())]   # (per input mode)
    packs = [v for weights in lists for arrays in weights for k, v in arrays.items()
             if k.startswith(("packed", "fused")) and v is not None]
    assert len(packs) >= 4
    assert all(p.ctypes.data % 64 == 0 for p in packs)


@pytest.mark.parametrize("B, T, I, H, layers, bidirectional, ragged", [
    (32, 20, 1, 50, 1, False, False),
    (1, 30, 16, 64, 1, False, False),
    (9, 7, 40, 33, 2, True, True),       # I >= 32: packed input projection too
    (17, 5, 3, 16, 1, True, True),
    # grad_x of 4 and 5 inputs (dot products up to _narrow_gemm.h's CLSTM_NARROW_MAX,
    # the packed kernel past it); 3 units: grad_h as dot products too
    (25, 9, 4, 20, 1, False, False),
    (6, 4, 5, 8, 2, False, True),
    (8, 6, 2, 3, 1, True, False),
])
def test_network_packed_equals_blas_path(monkeypatch, B, T, I, H, layers, bidirectional, ragged):
    rng = np.random.default_rng(0)
    X = rng.standard_normal((B, T, I)).astype(np.float32)
    lengths = rng.integers(1, T + 1, size=B) if ragged else None
    results = {}
    for use in (True, False):
        monkeypatch.setattr(rnn_module, "USE_PACKED_GEMM", use)
        net = clstm.LSTM(I, H, num_layers=layers, bidirectional=bidirectional, random_state=1)
        out, (h_n, c_n) = net.forward(X, lengths=lengths)
        grad_X = net.backward(np.cos(out), np.sin(h_n), np.cos(c_n))
        results[use] = (out, h_n, c_n, grad_X, dict(net.grads))
    for a, b in zip(results[True][:4], results[False][:4]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    for name, g in results[True][4].items():
        np.testing.assert_allclose(g, results[False][4][name], rtol=1e-4, atol=1e-4, err_msg=name)
