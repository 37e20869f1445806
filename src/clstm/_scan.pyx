"""The scan: one driver over time, forward and BPTT, for every cell kind.

A layer (one direction of one recurrent layer) is described by a Layer
struct (_scan.pxd): the cell kind and its variant, the sizes, and the
buffers. The scan owns the time loop, ragged lengths, initial states and
the recurrent dropout mask; each step runs the cell's GEMMs (here) and
then its elementwise math (the cell kernels of _cell.pxd), as oneDNN's
`ref_rnn` drives its cells' "postgemm".

Forward: one GEMM projects the inputs of all steps (the LSTM family folds
the projection into each step's product instead for thin inputs, and for wide
ones from 4 rows: _rnn.STEPWISE_MIN_BATCH); then per step the
recurrent product, the cell, and for LSTMP the projection. Backward: per
step only the cell backward and grad_h_prev; the weight gradients and
grad_x come after the loop as whole-sequence GEMMs.

ConvLSTM (Layer.conv) is the LSTM cell with convolutional products: rows
are pixels, x arrives as the input's im2col columns (so the input projection
is the input convolution), and each step im2cols h_{t-1} before its GEMM;
the backward adds the recurrent weight gradient step by step from those
columns and col2ims grad_h (no whole-sequence [x | h] buffer).

forward() and backward() run one layer direction over one (sub-)batch with
the GIL released; forward_network() runs a whole forward, every sub-batch
through every layer direction, in one call, the sub-batches on POSIX threads
(_threads.h) started and joined inside it.
"""

from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdlib cimport free, malloc
from libc.string cimport memcmp, memcpy, memset

cimport numpy as cnp

from clstm._blas cimport _gemm, _gemv, RowMajor, NoTrans, Trans
from clstm._cell cimport (
    CLSTM_COUPLED,
    CLSTM_GATES_UNREAD,
    CLSTM_LN_CELL,
    CLSTM_PEEPHOLE,
    gru_cell_backward,
    gru_cell_forward,
    ln_gates_backward,
    ln_gates_forward,
    lstm_cell_backward,
    lstm_cell_forward,
)

cdef extern from "_packed_gemm.h" nogil:
    int CLSTM_HAVE_PACKED_GEMM
    int CLSTM_PANEL
    Py_ssize_t clstm_packed_size(Py_ssize_t K, Py_ssize_t N)
    void clstm_pack_b(Py_ssize_t K, Py_ssize_t N, const float* b, Py_ssize_t ldb,
                      int transposed, float* packed)
    void clstm_packed_gemm(Py_ssize_t n, Py_ssize_t K, Py_ssize_t N, const float* a,
                           Py_ssize_t lda, const float* packed, float* c,
                           Py_ssize_t ldc, int accumulate, int order)
    void clstm_packed_row_split(Py_ssize_t K, const float* a, Py_ssize_t N,
                                const float* packed, float* c, int accumulate, int order)
    void clstm_packed_gemm2(Py_ssize_t n, Py_ssize_t K1, const float* a1, Py_ssize_t lda1,
                            Py_ssize_t K2, const float* a2, Py_ssize_t lda2, Py_ssize_t N,
                            const float* packed, float* c, Py_ssize_t ldc, int accumulate,
                            int order)
    bint clstm_wgrad_swapped(Py_ssize_t G, Py_ssize_t N)
    Py_ssize_t clstm_wgrad_unit(Py_ssize_t G, Py_ssize_t N)
    Py_ssize_t clstm_wgrad_work_size(Py_ssize_t G, Py_ssize_t N)
    void clstm_wgrad(Py_ssize_t M, Py_ssize_t G, Py_ssize_t N, const float* a,
                     Py_ssize_t lda, const float* b, Py_ssize_t ldb, float* c, Py_ssize_t ldc,
                     int accumulate, Py_ssize_t r0, Py_ssize_t r1, float* work)

cdef extern from "_narrow_gemm.h" nogil:
    int CLSTM_NARROW_MAX
    int clstm_narrow_gemm(Py_ssize_t n, Py_ssize_t K, Py_ssize_t N, const float* a,
                          Py_ssize_t lda, const float* b, float* c, Py_ssize_t ldc,
                          int accumulate)

cdef extern from "_row_gemv.h" nogil:
    int clstm_row_gemv(Py_ssize_t N, Py_ssize_t K, const float* w, const float* a, float* c,
                       int accumulate)

cdef extern from "_fused_cell.h" nogil:
    int CLSTM_HAVE_FUSED_CELL
    int CLSTM_FUSED_MAX_ROWS
    Py_ssize_t clstm_fused_width()
    Py_ssize_t clstm_fused_size(Py_ssize_t K, Py_ssize_t H, int ng, int peephole)
    void clstm_pack_fused(Py_ssize_t K1, const float* w1, Py_ssize_t K2, const float* w2,
                          Py_ssize_t H, int ng, const float* bias, const float* peep,
                          float* out)
    void clstm_fused_lstm_step(int variant, Py_ssize_t n, Py_ssize_t K1, const float* a1,
                               Py_ssize_t lda1, Py_ssize_t K2, const float* a2,
                               Py_ssize_t lda2, Py_ssize_t H, const float* packed,
                               const float* pre, Py_ssize_t ld_pre,
                               const float* c_prev, Py_ssize_t ld_cp,
                               float* c, Py_ssize_t ld_c, float* h, Py_ssize_t ld_h,
                               Py_ssize_t u0, Py_ssize_t u1, int order)

cdef extern from "_threads.h" nogil:
    int CLSTM_HAVE_THREADS
    int CLSTM_TEAM_MAX
    ctypedef void (*clstm_task_fn)(void* ctx, Py_ssize_t k) noexcept nogil
    Py_ssize_t clstm_run_tasks(Py_ssize_t n, clstm_task_fn task, void* ctx)
    ctypedef void (*clstm_slice_fn)(const void* ctx, Py_ssize_t k, Py_ssize_t n) noexcept nogil
    ctypedef struct clstm_team:
        pass
    void clstm_prefetch_rows(const float* p, Py_ssize_t n, Py_ssize_t width, Py_ssize_t ld)
    void clstm_team_init(clstm_team* team, Py_ssize_t size)
    void clstm_team_sync(clstm_team* team)
    bint clstm_team_complete(clstm_team* team)
    bint clstm_team_probed(clstm_team* team)
    long long clstm_team_take_beats(clstm_team* team, long long count)
    void clstm_team_await(clstm_team* team, Py_ssize_t k, Py_ssize_t n, long long b)
    void clstm_team_beat(clstm_team* team, Py_ssize_t k, long long b)
    void clstm_team_gather(clstm_team* team, double us)
    void clstm_count(long long* counter)
    int clstm_team_set_mode(int mode)
    long long clstm_team_solo_calls()
    void clstm_team_step(clstm_team* team, clstm_slice_fn fn, const void* ctx, size_t size,
                         bint shared)
    void clstm_team_leave(clstm_team* team)
    void clstm_team_serve(clstm_team* team)
    ctypedef int (*clstm_blas_limit_fn)(int) noexcept nogil
    clstm_blas_limit_fn clstm_blas_limiter
    int clstm_blas_hold()
    void clstm_blas_release(int saved)

import numpy as np

cnp.import_array()

HAVE_PACKED_GEMM = bool(CLSTM_HAVE_PACKED_GEMM)
HAVE_THREADS = bool(CLSTM_HAVE_THREADS)
HAVE_FUSED_CELL = bool(CLSTM_HAVE_FUSED_CELL)

# Steps of at most this many rows run the fused cell where a layer has its
# weights (set_fused_cell_max_rows; read by every scan when it starts).
cdef Py_ssize_t _fused_max_rows = CLSTM_FUSED_MAX_ROWS
# float32 weight gradients are summed over row blocks of at most this many
# multiply-adds per BLAS call (0: one call), so that they run on the BLAS's
# kernel for small products (set_small_gemm_volume; see _weight_gradient).
# -1 until the first backward reads it from the BLAS in use (not when this
# module loads: inference does not need it, and asking threadpoolctl costs
# ~5 ms).
cdef Py_ssize_t _small_gemm_volume = -1
# ... but never blocks of fewer rows than this (measured slower below: a
# 7-row block of stacked's 512 x 256 gradient cost 1.12x one call).
cdef Py_ssize_t SMALL_GEMM_MIN_ROWS = 12
# float32 weight gradients of more than this many such blocks run on the
# small-GEMM kernel (clstm_wgrad) where the build has it (see
# _weight_gradient; set_wgrad_kernel(False): all on SciPy's BLAS, to compare).
cdef Py_ssize_t WGRAD_BLAS_BLOCKS = 8
cdef bint _wgrad_kernel = CLSTM_HAVE_PACKED_GEMM
KIND_LSTM = CELL_LSTM
KIND_GRU = CELL_GRU
PEEPHOLE = CLSTM_PEEPHOLE
COUPLED = CLSTM_COUPLED
LN_CELL = CLSTM_LN_CELL


# --- Convolution columns -----------------------------------------------------------
# A 'same', stride-1 convolution of maps laid out one pixel a row (row
# (m * map_h + y) * map_w + x, channels contiguous) is a GEMM on columns: row r
# of cols holds, for each kernel tap (dy, dx), the channels of the pixel the
# tap reads (zero outside the map), column (dy * ker_w + dx) * channels + c:
# Keras's kernel (ker_h, ker_w, channels, N) reshaped to (ker_h*ker_w*channels, N).

cdef void image_columns(Py_ssize_t n_maps, Py_ssize_t map_h, Py_ssize_t map_w,
                        Py_ssize_t channels, Py_ssize_t ker_h, Py_ssize_t ker_w,
                        const floating* src, Py_ssize_t ld_src, floating* cols,
                        Py_ssize_t ld_cols) noexcept nogil:
    """cols[r, (dy*ker_w + dx)*C + c] = src[m, y + dy - ker_h//2, x + dx - ker_w//2, c]
    (0 outside the map), r the row of pixel (m, y, x)"""
    cdef Py_ssize_t m, y, x, dy, dx, yy, xx, row
    cdef Py_ssize_t pad_h = ker_h // 2, pad_w = ker_w // 2
    cdef floating* out
    for m in range(n_maps):
        for y in range(map_h):
            for x in range(map_w):
                row = (m * map_h + y) * map_w + x
                out = cols + row * ld_cols
                for dy in range(ker_h):
                    yy = y + dy - pad_h
                    for dx in range(ker_w):
                        xx = x + dx - pad_w
                        if 0 <= yy < map_h and 0 <= xx < map_w:
                            memcpy(out, src + ((m * map_h + yy) * map_w + xx) * ld_src,
                                   channels * sizeof(floating))
                        else:
                            memset(out, 0, channels * sizeof(floating))
                        out += channels


cdef void add_image_columns(Py_ssize_t n_maps, Py_ssize_t map_h, Py_ssize_t map_w,
                            Py_ssize_t channels, Py_ssize_t ker_h, Py_ssize_t ker_w,
                            const floating* cols, Py_ssize_t ld_cols, floating* dst,
                            Py_ssize_t ld_dst) noexcept nogil:
    """The adjoint of image_columns (col2im): dst[pixel a tap reads] += cols[r, tap]"""
    cdef Py_ssize_t m, y, x, dy, dx, yy, xx, row, c
    cdef Py_ssize_t pad_h = ker_h // 2, pad_w = ker_w // 2
    cdef const floating* col
    cdef floating* to
    for m in range(n_maps):
        for y in range(map_h):
            for x in range(map_w):
                row = (m * map_h + y) * map_w + x
                col = cols + row * ld_cols
                for dy in range(ker_h):
                    yy = y + dy - pad_h
                    for dx in range(ker_w):
                        xx = x + dx - pad_w
                        if 0 <= yy < map_h and 0 <= xx < map_w:
                            to = dst + ((m * map_h + yy) * map_w + xx) * ld_dst
                            for c in range(channels):
                                to[c] += col[c]
                        col += channels


cdef inline void _conv_columns_of_h(Layer* L, Py_ssize_t n, const floating* h_prev,
                                    Py_ssize_t ld_prev, floating* cols,
                                    Py_ssize_t ld_cols) noexcept nogil:
    """ConvLSTM: the im2col columns of n pixel rows of h_prev (whole maps)"""
    if n > 0:
        image_columns(n // (L.map_h * L.map_w), L.map_h, L.map_w, L.out_size, L.ker_h,
                      L.ker_w, h_prev, ld_prev, cols, ld_cols)


# --- Products -------------------------------------------------------------------
cdef inline void _matmul_nt(Py_ssize_t n, Py_ssize_t K, Py_ssize_t N,
                            const floating* a, Py_ssize_t lda, const floating* w,
                            const float* packed_t, floating* c, Py_ssize_t ldc,
                            bint accumulate, int order=0) noexcept nogil:
    """c[:n] (+)= a[:n] @ w.T, w (N, K) row-major

    float32 with `packed_t` (w.T in panels, see _packed_gemm.h): the small-GEMM
    kernel (`order`: a scan's step parity, see clstm_packed_gemm2); a single
    float32 row on the live w (the streaming step): _row_gemv.h; otherwise
    BLAS (GEMV for a single row).
    """
    cdef Py_ssize_t r
    if n <= 0:
        return
    if K == 0:
        if not accumulate:
            for r in range(n):
                memset(c + r * ldc, 0, N * sizeof(floating))
        return
    if floating is float:
        if packed_t != NULL:
            clstm_packed_gemm(n, K, N, a, lda, packed_t, c, ldc, accumulate, order)
            return
        if n == 1 and clstm_row_gemv(N, K, w, a, c, accumulate):
            return
    cdef floating beta = 1.0 if accumulate else 0.0
    if n == 1:
        # c[0] (+)= w @ a[0]
        _gemv(RowMajor, NoTrans, <int> N, <int> K, 1.0, w, <int> K, a, 1, beta, c, 1)
    else:
        _gemm(RowMajor, NoTrans, Trans, <int> n, <int> N, <int> K, 1.0, a, <int> lda,
              w, <int> K, beta, c, <int> ldc)


cdef inline void _matmul_nn(Py_ssize_t n, Py_ssize_t K, Py_ssize_t N,
                            const floating* a, Py_ssize_t lda, const floating* w,
                            const float* packed, floating* c, Py_ssize_t ldc,
                            bint accumulate) noexcept nogil:
    """c[:n] (+)= a[:n] @ w, w (K, N) row-major (packed: w in panels; a
    narrow w, N <= CLSTM_NARROW_MAX, as dot products: _narrow_gemm.h)"""
    if n <= 0:
        return
    if floating is float:
        if packed != NULL:
            if N <= CLSTM_NARROW_MAX and clstm_narrow_gemm(n, K, N, a, lda, w, c, ldc,
                                                          accumulate):
                return
            clstm_packed_gemm(n, K, N, a, lda, packed, c, ldc, accumulate, 0)
            return
    cdef floating beta = 1.0 if accumulate else 0.0
    if n == 1:
        # c[0] (+)= w.T @ a[0]
        _gemv(RowMajor, Trans, <int> K, <int> N, 1.0, w, <int> N, a, 1, beta, c, 1)
    else:
        _gemm(RowMajor, NoTrans, NoTrans, <int> n, <int> N, <int> K, 1.0, a, <int> lda,
              w, <int> N, beta, c, <int> ldc)


cdef inline void _grad_h_product(Layer* L, Py_ssize_t t, Py_ssize_t n,
                                 const floating* dg_h, floating* c,
                                 bint accumulate) noexcept nogil:
    """c[:n] (+)= dg_h[:n] @ weight_hh: n rows of step t. A batch of one row
    (online training) sums each output in two halves of k: the one-row tile's
    few chains wait on the FMA latency (clstm_packed_row_split). Decided by
    the (sub-)batch, never by a step's rows or a thread's share: a row of a
    larger batch gets the same bits in any split, and ragged steps of one
    row in it keep the tiles' sums."""
    cdef Py_ssize_t G = L.n_gates, P = L.out_size
    if floating is float:
        if L.batch == 1 and n == 1 and L.packed_hh != NULL and P > CLSTM_NARROW_MAX:
            clstm_packed_row_split(G, dg_h, P, L.packed_hh, c, accumulate, t & 1)
            return
    _matmul_nn(n, G, P, dg_h, G, <floating*> L.weight_hh, L.packed_hh, c, P, accumulate)


cdef inline void _masked_copy(Py_ssize_t n, Py_ssize_t width,
                              const floating* src, Py_ssize_t ld_src,
                              const floating* mask, floating* dst,
                              Py_ssize_t ld_dst) noexcept nogil:
    """dst[:n] = src[:n] * mask[:n] (mask NULL: plain copy), rows of `width`"""
    cdef Py_ssize_t r, j
    for r in range(n):
        if mask == NULL:
            memcpy(dst + r * ld_dst, src + r * ld_src, width * sizeof(floating))
        else:
            for j in range(width):
                dst[r * ld_dst + j] = src[r * ld_src + j] * mask[r * width + j]


cdef inline Py_ssize_t _h_at(const Layer* L, Py_ssize_t t, Py_ssize_t r) noexcept nogil:
    """The offset (elements) of row r of step t in h_seq (time-major, or the
    batch-first output an inference's top layer writes: NetworkPlan.run)."""
    return t * L.step_h + r * L.ld_h


cdef inline Py_ssize_t _gate_row(const Layer* L, Py_ssize_t t) noexcept nogil:
    """The first row of step t in gates (two slots in turn where L.gates_ring)."""
    return ((t & 1) if L.gates_ring else t) * L.batch


cdef inline Py_ssize_t _c_row(const Layer* L, Py_ssize_t t) noexcept nogil:
    """The first row of step t in c_seq (two slots in turn where L.c_ring)."""
    return ((t & 1) if L.c_ring else t) * L.batch


cdef inline const float* _x_rows(const Layer* L, Py_ssize_t t, Py_ssize_t row0) noexcept nogil:
    """Row row0 of step t of x (time-major, or read in place batch-first: x_row)."""
    if L.x_row == 0:
        return <const float*> L.x + (t * L.batch + row0) * L.input_size
    return <const float*> L.x + t * L.x_step + row0 * L.x_row


cdef inline Py_ssize_t _x_ld(const Layer* L) noexcept nogil:
    """The distance between two rows of a step of x."""
    return L.input_size if L.x_row == 0 else L.x_row


cdef inline void _step_products(Layer* L, Py_ssize_t t, Py_ssize_t n, Py_ssize_t row0,
                                const floating* h_prev, Py_ssize_t ld_prev) noexcept nogil:
    """The recurrent product of rows [row0, row0 + n) of step t, from h_prev.

    Fused cells: gates[t] += h_prev @ W_hh.T on top of the input projection,
    or, with packed_xh_t (float32, inputs taken in the step), gates[t] = [x_t | h_prev] @
    [W_ih | W_hh].T in one small GEMM. Separate cells: hgates[t] = h_prev @ W_hh.T.
    """
    cdef Py_ssize_t B = L.batch, G = L.n_gates, P = L.out_size, I = L.input_size
    cdef Py_ssize_t at = (_gate_row(L, t) + row0) * G
    if n <= 0:
        return
    if L.separate:
        _matmul_nt(n, P, G, h_prev, ld_prev, <floating*> L.weight_hh, L.packed_hh_t,
                   <floating*> L.hgates + at, G, False, t & 1)
        return
    if floating is float:
        if L.packed_xh_t != NULL:
            # (odd steps take the panels right to left: see _packed_gemm.h)
            clstm_packed_gemm2(n, I, _x_rows(L, t, row0), _x_ld(L), P, h_prev,
                               ld_prev, G, L.packed_xh_t, <float*> L.gates + at, G, 0, t & 1)
            return
    _matmul_nt(n, P, G, h_prev, ld_prev, <floating*> L.weight_hh, L.packed_hh_t,
               <floating*> L.gates + at, G, True, t & 1)


cdef inline void _cell_forward(Layer* L, Py_ssize_t t, Py_ssize_t n, Py_ssize_t row0,
                               const floating* h_prev, Py_ssize_t ld_prev,
                               const floating* c_prev) noexcept nogil:
    """The cell's elementwise forward on rows [row0, row0 + n) of step t."""
    cdef Py_ssize_t B = L.batch, G = L.n_gates, H = L.hidden
    cdef Py_ssize_t row = t * B + row0, g_row = _gate_row(L, t) + row0
    cdef floating* h_out
    cdef Py_ssize_t ld_out
    if n <= 0:
        return
    if L.kind == CELL_GRU:
        gru_cell_forward(n, H, <floating*> L.gates + row * G, <floating*> L.hgates + row * G,
                         <floating*> L.bias, <floating*> L.bias_hn, h_prev, ld_prev,
                         <floating*> L.h_seq + _h_at(L, t, row0), L.ld_h)
        return
    if L.weight_hr != NULL:          # LSTMP: m_t first, the projection after
        h_out, ld_out = <floating*> L.m_seq + row * H, H
    else:
        h_out, ld_out = <floating*> L.h_seq + _h_at(L, t, row0), L.ld_h
    # (an inference's two slots of gates: no backward reads the activated ones)
    lstm_cell_forward(L.variant | (CLSTM_GATES_UNREAD if L.gates_ring else 0), n, H,
                      <floating*> L.gates + g_row * G, G,
                      <floating*> L.bias, <floating*> L.peephole, c_prev, H,
                      <floating*> L.c_seq + (_c_row(L, t) + row0) * H, H, h_out, ld_out,
                      <floating*> L.ln_c_w, <floating*> L.ln_c_b,
                      NULL if L.chat == NULL else <floating*> L.chat + row * H,
                      NULL if L.c_stats == NULL else <floating*> L.c_stats + row)


cdef inline void _cell_backward(Layer* L, Py_ssize_t t, Py_ssize_t n, Py_ssize_t row0,
                                const floating* h_prev, Py_ssize_t ld_prev,
                                const floating* c_prev, const floating* grad_h_out,
                                Py_ssize_t ld_grad_h_out, floating* grad_h_rec) noexcept nogil:
    """The cell's elementwise backward on rows [row0, row0 + n) of step t."""
    cdef Py_ssize_t B = L.batch, G = L.n_gates, H = L.hidden
    cdef Py_ssize_t row = t * B + row0
    if n <= 0:
        return
    if L.kind == CELL_GRU:         # (in place: gates, hgates become their gradients)
        gru_cell_backward(n, H, <floating*> L.gates + row * G, <floating*> L.hgates + row * G,
                          h_prev, ld_prev, grad_h_out, ld_grad_h_out, grad_h_rec + row0 * H)
        return
    lstm_cell_backward(L.variant, n, H, <floating*> L.gates + row * G, G,
                       <floating*> L.peephole, c_prev, H, <floating*> L.c_seq + row * H, H,
                       grad_h_out, ld_grad_h_out,
                       NULL if grad_h_rec == NULL else grad_h_rec + row0 * L.out_size,
                       <floating*> L.grad_c + row0 * H, <floating*> L.grad_peephole, <floating*> L.ln_c_w,
                       <floating*> L.ln_c_b,
                       NULL if L.chat == NULL else <floating*> L.chat + row * H,
                       NULL if L.c_stats == NULL else <floating*> L.c_stats + row,
                       <floating*> L.grad_ln_c_w, <floating*> L.grad_ln_c_b,
                       <floating*> L.cell_work)


cdef inline void _fused_cell_step(Layer* L, Py_ssize_t t, Py_ssize_t n, Py_ssize_t row0,
                                  const float* h_prev, Py_ssize_t ld_prev,
                                  const float* c_prev, Py_ssize_t u0,
                                  Py_ssize_t u1) noexcept nogil:
    """Products and cell of rows [row0, row0 + n) of step t in one pass, unit
    groups [u0, u1) (inference: the gates are never stored; _fused_cell.h)."""
    cdef Py_ssize_t B = L.batch, G = L.n_gates, H = L.hidden, P = L.out_size
    cdef Py_ssize_t I = L.input_size, row = t * B + row0
    cdef float* c_out = <float*> L.c_seq + (_c_row(L, t) + row0) * H
    if n <= 0:
        return
    if L.fused_xh_t != NULL:
        # c, h = cell([x_t | h_prev] @ [W_ih | W_hh].T + bias, c_prev)
        clstm_fused_lstm_step(L.variant, n, I, _x_rows(L, t, row0), _x_ld(L), P, h_prev,
                              ld_prev, H, L.fused_xh_t, NULL, 0, c_prev, H, c_out, H,
                              <float*> L.h_seq + _h_at(L, t, row0), L.ld_h, u0, u1, t & 1)
    else:
        # c, h = cell(gates[t] + h_prev @ W_hh.T + bias, c_prev); gates[t] only read
        clstm_fused_lstm_step(L.variant, n, 0, h_prev, ld_prev, P, h_prev, ld_prev,
                              H, L.fused_hh_t, <float*> L.gates + (_gate_row(L, t) + row0) * G,
                              G, c_prev, H, c_out, H,
                              <float*> L.h_seq + _h_at(L, t, row0), L.ld_h, u0, u1, t & 1)


cdef struct FusedStep:
    # step t's rows [0, n_cont) continue from (h_prev, c_prev), rows
    # [n_cont, n) start from (h_start, c_start)
    Layer* L
    Py_ssize_t t, n, n_cont
    const float* h_prev
    Py_ssize_t ld_prev
    const float* c_prev
    const float* h_start
    Py_ssize_t ld_start
    const float* c_start


cdef void _fused_step_slice(const void* ctx, Py_ssize_t k, Py_ssize_t n) noexcept nogil:
    """Slice k of n of a fused step: a contiguous run of unit groups."""
    cdef const FusedStep* s = <const FusedStep*> ctx
    cdef Py_ssize_t groups = (s.L.hidden + clstm_fused_width() - 1) // clstm_fused_width()
    cdef Py_ssize_t u0 = groups * k // n, u1 = groups * (k + 1) // n
    if n > 1:       # h_prev is partly in the other members' caches
        clstm_prefetch_rows(s.h_prev, s.n_cont, s.L.out_size, s.ld_prev)
    _fused_cell_step(s.L, s.t, s.n_cont, 0, s.h_prev, s.ld_prev, s.c_prev, u0, u1)
    _fused_cell_step(s.L, s.t, s.n - s.n_cont, s.n_cont, s.h_start, s.ld_start, s.c_start,
                     u0, u1)


cdef inline void _fused_step(Layer* L, Py_ssize_t t, Py_ssize_t n, Py_ssize_t n_cont,
                             const float* h_prev, Py_ssize_t ld_prev, const float* c_prev,
                             const float* h_start, Py_ssize_t ld_start,
                             const float* c_start) noexcept nogil:
    """One fused step, split by units across L.team where the layer has one
    (the leader returns after its own slice: clstm_team_sync before reading
    the step's h or c)."""
    cdef FusedStep s
    s.L, s.t, s.n, s.n_cont = L, t, n, n_cont
    s.h_prev, s.ld_prev, s.c_prev = h_prev, ld_prev, c_prev
    s.h_start, s.ld_start, s.c_start = h_start, ld_start, c_start
    clstm_team_step(<clstm_team*> L.team, _fused_step_slice, &s, sizeof(FusedStep), False)


cdef inline bint _full_length(Layer* L, bint ready, int* whole) noexcept nogil:
    """Whether every step of L's batch has all its rows, found once `ready`
    (`whole`: -1 until then; the caller's, one per scan)."""
    cdef Py_ssize_t t
    if whole[0] < 0 and ready:
        whole[0] = 1
        for t in range(L.n_steps):
            if L.batch_sizes[t] != L.batch:
                whole[0] = 0
    return whole[0] > 0


# Once its probe is over (CLSTM_TEAM_PROBE_STEPS), a units team runs the rest
# of a full-length scan as one slice per member: each member takes its unit
# groups through all the remaining steps, waiting before each step only for
# its peers to finish the last one (clstm_team_await), where a slice per step
# also has the helper read the published slot each step. The values are
# those of the per-step slices (the same groups per member). Stream inference
# (1 x 200 x 16 -> 64, 2 threads; compare_trees.py, 8 rounds): 0.0614 ->
# 0.0596 ms a call.
cdef long long _units_scans = 0      # scans that ran as one slice a member (tests)


cdef struct UnitsScan:
    # steps [s0, T) of L's forward scan; step s is beat beat0 + s - s0
    Layer* L
    Py_ssize_t s0
    long long beat0


cdef void _units_scan_slice(const void* ctx, Py_ssize_t k, Py_ssize_t m) noexcept nogil:
    """Slice k of m (its unit groups) of every step of a full-length fused
    scan from s0 on."""
    cdef const UnitsScan* sc = <const UnitsScan*> ctx
    cdef Layer* L = sc.L
    cdef clstm_team* team = <clstm_team*> L.team
    cdef Py_ssize_t s, t, p, T = L.n_steps, B = L.batch, H = L.hidden, P = L.out_size
    cdef Py_ssize_t ld_h = L.ld_h
    cdef float* h_seq = <float*> L.h_seq
    cdef float* c_seq = <float*> L.c_seq
    cdef FusedStep st
    st.L, st.n, st.ld_prev, st.ld_start = L, B, ld_h, P
    for s in range(sc.s0, T):
        t = T - 1 - s if L.reverse else s
        p = t + 1 if L.reverse else t - 1
        st.t = t
        st.n_cont = B if 0 <= p < T else 0
        st.h_prev = h_seq + p * L.step_h
        st.c_prev = c_seq + _c_row(L, p) * H
        st.h_start = <float*> L.h0 + st.n_cont * P
        st.c_start = <float*> L.c0 + st.n_cont * H
        if s > sc.s0:           # (step s0's h_prev: a published step, finished)
            clstm_team_await(team, k, m, sc.beat0 + s - sc.s0)
        _fused_step_slice(&st, k, m)
        clstm_team_beat(team, k, sc.beat0 + s - sc.s0)


cdef inline bint _units_rest(Layer* L, Py_ssize_t s0, int* whole) noexcept nogil:
    """Steps [s0, T) of a fused scan as one slice per member where they may
    be (`whole`: -1 until the team's probe is over, then whether the batch
    is full-length); False: the caller runs step s0 on its own."""
    cdef UnitsScan sc
    if not _full_length(L, clstm_team_probed(<clstm_team*> L.team), whole):
        return False
    sc.L, sc.s0 = L, s0
    sc.beat0 = clstm_team_take_beats(<clstm_team*> L.team, L.n_steps - s0)
    clstm_team_step(<clstm_team*> L.team, _units_scan_slice, &sc, sizeof(UnitsScan), False)
    clstm_count(&_units_scans)
    return True


def units_team_scans():
    """How many units-team scans ran their remaining steps as one slice per
    member (_units_rest) in this process."""
    return _units_scans


# --- A team splitting each step by rows (training; _threads.h's clstm_team) -------
# One sub-batch of many rows keeps one set of weight-gradient sums (fixed by
# its shape, so the result does not depend on n_jobs), yet its per-step work
# splits by rows: a row's products and cell read only that row, and the
# small-GEMM kernel sums every element the same way whatever block of rows it
# is in. Only float32 layers whose per-step products all run on that kernel
# and whose cell accumulates nothing across rows (_row_team_forward_ok,
# _row_team_backward_ok): no BLAS, peepholes, layer norm, projection or conv.
cdef enum:
    ROW_TEAM_MIN_ROWS = 8       # rows of a member's slice at least


cdef struct RowStep:
    # step t of L, rows [0, n) of which [0, n_cont) continue from step p
    Layer* L
    Py_ssize_t t, p, n, n_cont


cdef inline bint _row_team_cell_ok(Layer* L) noexcept nogil:
    return (not L.conv and L.weight_hr == NULL and not L.ln_gates
            and not (L.kind == CELL_LSTM and L.variant & (CLSTM_PEEPHOLE | CLSTM_LN_CELL)))


cdef inline bint _row_team_forward_ok(Layer* L) noexcept nogil:
    return _row_team_cell_ok(L) and (L.packed_hh_t != NULL or (
        L.packed_xh_t != NULL and not L.separate)) and (
        L.packed_ih_t != NULL or L.input_size == 0 or (L.packed_xh_t != NULL and not L.separate))


cdef inline bint _row_team_backward_ok(Layer* L) noexcept nogil:
    return _row_team_cell_ok(L) and L.packed_hh != NULL


cdef Py_ssize_t _row_team_size(Py_ssize_t wanted, Py_ssize_t rows, Py_ssize_t steps,
                               Py_ssize_t work) noexcept nogil:
    """Members for a step of `rows` rows and `work` multiply-adds (over
    `steps` steps): ROW_TEAM_MIN_ROWS rows and _team_min_work each."""
    cdef Py_ssize_t least = max(1, _team_min_work)
    if wanted < 2 or not CLSTM_HAVE_THREADS:
        return 1
    return max(1, min(wanted, CLSTM_TEAM_MAX, rows // ROW_TEAM_MIN_ROWS, work // least,
                      steps * work // (least * TEAM_MIN_STEPS)))


cdef struct RowSlice:
    # rows [r0, r1) of a RowStep: [r0, c1) continue from step p (h_prev,
    # c_prev: their rows of h_seq, c_seq), [s0, r1) start from h_start, c_start
    # (their rows of h0, c0; c_start NULL without c0)
    Py_ssize_t r0, r1, c1, s0
    float* h_prev
    float* c_prev
    float* h_start
    float* c_start


cdef inline void _row_slice(const RowStep* s, Py_ssize_t k, Py_ssize_t m,
                            RowSlice* r) noexcept nogil:
    """Slice k of m of the step's rows: contiguous, ~equal."""
    cdef Layer* L = s.L
    r.r0, r.r1 = s.n * k // m, s.n * (k + 1) // m
    r.c1, r.s0 = min(r.r1, s.n_cont), max(r.r0, s.n_cont)
    r.h_prev = <float*> L.h_seq + _h_at(L, s.p, r.r0)
    r.c_prev = <float*> L.c_seq + (_c_row(L, s.p) + r.r0) * L.hidden
    r.h_start = <float*> L.h0 + r.s0 * L.out_size
    r.c_start = NULL if L.c0 == NULL else <float*> L.c0 + r.s0 * L.hidden


cdef void _forward_rows_slice(const void* ctx, Py_ssize_t k, Py_ssize_t m) noexcept nogil:
    """Slice k of m of a training forward step: its rows' products and cell
    (scan_forward's serial step restricted to rows [r0, r1))."""
    cdef const RowStep* s = <const RowStep*> ctx
    cdef Layer* L = s.L
    cdef Py_ssize_t P = L.out_size, ld_h = L.ld_h
    cdef float* mask = <float*> L.mask
    cdef float* work = <float*> L.work
    cdef RowSlice r
    _row_slice(s, k, m, &r)
    if mask != NULL:
        _masked_copy(r.c1 - r.r0, P, r.h_prev, ld_h, mask + r.r0 * P, work + r.r0 * P, P)
        _masked_copy(r.r1 - r.s0, P, r.h_start, P, mask + r.s0 * P, work + r.s0 * P, P)
        _step_products(L, s.t, r.r1 - r.r0, r.r0, work + r.r0 * P, P)
    else:
        _step_products(L, s.t, r.c1 - r.r0, r.r0, r.h_prev, ld_h)
        _step_products(L, s.t, r.r1 - r.s0, r.s0, r.h_start, P)
    _cell_forward(L, s.t, r.c1 - r.r0, r.r0, r.h_prev, ld_h, r.c_prev)
    _cell_forward(L, s.t, r.r1 - r.s0, r.s0, r.h_start, P, r.c_start)


cdef void _projection_rows_slice(const void* ctx, Py_ssize_t k, Py_ssize_t m) noexcept nogil:
    """Slice k of m of the input projection gates = x @ W_ih^T (all T*B rows)."""
    cdef Layer* L = (<const RowStep*> ctx).L
    cdef Py_ssize_t M = L.n_steps * L.batch, I = L.input_size, G = L.n_gates
    cdef Py_ssize_t r0 = M * k // m, r1 = M * (k + 1) // m
    _matmul_nt(r1 - r0, I, G, <float*> L.x + r0 * I, I, <float*> L.weight_ih,
               L.packed_ih_t, <float*> L.gates + r0 * G, G, False)


# The longest a units team's leader waits for its helpers before the input
# projection it splits with them (clstm_team_gather): about the projection's
# own time at the stream config (200 x 16 x 256).
cdef double PROJECTION_GATHER_US = 5.0


cdef inline bint _projection_by_units(Layer* L) noexcept nogil:
    """Whether a units team's input projection can split by its members'
    unit groups: every group's columns start on a panel of the packed weight."""
    return L.hidden % CLSTM_PANEL == 0 and clstm_fused_width() % CLSTM_PANEL == 0


cdef void _projection_units_slice(const void* ctx, Py_ssize_t k, Py_ssize_t m) noexcept nogil:
    """Slice k of m of the input projection gates = x @ W_ih^T (all T*B
    rows) for a team that splits each step by units: the columns of slice k's
    unit groups in every gate block (_fused_step_slice's), so that each
    member's steps read the projection it wrote, from its own cache (each
    column's sum is the same in any split of the columns)."""
    cdef Layer* L = (<const RowStep*> ctx).L
    cdef Py_ssize_t M = L.n_steps * L.batch, I = L.input_size, G = L.n_gates
    cdef Py_ssize_t H = L.hidden, V = clstm_fused_width(), groups = (H + V - 1) // V
    cdef Py_ssize_t j0 = min(H, groups * k // m * V), j1 = min(H, groups * (k + 1) // m * V)
    cdef Py_ssize_t q, col
    if j0 >= j1:
        return
    for q in range(G // H):
        col = q * H + j0
        clstm_packed_gemm(M, I, j1 - j0, <float*> L.x, I,
                          L.packed_ih_t + col // CLSTM_PANEL * I * CLSTM_PANEL,
                          <float*> L.gates + col, G, False, 0)


cdef void _grad_x_rows_slice(const void* ctx, Py_ssize_t k, Py_ssize_t m) noexcept nogil:
    """Slice k of m of grad_x (+)= grad_gates @ W_ih (all T*B rows)."""
    cdef Layer* L = (<const RowStep*> ctx).L
    cdef Py_ssize_t M = L.n_steps * L.batch, I = L.input_size, G = L.n_gates
    cdef Py_ssize_t r0 = M * k // m, r1 = M * (k + 1) // m
    _matmul_nn(r1 - r0, G, I, <float*> L.grad_gates + r0 * G, G, <float*> L.weight_ih,
               L.packed_ih, <float*> L.grad_x + r0 * I, I, L.accumulate_grad_x)


cdef void _backward_rows_slice(const void* ctx, Py_ssize_t k, Py_ssize_t m) noexcept nogil:
    """Slice k of m of a BPTT step: its rows' h_prev copies for the weight
    gradients, cell backward and grad_h product (scan_backward's serial step
    restricted to rows [r0, r1))."""
    cdef const RowStep* s = <const RowStep*> ctx
    cdef Layer* L = s.L
    cdef Py_ssize_t B = L.batch, P = L.out_size, G = L.n_gates, t = s.t
    cdef Py_ssize_t I = L.input_size, K = L.input_size + L.out_size, ld_h = L.ld_h, i, j
    cdef float* mask = <float*> L.mask
    cdef float* work = <float*> L.work
    cdef float* dh = <float*> L.grad_h
    cdef float* xh = <float*> L.xh
    cdef float* h_prev_seq = <float*> L.h_prev_seq
    cdef float* g_out = <float*> L.grad_h_seq + t * L.step_grad_h
    cdef Py_ssize_t ld_out = L.ld_grad_h
    cdef float* dg_h = <float*> (L.grad_hgates if L.separate else L.grad_gates) + t * B * G
    cdef bint gru = L.kind == CELL_GRU
    cdef RowSlice r
    _row_slice(s, k, m, &r)
    if r.r0 >= r.r1:
        return
    if xh != NULL:
        _masked_copy(r.c1 - r.r0, P, r.h_prev, ld_h, NULL if mask == NULL else mask + r.r0 * P,
                     xh + (t * B + r.r0) * K + I, K)
        _masked_copy(r.r1 - r.s0, P, r.h_start, P, NULL if mask == NULL else mask + r.s0 * P,
                     xh + (t * B + r.s0) * K + I, K)
    elif h_prev_seq != NULL:
        _masked_copy(r.c1 - r.r0, P, r.h_prev, ld_h, mask + r.r0 * P,
                     h_prev_seq + (t * B + r.r0) * P, P)
        _masked_copy(r.r1 - r.s0, P, r.h_start, P, mask + r.s0 * P,
                     h_prev_seq + (t * B + r.s0) * P, P)
    _cell_backward(L, t, r.c1 - r.r0, r.r0, r.h_prev, ld_h, r.c_prev, g_out + r.r0 * ld_out,
                   ld_out, dh)
    _cell_backward(L, t, r.r1 - r.s0, r.s0, r.h_start, P, r.c_start, g_out + r.s0 * ld_out,
                   ld_out, dh)
    if gru and mask != NULL:
        _grad_h_product(L, t, r.r1 - r.r0, dg_h + r.r0 * G, work + r.r0 * P, False)
        for i in range(r.r0, r.r1):
            for j in range(P):
                dh[i * P + j] += work[i * P + j] * mask[i * P + j]
    else:
        _grad_h_product(L, t, r.r1 - r.r0, dg_h + r.r0 * G, dh + r.r0 * P, gru)
        if mask != NULL:
            for i in range(r.r0, r.r1):
                for j in range(P):
                    dh[i * P + j] *= mask[i * P + j]


cdef inline void _rows_step(Layer* L, clstm_slice_fn fn, Py_ssize_t t, Py_ssize_t p,
                            Py_ssize_t n, Py_ssize_t n_cont) noexcept nogil:
    # shared: a helper off its core leaves its rows to the leader (a step of
    # rows is long enough, ~10 us a slice at ts-small, that a helper on time
    # has claimed its rows before the leader waits for them)
    cdef RowStep s
    s.L, s.t, s.p, s.n, s.n_cont = L, t, p, n, n_cont
    clstm_team_step(<clstm_team*> L.team, fn, &s, sizeof(RowStep), True)


# A full-length batch keeps its rows with one member from step to step (each
# step's slice k of m is rows [B*k/m, B*(k+1)/m)), and a row's step reads only
# that row's previous step: once the whole team has arrived, each member runs
# its rows through all the remaining steps as one slice, with no wait between
# steps. The values are those of the per-step slices. A training step of 32
# rows, 50 steps, H = 50 as one part, 2 threads: 0.98x the time.
cdef long long _row_scans = 0      # scans that ran as one slice a member (tests)


cdef struct RowScan:
    # steps [s0, T) of L's scan (the backward's: BPTT order), each by step_fn
    Layer* L
    clstm_slice_fn step_fn
    Py_ssize_t s0
    bint backward


cdef void _rows_scan_slice(const void* ctx, Py_ssize_t k, Py_ssize_t m) noexcept nogil:
    """Slice k of m of every step of a full-length scan from s0 on."""
    cdef const RowScan* sc = <const RowScan*> ctx
    cdef Layer* L = sc.L
    cdef Py_ssize_t s, T = L.n_steps
    cdef RowStep st
    st.L, st.n = L, L.batch
    for s in range(sc.s0, T):
        st.t = s if L.reverse == sc.backward else T - 1 - s
        st.p = st.t + 1 if L.reverse else st.t - 1
        st.n_cont = st.n if 0 <= st.p < T else 0
        sc.step_fn(&st, k, m)


cdef inline bint _rows_rest(Layer* L, clstm_slice_fn fn, Py_ssize_t s0, bint backward,
                            int* whole) noexcept nogil:
    """Steps [s0, T) as one slice per member where they may be (`whole`: -1
    until the team is complete, then whether the batch is full-length);
    False: the caller runs step s0 alone."""
    cdef RowScan sc
    if not _full_length(L, clstm_team_complete(<clstm_team*> L.team), whole):
        return False
    sc.L, sc.step_fn, sc.s0, sc.backward = L, fn, s0, backward
    clstm_team_step(<clstm_team*> L.team, _rows_scan_slice, &sc, sizeof(RowScan), True)
    clstm_count(&_row_scans)
    return True


def set_team_mode(int mode):
    """Tests: how a team judges its probe (0: by what it measured; 1: the
    leader goes on alone after it; 2: never alone), clearing any calls
    pending alone; returns the previous mode (_threads.h,
    CLSTM_TEAM_PROBE_STEPS)."""
    if mode not in (0, 1, 2):
        raise ValueError(f"mode must be 0, 1 or 2, got {mode}")
    return clstm_team_set_mode(mode)


def team_solo_calls():
    """How many team calls went on with the leader alone after their probe
    (in this process)."""
    return clstm_team_solo_calls()


def set_blas_thread_limiter(size_t address):
    """Hand over OpenBLAS's limit for the calling thread
    (``openblas_set_num_threads_local``, its address; 0: none): the plans'
    calls then hold their threads at one BLAS thread themselves
    (clstm_blas_hold in _threads.h; clstm._parallel.hand_over_blas_limit)."""
    global clstm_blas_limiter
    clstm_blas_limiter = <clstm_blas_limit_fn> address


cdef struct LimitProbe:
    int* seen
    Py_ssize_t spins


cdef void _limit_probe_task(void* ctx, Py_ssize_t k) noexcept nogil:
    cdef LimitProbe* probe = <LimitProbe*> ctx
    cdef int limit = clstm_blas_hold()      # (returns the limit it replaces)
    clstm_blas_release(limit)
    probe.seen[k] = limit
    cdef Py_ssize_t i
    cdef int again
    for i in range(probe.spins):            # (long enough for a helper to claim some)
        again = clstm_blas_hold()
        clstm_blas_release(again)


def blas_limits_seen(Py_ssize_t n_tasks, Py_ssize_t spins=20000):
    """Tests: the BLAS thread limit each of ``n_tasks`` tasks finds on its
    thread (the calling thread held as a plan's call holds it, the pool's
    helpers as they run any call's tasks), and how many tasks ran on
    helpers: ``(limits, on_helpers)``."""
    seen = np.zeros(n_tasks, dtype=np.intc)
    cdef int[::1] view = seen
    cdef LimitProbe probe
    probe.seen, probe.spins = &view[0], spins
    cdef Py_ssize_t on_helpers
    cdef int saved = clstm_blas_hold()
    try:
        with nogil:
            on_helpers = clstm_run_tasks(n_tasks, _limit_probe_task, &probe)
    finally:
        clstm_blas_release(saved)
    return seen.tolist(), on_helpers


def row_team_scans():
    """How many row-team scans ran their remaining steps as one slice per
    member (_rows_rest) in this process."""
    return _row_scans


# --- Scan forward ----------------------------------------------------------------
cdef void scan_forward(Layer* L, floating* tag) noexcept nogil:
    """Run the layer over all steps: fills gates (activated), the states and h_seq.

    Rows that start at step t (t = 0 forward; t = length-1 reverse) read
    h0/c0; the others read the previous step. With a recurrent mask, h_prev
    is multiplied by it before the recurrent product (not in the GRU's
    update, which carries the unmasked state).
    """
    cdef Py_ssize_t T = L.n_steps, B = L.batch, I = L.input_size
    cdef Py_ssize_t H = L.hidden, P = L.out_size, G = L.n_gates
    cdef Py_ssize_t s, t, p, n, n_cont, r, ld_h = L.ld_h, step_h = L.step_h
    cdef floating* h_seq = <floating*> L.h_seq
    cdef floating* c_seq = <floating*> L.c_seq
    cdef floating* h0 = <floating*> L.h0
    cdef floating* c0 = <floating*> L.c0
    cdef floating* mask = <floating*> L.mask
    cdef floating* work = <floating*> L.work
    cdef floating* h_cols = <floating*> L.h_cols
    cdef Py_ssize_t R = L.rec_size
    cdef bint fused_input = False, fused_cell = False, fused_step = False
    cdef int whole = -1        # a row team's steps as one slice (_rows_rest)
    cdef int units_whole = -1  # a units team's steps as one slice (_units_rest)
    cdef Py_ssize_t fused_max_rows = _fused_max_rows
    if floating is float:
        fused_cell = L.fused_xh_t != NULL or L.fused_hh_t != NULL
        fused_input = L.packed_xh_t != NULL and not L.separate

    # gates = x @ weight_ih.T for all T*B rows (the cell adds the bias)
    if not fused_input:
        if floating is float:
            if L.team != NULL and L.packed_ih_t != NULL:      # a team: its share
                if fused_cell and _projection_by_units(L):
                    # (each member's steps read its columns: worth the helpers' arrival)
                    clstm_team_gather(<clstm_team*> L.team, PROJECTION_GATHER_US)
                    _rows_step(L, _projection_units_slice, 0, 0, 0, 0)
                else:
                    _rows_step(L, _projection_rows_slice, 0, 0, 0, 0)
        if floating is not float or L.team == NULL or L.packed_ih_t == NULL:
            _matmul_nt(T * B, I, G, <floating*> L.x, I, <floating*> L.weight_ih,
                       L.packed_ih_t, <floating*> L.gates, G, False)

    for s in range(T):
        t = T - 1 - s if L.reverse else s
        p = t + 1 if L.reverse else t - 1          # the step h_prev comes from
        n = L.batch_sizes[t]
        # inactive rows of h_seq are zero: the backward's weight-gradient GEMM
        # reads a whole step block (their gate gradients are zero, or, for rows
        # that start at the next step of a reverse scan, they stand for h0)
        for r in range(n, B):
            memset(h_seq + _h_at(L, t, r), 0, P * sizeof(floating))
        if n == 0:
            continue
        # rows [0, n_cont) continue from step p; rows [n_cont, n) start here
        n_cont = 0
        if 0 <= p < T:
            n_cont = min(L.batch_sizes[p], n)
        # few rows: products and cell in one pass (inference; the same values)
        fused_step = fused_cell and n <= fused_max_rows
        if fused_step and L.team != NULL and mask == NULL and not L.conv:
            if floating is float:
                if _units_rest(L, s, &units_whole):
                    break
        if not fused_step:
            if floating is float:
                if L.team != NULL:      # a row team (_row_team_forward_ok): rows apart
                    if _rows_rest(L, _forward_rows_slice, s, False, &whole):
                        break
                    _rows_step(L, _forward_rows_slice, t, p, n, n_cont)
                    continue

        # the products: gates[t] += h_prev @ weight_hh.T (or kept apart)
        if L.conv:
            # gates[t] += im2col(h_prev) @ weight_hh.T: the recurrent convolution
            _conv_columns_of_h(L, n_cont, h_seq + p * step_h, ld_h, h_cols, R)
            _conv_columns_of_h(L, n - n_cont, h0 + n_cont * P, P, h_cols + n_cont * R, R)
            _matmul_nt(n, R, G, h_cols, R, <floating*> L.weight_hh, L.packed_hh_t,
                       <floating*> L.gates + _gate_row(L, t) * G, G, True)
        elif mask != NULL:
            clstm_team_sync(<clstm_team*> L.team)     # (reads all of h_prev)
            _masked_copy(n_cont, P, h_seq + p * step_h, ld_h, mask, work, P)
            _masked_copy(n - n_cont, P, h0 + n_cont * P, P, mask + n_cont * P,
                         work + n_cont * P, P)
            if floating is float:
                if fused_step:
                    _fused_step(L, t, n, n_cont, work, P, c_seq + _c_row(L, p) * H,
                                work + n_cont * P, P, c0 + n_cont * H)
                    continue
            _step_products(L, t, n, 0, work, P)
        else:
            if floating is float:
                if fused_step:
                    _fused_step(L, t, n, n_cont, h_seq + p * step_h, ld_h,
                                c_seq + _c_row(L, p) * H, h0 + n_cont * P, P, c0 + n_cont * H)
                    continue
            _step_products(L, t, n_cont, 0, h_seq + p * step_h, ld_h)
            _step_products(L, t, n - n_cont, n_cont, h0 + n_cont * P, P)
        if L.ln_gates:
            ln_gates_forward(n, G, <floating*> L.gates + t * B * G,
                             <floating*> L.hgates + t * B * G,
                             <floating*> L.ln_x + t * B * G, <floating*> L.ln_ih,
                             <floating*> L.ln_hh, <floating*> L.ln_stats + t * B * 2)

        # the cell: gates, c, h = cell(gates, c_prev, h_prev)
        _cell_forward(L, t, n_cont, 0, h_seq + p * step_h, ld_h, c_seq + _c_row(L, p) * H)
        _cell_forward(L, t, n - n_cont, n_cont, h0 + n_cont * P, P,
                      NULL if c0 == NULL else c0 + n_cont * H)

        # LSTMP: h[t] = m[t] @ weight_hr.T
        if L.weight_hr != NULL:
            # inactive rows are zero: the weight gradient GEMM reads them
            memset(<floating*> L.m_seq + (t * B + n) * H, 0, (B - n) * H * sizeof(floating))
            _matmul_nt(n, H, P, <floating*> L.m_seq + t * B * H, H,
                       <floating*> L.weight_hr, L.packed_hr_t, h_seq + t * step_h, ld_h,
                       False)
    # the team's last step done: what follows reads h_seq and c_seq
    clstm_team_sync(<clstm_team*> L.team)


# --- Scan backward (BPTT) ----------------------------------------------------------
cdef void scan_backward(Layer* L, floating* tag) noexcept nogil:
    """BPTT in the reverse of the forward order, then the parameter gradients.

    grad_h, grad_c: on entry the gradients reaching h_n, c_n; on exit those
    reaching h0, c0. Overwrites the saved gates with their gradients (zero on
    inactive rows; GRU: hgates too), so a forward's activations serve one
    backward; adds to the parameter gradients, and writes (or adds to) grad_x.
    """
    cdef Py_ssize_t T = L.n_steps, B = L.batch, I = L.input_size
    cdef Py_ssize_t H = L.hidden, P = L.out_size, G = L.n_gates, R = L.rec_size
    cdef Py_ssize_t s, t, p, n, n_cont, r, j, ld_h = L.ld_h
    cdef Py_ssize_t ld_gh = L.ld_grad_h, step_gh = L.step_grad_h
    cdef floating* h_seq = <floating*> L.h_seq
    cdef floating* c_seq = <floating*> L.c_seq
    cdef floating* h0 = <floating*> L.h0
    cdef floating* c0 = <floating*> L.c0
    cdef floating* mask = <floating*> L.mask
    cdef floating* dh = <floating*> L.grad_h
    cdef floating* h_prev_seq = <floating*> L.h_prev_seq
    cdef floating* xh = <floating*> L.xh
    cdef Py_ssize_t K = I + P
    cdef floating* grad_gates = <floating*> L.grad_gates
    cdef floating* grad_hgates = <floating*> L.grad_hgates
    cdef floating* work = <floating*> L.work
    cdef floating* h_cols = <floating*> L.h_cols
    cdef floating* dg_h
    cdef floating* dhp
    cdef floating* g_out
    cdef Py_ssize_t ld_out
    cdef bint gru = L.kind == CELL_GRU
    cdef int whole = -1        # a row team's steps as one slice (_rows_rest)
    for s in range(T):
        t = s if L.reverse else T - 1 - s
        p = t + 1 if L.reverse else t - 1
        n = L.batch_sizes[t]
        n_cont = 0
        if 0 <= p < T:
            n_cont = min(L.batch_sizes[p], n)
        if n < B:       # inactive rows: zero, so the whole-sequence GEMMs may read them
            memset(grad_gates + (t * B + n) * G, 0, (B - n) * G * sizeof(floating))
            if L.separate:
                memset(grad_hgates + (t * B + n) * G, 0, (B - n) * G * sizeof(floating))
            if h_prev_seq != NULL:
                memset(h_prev_seq + (t * B + n) * P, 0, (B - n) * P * sizeof(floating))
            if xh != NULL:
                for r in range(n, B):
                    memset(xh + (t * B + r) * K + I, 0, P * sizeof(floating))
            if L.weight_hr != NULL:
                memset(<floating*> L.grad_hp + (t * B + n) * P, 0,
                       (B - n) * P * sizeof(floating))
        if n == 0:
            continue
        if floating is float:
            if L.team != NULL:       # a row team (_row_team_backward_ok): rows apart
                if _rows_rest(L, _backward_rows_slice, s, True, &whole):
                    # the rows of the last step start from h0 (full length: only there)
                    if h_prev_seq == NULL and xh == NULL:
                        clstm_team_sync(<clstm_team*> L.team)
                        _h0_weight_gradient(L, T - 1 if L.reverse else 0, B, 0, tag)
                    break
                _rows_step(L, _backward_rows_slice, t, p, n, n_cont)
                if n_cont < n and h_prev_seq == NULL and xh == NULL:
                    clstm_team_sync(<clstm_team*> L.team)
                    _h0_weight_gradient(L, t, n, n_cont, tag)
                continue

        # h_prev of this step for grad_weight_hh = grad_gates^T @ h_prev: read in
        # place from h_seq / h0 by _parameter_gradients, except when masked (a copy)
        # or for conv (its im2col columns, used at this step: T of them would be large)
        if L.conv:
            _conv_columns_of_h(L, n_cont, h_seq + p * B * ld_h, ld_h, h_cols, R)
            _conv_columns_of_h(L, n - n_cont, h0 + n_cont * P, P, h_cols + n_cont * R, R)
        elif xh != NULL:
            _masked_copy(n_cont, P, h_seq + p * B * ld_h, ld_h, mask, xh + t * B * K + I, K)
            _masked_copy(n - n_cont, P, h0 + n_cont * P, P,
                         NULL if mask == NULL else mask + n_cont * P,
                         xh + (t * B + n_cont) * K + I, K)
        elif h_prev_seq != NULL:
            _masked_copy(n_cont, P, h_seq + p * B * ld_h, ld_h, mask, h_prev_seq + t * B * P, P)
            _masked_copy(n - n_cont, P, h0 + n_cont * P, P, mask + n_cont * P,
                         h_prev_seq + (t * B + n_cont) * P, P)

        # the gradient reaching this step's output
        if L.weight_hr != NULL:
            # LSTMP: grad_hp[t] = grad_h_seq[t] + grad_h; grad_m = grad_hp[t] @ weight_hr
            dhp = <floating*> L.grad_hp + t * B * P
            for r in range(n):
                for j in range(P):
                    dhp[r * P + j] = ((<floating*> L.grad_h_seq)[t * step_gh + r * ld_gh + j]
                                      + dh[r * P + j])
            _matmul_nn(n, P, H, dhp, P, <floating*> L.weight_hr, L.packed_hr,
                       <floating*> L.grad_m, H, False)
            g_out, ld_out = <floating*> L.grad_m, H
            _cell_backward(L, t, n_cont, 0, h_seq + p * B * ld_h, ld_h, c_seq + p * B * H,
                           g_out, ld_out, NULL)
            _cell_backward(L, t, n - n_cont, n_cont, h0 + n_cont * P, P,
                           NULL if c0 == NULL else c0 + n_cont * H,
                           g_out + n_cont * H, ld_out, NULL)
        else:
            g_out = <floating*> L.grad_h_seq + t * step_gh
            ld_out = ld_gh
            _cell_backward(L, t, n_cont, 0, h_seq + p * B * ld_h, ld_h, c_seq + p * B * H,
                           g_out, ld_out, dh)
            _cell_backward(L, t, n - n_cont, n_cont, h0 + n_cont * P, P,
                           NULL if c0 == NULL else c0 + n_cont * H,
                           g_out + n_cont * ld_out, ld_out, dh)
        if L.ln_gates:
            ln_gates_backward(n, G, grad_gates + t * B * G, grad_hgates + t * B * G,
                              <floating*> L.ln_x + t * B * G,
                              <floating*> L.hgates + t * B * G, <floating*> L.ln_ih,
                              <floating*> L.ln_hh, <floating*> L.ln_stats + t * B * 2,
                              <floating*> L.grad_bias, <floating*> L.grad_ln_ih,
                              <floating*> L.grad_ln_hh)

        # grad_h[:n] = grad_gates_h[t, :n] @ weight_hh  (masked; the GRU adds its
        # direct path grad_h * z, which the cell left in grad_h)
        dg_h = (grad_hgates if L.separate else grad_gates) + t * B * G
        if n_cont < n and h_prev_seq == NULL and xh == NULL and not L.conv:
            # rows that started from h0 (the continuing rows: in _parameter_gradients)
            _h0_weight_gradient(L, t, n, n_cont, tag)
        if L.conv:
            # grad_weight_hh += grad_gates[t, :n].T @ im2col(h_prev)
            _gemm(RowMajor, Trans, NoTrans, <int> G, <int> R, <int> n, 1.0, dg_h, <int> G,
                  h_cols, <int> R, 1.0, <floating*> L.grad_weight_hh, <int> R)
            # grad_h[:n] = col2im(grad_gates[t, :n] @ weight_hh)
            _matmul_nn(n, G, R, dg_h, G, <floating*> L.weight_hh, L.packed_hh, h_cols, R,
                       False)
            memset(dh, 0, n * P * sizeof(floating))
            add_image_columns(n // (L.map_h * L.map_w), L.map_h, L.map_w, P, L.ker_h,
                              L.ker_w, h_cols, R, dh, P)
        elif gru and mask != NULL:
            _grad_h_product(L, t, n, dg_h, work, False)
            for r in range(n):
                for j in range(P):
                    dh[r * P + j] += work[r * P + j] * mask[r * P + j]
        else:
            _grad_h_product(L, t, n, dg_h, dh, gru)
            if mask != NULL:
                for r in range(n):
                    for j in range(P):
                        dh[r * P + j] *= mask[r * P + j]

    clstm_team_sync(<clstm_team*> L.team)     # the team's last step done
    _parameter_gradients(L, tag)


cdef struct WeightGradient:
    # C (G x N) (+)= A^T @ B over `rows` rows (_weight_gradient)
    const float* A
    const float* B
    float* C
    Py_ssize_t G, N, rows, lda, ldb, ldc
    bint accumulate


cdef void _weight_gradient_slice(const void* ctx, Py_ssize_t k, Py_ssize_t m) noexcept nogil:
    """Slice k of m of a weight gradient on the small-GEMM kernel: its share
    of C's rows, in whole units (clstm_wgrad_unit; every split gives the
    same bits)."""
    cdef const WeightGradient* w = <const WeightGradient*> ctx
    cdef Py_ssize_t rows = w.G, unit = clstm_wgrad_unit(w.G, w.N)
    cdef Py_ssize_t units = (rows + unit - 1) // unit
    cdef Py_ssize_t r0 = min(rows, units * k // m * unit)
    cdef Py_ssize_t r1 = min(rows, units * (k + 1) // m * unit)
    cdef float* work
    if r0 >= r1:
        return
    work = <float*> malloc(clstm_wgrad_work_size(w.G, w.N) * sizeof(float))
    if work == NULL:        # no memory for the work (~80-330 KB): these rows on the BLAS
        _gemm(RowMajor, Trans, NoTrans, <int> (r1 - r0), <int> w.N, <int> w.rows, 1.0,
              w.A + r0, <int> w.lda, w.B, <int> w.ldb, 1.0 if w.accumulate else 0.0,
              w.C + r0 * w.ldc, <int> w.ldc)
        return
    clstm_wgrad(w.rows, w.G, w.N, w.A, w.lda, w.B, w.ldb, w.C, w.ldc, w.accumulate, r0, r1,
                work)
    free(work)


cdef void _weight_gradient(Layer* L, Py_ssize_t G, Py_ssize_t N, Py_ssize_t rows,
                           const floating* A, Py_ssize_t lda, const floating* B,
                           Py_ssize_t ldb, floating beta, floating* C,
                           Py_ssize_t ldc) noexcept nogil:
    """C (G x N) = beta * C + A^T @ B over `rows` rows of A (rows x G) and B
    (rows x N), row-major: a weight gradient, a sum over all steps' rows.

    float32 runs on the small-GEMM kernel (clstm_wgrad: one operand read
    transposed in place, the other packed in blocks of rows), split by rows
    across L's row team where it has one: the BLAS, limited to one thread in
    the backward, left the second core idle. The kernel or the BLAS, and the
    order of each element's sum, follow from the shape alone, so the result
    is the same for every thread count and call. Zen 5, training step,
    kernel / BLAS (benchmarks/bench_wgrad.py): 1 thread ts-medium 0.93,
    stacked 0.97, nlp-large 0.99; 2 threads ts-small 0.92, ts-medium 0.93,
    stacked 0.98. Products of at most WGRAD_BLAS_BLOCKS of the BLAS's
    small-product blocks stay on it: that kernel packs nothing, and the
    forecast fit's 640 x 128 x 33 step (3 blocks) took 1.05x as long on
    clstm's (ts-small's 1,600 x 200 x 51, 16 blocks: 1.02x at 1 thread,
    0.92x at 2).

    Elsewhere (float64; builds without the kernel) SciPy's BLAS: its
    OpenBLAS runs a product of at most 10^6 multiply-adds on a kernel that
    packs nothing, and larger ones on its packing GEMM, which is slower at
    these shapes (one thread, Zen 4: the forecast fit's 640 x 128 x 33
    gradient 87 us in one call, 54 us in blocks of 236 rows). Where
    set_small_gemm_volume gave that bound, float32 sums run in blocks of rows
    that fit it; the blocks depend only on the shape."""
    cdef Py_ssize_t chunk = rows, start, n
    cdef WeightGradient w
    if floating is float:
        if _wgrad_kernel and G > 0 and N > 0 and (
                _small_gemm_volume <= 0 or rows * G * N > WGRAD_BLAS_BLOCKS * _small_gemm_volume):
            w.A, w.B, w.C = A, B, C
            w.G, w.N, w.rows, w.lda, w.ldb, w.ldc = G, N, rows, lda, ldb, ldc
            w.accumulate = beta != 0
            clstm_team_step(<clstm_team*> L.team, _weight_gradient_slice, &w,
                            sizeof(WeightGradient), True)
            clstm_team_sync(<clstm_team*> L.team)
            return
        if _small_gemm_volume > 0 and G * N > 0:
            chunk = _small_gemm_volume // (G * N)
            if chunk < SMALL_GEMM_MIN_ROWS:
                chunk = rows
    if chunk <= 0 or chunk > rows:
        chunk = rows
    start = 0
    while True:
        n = min(chunk, rows - start)
        _gemm(RowMajor, Trans, NoTrans, <int> G, <int> N, <int> n, 1.0, A + start * lda,
              <int> lda, B + start * ldb, <int> ldb, beta if start == 0 else 1.0, C,
              <int> ldc)
        start += n
        if start >= rows:
            break


cdef inline void _h0_weight_gradient(Layer* L, Py_ssize_t t, Py_ssize_t n, Py_ssize_t n_cont,
                                     floating* tag) noexcept nogil:
    """Rows [n_cont, n) of step t started from h0: grad_weight_hh +=
    grad_gates_h[t, n_cont:n]^T @ h0[n_cont:n] (the continuing rows: one GEMM
    over all steps in _parameter_gradients)."""
    cdef Py_ssize_t G = L.n_gates, P = L.out_size
    cdef floating* dg_h = <floating*> (L.grad_hgates if L.separate else L.grad_gates) \
        + (t * L.batch + n_cont) * G
    _gemm(RowMajor, Trans, NoTrans, <int> G, <int> P, <int> (n - n_cont), 1.0,
          dg_h, <int> G, <floating*> L.h0 + n_cont * P, <int> P, 1.0,
          <floating*> L.grad_weight_hh, <int> P)


cdef inline void _add_column_sums(Py_ssize_t M, Py_ssize_t G, const floating* a,
                                  floating* out) noexcept nogil:
    """out[j] += a[0, j] + a[1, j] + ... + a[M-1, j] for a (M x G) row-major,
    each sum in row order (the bits of adding row after row into out), in
    blocks of 32 columns held in registers over all rows: row after row
    into out, out's loads and stores waited on each other (a bias gradient
    of 200 x 256, batch 1: ~7 -> ~1 us)."""
    cdef Py_ssize_t j0, j, r, w
    cdef floating acc[32]
    for j0 in range(0, G, 32):
        w = min(32, G - j0)
        for j in range(w):
            acc[j] = out[j0 + j]
        if w == 32:         # (a constant width: the compiler keeps acc in registers)
            for r in range(M):
                for j in range(32):
                    acc[j] += a[r * G + j0 + j]
        else:
            for r in range(M):
                for j in range(w):
                    acc[j] += a[r * G + j0 + j]
        for j in range(w):
            out[j0 + j] = acc[j]


cdef void _parameter_gradients(Layer* L, floating* tag) noexcept nogil:
    """After BPTT: the weight and bias gradients (added to) and grad_x, each
    one GEMM or one pass over all T*B rows, reading x, h_seq and h0 in place."""
    cdef Py_ssize_t T = L.n_steps, B = L.batch, M = L.n_steps * L.batch
    cdef Py_ssize_t I = L.input_size, P = L.out_size, ld_h = L.ld_h
    cdef Py_ssize_t H = L.hidden, G = L.n_gates, R = L.rec_size, r, j
    cdef floating* grad_gates = <floating*> L.grad_gates
    cdef floating* grad_hgates = <floating*> L.grad_hgates
    cdef floating* dg_h = grad_hgates if L.separate else grad_gates
    cdef floating* h_seq = <floating*> L.h_seq
    cdef floating* gw_hh = <floating*> L.grad_weight_hh
    cdef floating* gb = <floating*> L.grad_bias
    cdef floating* gb_hh = <floating*> L.grad_bias_hh
    if M == 0:
        return
    if L.xh != NULL:
        _fused_weight_gradients(L, tag)
    elif I > 0:
        # grad_weight_ih += grad_gates.T @ x  (conv: x holds the input's im2col columns)
        _weight_gradient(L, G, I, M, grad_gates, G, <floating*> L.x, I, 1.0,
                         <floating*> L.grad_weight_ih, I)
    # grad_weight_hh += grad_gates_h.T @ h_prev (conv: added step by step)
    if L.xh != NULL:
        pass
    elif L.h_prev_seq != NULL:         # masked h_prev: the copy the BPTT loop made
        _weight_gradient(L, G, R, M, dg_h, G, <floating*> L.h_prev_seq, P, 1.0, gw_hh, R)
    elif not L.conv and T > 1:
        # every row of steps 1..T-1 (reverse: 0..T-2) against the step it came
        # from, in one GEMM; rows that started from h0 there met zero rows of
        # h_seq (the forward zeroes inactive rows) and were added by the loop
        if L.reverse:
            _weight_gradient(L, G, P, (T - 1) * B, dg_h, G, h_seq + B * ld_h, ld_h, 1.0,
                             gw_hh, P)
        else:
            _weight_gradient(L, G, P, (T - 1) * B, dg_h + B * G, G, h_seq, ld_h, 1.0, gw_hh, P)
    if L.kind == CELL_GRU:
        # grad_bias_ih += grad_gates.sum(0);  grad_bias_hh += grad_hgates.sum(0)
        _add_column_sums(M, G, grad_gates, gb)
        _add_column_sums(M, G, grad_hgates, gb_hh)
    elif not L.ln_gates:     # (layer norm: added by its backward, before normalising)
        # grad_bias += grad_gates.sum(0)
        _add_column_sums(M, G, grad_gates, gb)
    if L.weight_hr != NULL:
        # grad_weight_hr += grad_hp.T @ m
        _weight_gradient(L, P, H, M, <floating*> L.grad_hp, P, <floating*> L.m_seq, H, 1.0,
                         <floating*> L.grad_weight_hr, H)
    # grad_x (+)= grad_gates @ weight_ih (NULL: the caller discards it)
    if I > 0 and L.grad_x != NULL:
        if floating is float:
            if L.team != NULL and L.packed_ih != NULL:      # a row team: its share
                _rows_step(L, _grad_x_rows_slice, 0, 0, 0, 0)
                clstm_team_sync(<clstm_team*> L.team)
                return
        _matmul_nn(M, G, I, grad_gates, G, <floating*> L.weight_ih, L.packed_ih,
                   <floating*> L.grad_x, I, L.accumulate_grad_x)


cdef void _fused_weight_gradients(Layer* L, floating* tag) noexcept nogil:
    """Thin inputs: [grad_weight_ih | grad_weight_hh] += grad_gates.T @ [x | h_prev]
    as one GEMM over the xh buffer (the BPTT loop filled its h_prev columns): a
    GEMM of its own for the few input columns would pack the gate gradients
    a second time for almost no arithmetic."""
    cdef Py_ssize_t M = L.n_steps * L.batch, I = L.input_size, P = L.out_size
    cdef Py_ssize_t G = L.n_gates, K = I + P, r, j
    cdef floating* xh = <floating*> L.xh
    cdef floating* x = <floating*> L.x
    cdef floating* grad_w = <floating*> L.grad_w
    cdef floating* gw_ih = <floating*> L.grad_weight_ih
    cdef floating* gw_hh = <floating*> L.grad_weight_hh
    for r in range(M):
        memcpy(xh + r * K, x + r * I, I * sizeof(floating))
    _weight_gradient(L, G, K, M, <floating*> L.grad_gates, G, xh, K, 0.0, grad_w, K)
    for r in range(G):
        for j in range(I):
            gw_ih[r * I + j] += grad_w[r * K + j]
        for j in range(P):
            gw_hh[r * P + j] += grad_w[r * K + I + j]


# --- Python-facing entry points (called by clstm._rnn) ------------------------------
# Each runs one direction of one layer over a (sub-)batch with the GIL released.
# Shapes are validated by the caller (the network); the checks here guard
# memory safety only.

cdef inline void _check(bint ok, str what) except *:
    if not ok:
        raise ValueError(f"internal layout error: {what}")


cdef void* _array(dict arrays, str name, int typenum, int ndim, Py_ssize_t d0,
                  Py_ssize_t d1, Py_ssize_t d2, bint required) except? NULL:
    """Data pointer of arrays[name], checked to be a C-contiguous array of
    `typenum` with `ndim` dimensions (d0, d1, d2)[:ndim] (a negative size: at
    least that many); NULL when absent and not required."""
    obj = arrays.get(name)
    if obj is None:
        _check(not required, name + " missing")
        return NULL
    return _data(obj, name, typenum, ndim, d0, d1, d2)


cdef void* _data(object obj, str name, int typenum, int ndim, Py_ssize_t d0,
                 Py_ssize_t d1, Py_ssize_t d2) except? NULL:
    """Data pointer of `obj`, checked as in _array (which see)."""
    _check(cnp.PyArray_Check(obj), name + " is not an array")
    cdef cnp.ndarray arr = <cnp.ndarray> obj
    _check(cnp.PyArray_TYPE(arr) == typenum and cnp.PyArray_IS_C_CONTIGUOUS(arr)
           and cnp.PyArray_NDIM(arr) == ndim, name + " dtype/layout")
    cdef Py_ssize_t dims[3]
    dims[0], dims[1], dims[2] = d0, d1, d2
    cdef int k
    for k in range(ndim):
        if dims[k] >= 0:
            _check(cnp.PyArray_DIM(arr, k) == dims[k], name + " shape")
        else:
            _check(cnp.PyArray_DIM(arr, k) >= -dims[k], name + " shape")
    return cnp.PyArray_DATA(arr)


cdef const float* _packed(dict arrays, str name, Py_ssize_t K, Py_ssize_t N) except? NULL:
    """A packed float32 weight from pack_weight (absent: NULL, use BLAS)."""
    if arrays.get(name) is None:
        return NULL
    _check(K > 0 and N > 0, f"{name} size")
    return <const float*> _array(arrays, name, cnp.NPY_FLOAT32, 1,
                                 clstm_packed_size(K, N), 0, 0, True)


cdef const float* _fused(dict arrays, str name, Py_ssize_t K, Py_ssize_t H,
                         int variant) except? NULL:
    """A fused-cell weight from pack_fused_cell (absent: NULL, two passes)."""
    if arrays.get(name) is None:
        return NULL
    _check(K > 0 and H > 0, f"{name} size")
    return <const float*> _array(arrays, name, cnp.NPY_FLOAT32, 1,
                                 clstm_fused_size(K, H, 3 if variant & CLSTM_COUPLED else 4,
                                                  variant & CLSTM_PEEPHOLE), 0, 0, True)


cdef Py_ssize_t _steps_held(object arr):
    """The first dimension of a 3-d array (the steps a buffer holds), else -1."""
    if cnp.PyArray_Check(arr) and cnp.PyArray_NDIM(<cnp.ndarray> arr) == 3:
        return cnp.PyArray_DIM(<cnp.ndarray> arr, 0)
    return -1


cdef void _fill_layer(Layer* L, dict a, dict cfg, bint backward) except *:
    """Describe one layer from the network's arrays and configuration."""
    x = a["x"]
    _check(cnp.PyArray_Check(x) and cnp.PyArray_NDIM(<cnp.ndarray> x) == 3, "x")
    cdef int typenum = cnp.PyArray_TYPE(<cnp.ndarray> x)
    _check(typenum == cnp.NPY_FLOAT32 or typenum == cnp.NPY_FLOAT64, "dtype")
    memset(L, 0, sizeof(Layer))
    L.kind = cfg["kind"]
    L.variant = cfg["variant"]
    L.ln_gates = cfg["ln_gates"]
    L.separate = L.kind == CELL_GRU or L.ln_gates
    L.reverse = cfg["reverse"]
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2]
    cdef Py_ssize_t H = cfg["hidden"], P = cfg["out_size"], G = cfg["n_gates"]
    cdef Py_ssize_t column = cfg["column"]
    _check(T > 0 and B > 0 and H > 0 and P > 0 and column >= 0, "sizes")
    _check(G == (3 * H if (L.kind == CELL_GRU or L.variant & CLSTM_COUPLED) else 4 * H),
           "n_gates")
    _check(L.kind == CELL_LSTM or P == H, "out_size")
    L.n_steps, L.batch, L.input_size, L.hidden, L.out_size, L.n_gates = T, B, I, H, P, G
    conv = cfg.get("conv")       # ConvLSTM: (map_h, map_w, ker_h, ker_w)
    L.conv = conv is not None
    L.rec_size = P
    if L.conv:
        L.map_h, L.map_w, L.ker_h, L.ker_w = conv
        _check(L.map_h > 0 and L.map_w > 0 and L.ker_h % 2 == 1 and L.ker_w % 2 == 1
               and B % (L.map_h * L.map_w) == 0, "conv geometry")
        _check(L.kind == CELL_LSTM and L.variant == 0 and not L.ln_gates and P == H
               and a.get("mask") is None and a.get("packed_xh_t") is None, "conv cell")
        L.rec_size = L.ker_h * L.ker_w * P
    cdef Py_ssize_t R = L.rec_size
    L.x = _array(a, "x", typenum, 3, T, B, I, True)
    cdef const int* batch_sizes = <const int*> _array(a, "batch_sizes", cnp.NPY_INT, 1,
                                                      T, 0, 0, True)
    _check(batch_sizes[0] <= B, "batch_sizes")
    cdef Py_ssize_t k_step
    if L.conv:           # whole maps are active or not
        for k_step in range(T):
            _check(batch_sizes[k_step] % (L.map_h * L.map_w) == 0, "conv batch_sizes")
    L.batch_sizes = batch_sizes
    cdef bint proj = a.get("weight_hr") is not None
    _check(proj or P == H, "projection")
    L.weight_ih = _array(a, "weight_ih", typenum, 2, G, I, 0, True)
    L.weight_hh = _array(a, "weight_hh", typenum, 2, G, R, 0, True)
    L.weight_hr = _array(a, "weight_hr", typenum, 2, P, H, 0, False)
    L.bias = _array(a, "bias", typenum, 1, G, 0, 0, True)
    L.bias_hn = _array(a, "bias_hn", typenum, 1, H, 0, 0, L.kind == CELL_GRU)
    cdef Py_ssize_t n_peep = (2 if L.variant & CLSTM_COUPLED else 3) * H
    L.peephole = _array(a, "peephole", typenum, 1, n_peep, 0, 0,
                        bool(L.variant & CLSTM_PEEPHOLE))
    L.ln_ih = _array(a, "ln_ih", typenum, 1, G, 0, 0, L.ln_gates)
    L.ln_hh = _array(a, "ln_hh", typenum, 1, G, 0, 0, L.ln_gates)
    cdef bint ln_cell = bool(L.variant & CLSTM_LN_CELL)
    L.ln_c_w = _array(a, "ln_c_w", typenum, 1, H, 0, 0, ln_cell)
    L.ln_c_b = _array(a, "ln_c_b", typenum, 1, H, 0, 0, ln_cell)
    L.h0 = _array(a, "h0", typenum, 2, B, P, 0, True)
    L.c0 = _array(a, "c0", typenum, 2, B, H, 0, L.kind == CELL_LSTM)
    L.mask = _array(a, "mask", typenum, 2, B, P, 0, False)
    L.work = _array(a, "work", typenum, 2, B, P, 0, L.mask != NULL or backward)
    # a forward may keep two steps of gates and c (_gate_row, _c_row; checked below)
    L.gates_ring = not backward and T > 2 and _steps_held(a.get("gates")) == 2
    L.c_ring = not backward and T > 2 and _steps_held(a.get("c_seq")) == 2
    L.gates = _array(a, "gates", typenum, 3, 2 if L.gates_ring else T, B, G, True)
    L.hgates = _array(a, "hgates", typenum, 3, T, B, G, L.separate)
    L.c_seq = _array(a, "c_seq", typenum, 3, 2 if L.c_ring else T, B, H,
                     L.kind == CELL_LSTM)
    L.m_seq = _array(a, "m_seq", typenum, 3, T, B, H, proj)
    L.h_seq = _array(a, "h_seq", typenum, 3, T, B, -(column + P), True)
    L.ld_h = a["h_seq"].shape[2]
    L.step_h = B * L.ld_h        # (time-major; NetworkPlan.run may point it at out)
    L.h_seq = <char*> L.h_seq + column * cnp.PyArray_ITEMSIZE(<cnp.ndarray> a["h_seq"])
    L.ln_x = _array(a, "ln_x", typenum, 3, T, B, G, L.ln_gates)
    L.ln_stats = _array(a, "ln_stats", typenum, 3, T, B, 2, L.ln_gates)
    L.chat = _array(a, "chat", typenum, 3, T, B, H, ln_cell)
    L.h_cols = _array(a, "h_cols", typenum, 2, B, R, 0, L.conv)
    L.c_stats = _array(a, "c_stats", typenum, 2, T, B, 0, ln_cell)
    if typenum == cnp.NPY_FLOAT32:
        L.packed_ih_t = _packed(a, "packed_ih_t", I, G)
        L.packed_hh_t = _packed(a, "packed_hh_t", R, G)
        L.packed_xh_t = _packed(a, "packed_xh_t", I + P, G)
        L.packed_hr_t = _packed(a, "packed_hr_t", H, P)
        L.packed_ih = _packed(a, "packed_ih", G, I)
        L.packed_hh = _packed(a, "packed_hh", G, R)
        L.packed_hr = _packed(a, "packed_hr", P, H)
        L.fused_xh_t = _fused(a, "fused_xh_t", I + P, H, L.variant)
        L.fused_hh_t = _fused(a, "fused_hh_t", P, H, L.variant)
    # two slots of gates: only where each step's one product writes all its
    # gates (no input projection computed for all steps up front)
    _check(not L.gates_ring or (L.packed_xh_t != NULL and not L.separate and not L.conv),
           "gates of two steps need packed_xh_t")
    if L.fused_xh_t != NULL or L.fused_hh_t != NULL:
        _check(not backward and L.kind == CELL_LSTM and not L.ln_gates and not L.conv
               and not (L.variant & CLSTM_LN_CELL) and not proj and P == H
               and (L.fused_xh_t == NULL or L.packed_xh_t != NULL)
               and (L.fused_hh_t == NULL or (L.packed_xh_t == NULL and L.fused_xh_t == NULL)),
               "fused cell")
    if not backward:
        return
    if a.get("grad_out") is not None:
        # the gradient reaching the top layer, read batch-first in place: (B, >= T, width)
        L.grad_h_seq = _array(a, "grad_out", typenum, 3, B, -T, -(column + P), True)
        L.step_grad_h = a["grad_out"].shape[2]
        L.ld_grad_h = a["grad_out"].shape[1] * L.step_grad_h
    else:              # time-major (T, B, width): the layer above's grad_x
        L.grad_h_seq = _array(a, "grad_h_seq", typenum, 3, T, B, -(column + P), True)
        L.ld_grad_h = a["grad_h_seq"].shape[2]
        L.step_grad_h = B * L.ld_grad_h
    L.grad_h_seq = <char*> L.grad_h_seq + column * cnp.PyArray_ITEMSIZE(<cnp.ndarray> x)
    L.grad_h = _array(a, "grad_h", typenum, 2, B, P, 0, True)
    L.grad_c = _array(a, "grad_c", typenum, 2, B, H, 0, L.kind == CELL_LSTM)
    # the gate gradients overwrite the saved gates (GRU: hgates too; the layer
    # norm's recurrent gradient needs a buffer: its backward still reads hgates)
    L.grad_gates = L.gates
    if L.kind == CELL_GRU:
        L.grad_hgates = L.hgates
    else:
        L.grad_hgates = _array(a, "grad_hgates", typenum, 3, T, B, G, L.separate)
    L.xh = _array(a, "xh", typenum, 3, T, B, I + P, False)
    L.grad_w = _array(a, "grad_w", typenum, 2, G, I + P, 0, L.xh != NULL)
    _check(L.xh == NULL or not (L.separate or L.conv), "xh")
    L.h_prev_seq = _array(a, "h_prev_seq", typenum, 3, T, B, P, False)
    _check((L.h_prev_seq != NULL) == (L.mask != NULL and not L.conv and L.xh == NULL),
           "h_prev_seq")
    L.grad_hp = _array(a, "grad_hp", typenum, 3, T, B, P, proj)
    L.grad_m = _array(a, "grad_m", typenum, 2, B, H, 0, proj)
    L.cell_work = _array(a, "cell_work", typenum, 1, 2 * H, 0, 0, True)
    L.grad_x = _array(a, "grad_x", typenum, 3, T, B, I, True)
    L.accumulate_grad_x = cfg["accumulate_grad_x"]
    L.grad_weight_ih = _array(a, "grad_weight_ih", typenum, 2, G, I, 0, True)
    L.grad_weight_hh = _array(a, "grad_weight_hh", typenum, 2, G, R, 0, True)
    L.grad_weight_hr = _array(a, "grad_weight_hr", typenum, 2, P, H, 0, proj)
    L.grad_bias = _array(a, "grad_bias", typenum, 1, G, 0, 0, True)
    L.grad_bias_hh = _array(a, "grad_bias_hh", typenum, 1, G, 0, 0, L.kind == CELL_GRU)
    L.grad_peephole = _array(a, "grad_peephole", typenum, 1, n_peep, 0, 0,
                             bool(L.variant & CLSTM_PEEPHOLE))
    L.grad_ln_ih = _array(a, "grad_ln_ih", typenum, 1, G, 0, 0, L.ln_gates)
    L.grad_ln_hh = _array(a, "grad_ln_hh", typenum, 1, G, 0, 0, L.ln_gates)
    L.grad_ln_c_w = _array(a, "grad_ln_c_w", typenum, 1, H, 0, 0, ln_cell)
    L.grad_ln_c_b = _array(a, "grad_ln_c_b", typenum, 1, H, 0, 0, ln_cell)


def forward(dict arrays, dict cfg):
    """Run one layer direction over a (sub-)batch (see scan_forward).

    `arrays` maps the Layer field names (x, weight_ih, ..., h_seq) to arrays;
    `cfg` holds kind, variant, ln_gates, reverse, hidden, out_size, n_gates and
    column (the first column of h_seq this direction writes).
    """
    cdef Layer L
    _fill_layer(&L, arrays, cfg, False)
    cdef bint single = arrays["x"].dtype.itemsize == 4
    with nogil:
        if single:
            scan_forward(&L, <float*> NULL)
        else:
            scan_forward(&L, <double*> NULL)


def backward(dict arrays, dict cfg, Py_ssize_t team_threads=1):
    """BPTT of one layer direction over a (sub-)batch (see scan_backward);
    cfg as forward() plus accumulate_grad_x. Up to ``team_threads`` threads
    split each step by rows where the layer allows (_row_team_backward_ok,
    ROW_TEAM_MIN_ROWS rows and _team_min_work a thread; the same values).
    Returns the number of threads the steps were split across."""
    cdef Layer L
    _fill_layer(&L, arrays, cfg, True)
    small_gemm_volume()              # (read from the BLAS on the first backward)
    return _scan_backward_team(&L, team_threads, arrays["x"].dtype.itemsize == 4)


cdef struct BackwardRun:
    Layer* L
    clstm_team* team


cdef void _backward_team_task(void* ctx, Py_ssize_t k) noexcept nogil:
    """Task 0 leads the BPTT, publishing its steps to the team; the others
    serve the team until the leader leaves."""
    cdef BackwardRun* run = <BackwardRun*> ctx
    if k == 0:
        scan_backward(run.L, <float*> NULL)
        clstm_team_leave(run.team)
    else:
        clstm_team_serve(run.team)


cdef Py_ssize_t _scan_backward_team(Layer* L, Py_ssize_t team_threads,
                                    bint single) except -1:
    """scan_backward, each step split by rows across up to ``team_threads``
    threads where the layer allows (_row_team_backward_ok, ROW_TEAM_MIN_ROWS
    rows and _team_min_work a thread; the same values); returns the team's
    size (1: none)."""
    cdef clstm_team team
    cdef BackwardRun run
    cdef Py_ssize_t n_team = 1
    if single and _row_team_backward_ok(L):
        n_team = _row_team_size(team_threads, L.batch, L.n_steps,
                                L.batch * L.n_gates * L.out_size)
    if n_team > 1:
        clstm_team_init(&team, n_team)
        L.team, run.L, run.team = &team, L, &team
        try:
            with nogil:
                clstm_run_tasks(n_team, _backward_team_task, &run)
        finally:
            L.team = NULL
        return n_team
    with nogil:
        if single:
            scan_backward(L, <float*> NULL)
        else:
            scan_backward(L, <double*> NULL)
    return 1


# --- The network: every sub-batch through every layer in one call ---------------
# A Part is one sub-batch (contiguous rows of the length-sorted batch); its
# Stages are its layer directions in order (layer-major). Parts share no
# writable buffer, so they run on threads of their own (_threads.h).

cdef struct Stage:
    Layer layer
    # input dropout before this stage: drop_dst[:drop_n] = drop_src * drop_mask
    const void* drop_src
    const void* drop_mask
    void* drop_dst
    Py_ssize_t drop_n
    # final states: row r's goes to row dest_rows[r] of final_h (., P), final_c (., H)
    void* final_h
    void* final_c


cdef struct Part:
    Stage* stages
    Py_ssize_t n_stages
    bint single
    const Py_ssize_t* lengths     # (b,) each row's length, decreasing
    const Py_ssize_t* dest_rows   # (b,) the row of out and of the finals it goes to
    const void* top               # (n_steps, b, width) the top layer's h, time-major
    void* out                     # (n_out, out_steps, width) batch-first
    Py_ssize_t n_rows, n_steps, width, out_steps
    bint top_in_place             # the top layer wrote out itself (NetworkPlan.run)


cdef void _run_part(Part* part, floating* tag) noexcept nogil:
    """Every stage of one sub-batch, then its rows of the batch-first output."""
    cdef Py_ssize_t s, i, r, t, b = part.n_rows, W = part.width
    cdef Stage* st
    cdef Layer* L
    cdef const floating* src
    cdef const floating* mask
    cdef floating* dst
    for s in range(part.n_stages):
        st = part.stages + s
        L = &st.layer
        if st.drop_n:
            # x = previous layer's h * input dropout mask
            src, mask, dst = <const floating*> st.drop_src, <const floating*> st.drop_mask, \
                <floating*> st.drop_dst
            for i in range(st.drop_n):
                dst[i] = src[i] * mask[i]
        scan_forward(L, tag)
        # h_n, c_n: the forward direction's at each row's last step, the reverse's at step 0
        for r in range(b):
            t = 0 if L.reverse else part.lengths[r] - 1
            memcpy(<floating*> st.final_h + part.dest_rows[r] * L.out_size,
                   <floating*> L.h_seq + _h_at(L, t, r), L.out_size * sizeof(floating))
            if st.final_c != NULL:
                memcpy(<floating*> st.final_c + part.dest_rows[r] * L.hidden,
                       <floating*> L.c_seq + (_c_row(L, t) + r) * L.hidden,
                       L.hidden * sizeof(floating))
    if part.top_in_place:
        return
    # out[dest_rows[r], t] = top[t, r]: time-major -> batch-first
    src = <const floating*> part.top
    for r in range(b):
        dst = <floating*> part.out + part.dest_rows[r] * part.out_steps * W
        for t in range(part.n_steps):
            memcpy(dst + t * W, src + (t * b + r) * W, W * sizeof(floating))


cdef bint _rows_in_order(const Part* part) noexcept:
    """The part's rows are a contiguous run of the caller's rows, in order,
    each of the part's full length: what reading x or writing out in place
    needs (NetworkPlan.run)."""
    cdef Py_ssize_t r
    for r in range(part.n_rows):
        if part.dest_rows[r] != part.dest_rows[0] + r or part.lengths[r] != part.n_steps:
            return False
    return True


cdef void _part_task(void* ctx, Py_ssize_t k) noexcept nogil:
    cdef Part* part = (<Part*> ctx) + k
    if part.single:
        _run_part(part, <float*> NULL)
    else:
        _run_part(part, <double*> NULL)


cdef struct Groups:
    void* parts               # the forward's Parts or the backward's BackwardParts
    clstm_task_fn run_part    # runs part i of them
    Py_ssize_t n_parts, n_groups


cdef void _group_task(void* ctx, Py_ssize_t k) noexcept nogil:
    """Thread k's contiguous run of parts, in order (split_rows' equal split)."""
    cdef Groups* g = <Groups*> ctx
    cdef Py_ssize_t i
    for i in range(g.n_parts * k // g.n_groups, g.n_parts * (k + 1) // g.n_groups):
        g.run_part(g.parts, i)


cdef struct TeamRun:
    Groups* groups
    clstm_team* team


cdef void _team_task(void* ctx, Py_ssize_t k) noexcept nogil:
    """Task 0 leads: runs the one part, publishing its fused steps to the
    team; the others serve the team until the leader leaves."""
    cdef TeamRun* run = <TeamRun*> ctx
    if k == 0:
        _group_task(run.groups, 0)
        clstm_team_leave(run.team)
    else:
        clstm_team_serve(run.team)


# A thread of a team must have at least this many multiply-adds of each fused
# step (rows x (inputs + units) x gate columns / threads), and TEAM_MIN_STEPS
# times as many over the call: below them the hand-over of each step
# (~0.15 us) or of the call (~25 us to start a thread and hand back) costs
# more than the split saves. Measured on 2 Zen 3 cores (benchmarks/
# bench_team.py, batch 1): I = 16, H = 32 (3,072 a thread) 0.96x; H = 48
# (6,144) 1.05-1.18x; H = 64 (10,240) 1.1-1.3x; H = 128 1.3-1.8x.
cdef Py_ssize_t _team_min_work = 6144
cdef enum:
    TEAM_MIN_STEPS = 64


cdef void* _flat(object obj, str name, int typenum, Py_ssize_t* size,
                 Py_ssize_t expected) except? NULL:
    """Data pointer of a C-contiguous array of `typenum` holding `expected`
    values (negative: any number, stored in *size)."""
    _check(cnp.PyArray_Check(obj), name + " is not an array")
    cdef cnp.ndarray arr = <cnp.ndarray> obj
    _check(cnp.PyArray_TYPE(arr) == typenum and cnp.PyArray_IS_C_CONTIGUOUS(arr),
           name + " dtype/layout")
    _check(expected < 0 or cnp.PyArray_SIZE(arr) == expected, name + " size")
    if size != NULL:
        size[0] = cnp.PyArray_SIZE(arr)
    return cnp.PyArray_DATA(arr)


cdef class NetworkPlan:
    """A whole forward, parsed once, run many times (clstm._rnn keeps one per
    shape and reuses it while the buffers and weights stay the same).

    ``parts``: one dict per sub-batch of b rows (sorted by decreasing
    length) over T steps:

    - ``stages``: per layer direction, in order (k = layer * D + d),
      ``(arrays, cfg, drop)``: forward()'s arrays and cfg, and ``drop`` None
      or ``(src, mask, dst)``: input dropout computed before the stage
      (``dst = src * mask``, dst being the stage's x).
    - ``lengths`` (b,) intp: each row's length; ``rows`` (b,) intp: the row
      of ``out`` and of the final states each row goes to.
    - ``top`` (T, b, W): the top layer's h_seq.

    The arrays are read at every run (their contents may change between
    runs, not their shapes or identity; the plan keeps them alive).
    Everything is checked here and in run() with the GIL held: nothing can
    fail once the threads start.
    """
    cdef Part* parts
    cdef Stage* stages
    cdef Py_ssize_t n_parts, n_stages, max_row
    cdef int typenum
    cdef list specs
    cdef bint lstm

    def __cinit__(self, list parts):
        cdef Py_ssize_t total = 0, k, offset = 0
        _check(len(parts) > 0, "no parts")
        for spec in parts:
            total += len(spec["stages"])
        self.specs = parts
        self.n_parts = len(parts)
        self.parts = <Part*> PyMem_Malloc(self.n_parts * sizeof(Part))
        self.stages = <Stage*> PyMem_Malloc(total * sizeof(Stage))
        if self.parts == NULL or self.stages == NULL:
            raise MemoryError()
        memset(self.parts, 0, self.n_parts * sizeof(Part))
        memset(self.stages, 0, total * sizeof(Stage))
        first = parts[0]["stages"][0][0]["x"]
        _check(cnp.PyArray_Check(first), "x")
        self.typenum = cnp.PyArray_TYPE(<cnp.ndarray> first)
        self.max_row = -1
        for k in range(self.n_parts):
            self._fill_part(self.parts + k, self.stages + offset, parts[k])
            offset += self.parts[k].n_stages
            _check(self.parts[k].n_stages == self.parts[0].n_stages, "stage counts")
        self.n_stages = self.parts[0].n_stages
        self.lstm = self.stages[0].layer.kind == CELL_LSTM

    def __dealloc__(self):
        PyMem_Free(self.parts)
        PyMem_Free(self.stages)

    cdef void _fill_part(self, Part* part, Stage* stages, dict spec) except *:
        cdef list stage_specs = spec["stages"]
        cdef Py_ssize_t s, r
        cdef Stage* st
        cdef int typenum = self.typenum
        top = spec["top"]
        _check(cnp.PyArray_Check(top) and cnp.PyArray_NDIM(<cnp.ndarray> top) == 3, "top")
        cdef Py_ssize_t T = top.shape[0], b = top.shape[1], W = top.shape[2]
        part.stages = stages
        part.n_stages = len(stage_specs)
        part.single = typenum == cnp.NPY_FLOAT32
        part.n_rows, part.n_steps, part.width = b, T, W
        part.top = _data(top, "top", typenum, 3, T, b, W)
        part.lengths = <const Py_ssize_t*> _data(spec["lengths"], "lengths", cnp.NPY_INTP, 1,
                                                 b, 0, 0)
        part.dest_rows = <const Py_ssize_t*> _data(spec["rows"], "rows", cnp.NPY_INTP, 1,
                                                   b, 0, 0)
        _check(part.n_stages > 0, "no stages")
        for s in range(part.n_stages):
            arrays, cfg, drop = stage_specs[s]
            st = stages + s
            _fill_layer(&st.layer, arrays, cfg, False)
            _check(cnp.PyArray_TYPE(<cnp.ndarray> arrays["x"]) == typenum, "mixed dtypes")
            _check(st.layer.batch == b and st.layer.n_steps == T and not st.layer.conv
                   and st.layer.kind == stages[0].layer.kind
                   and st.layer.out_size == stages[0].layer.out_size
                   and st.layer.hidden == stages[0].layer.hidden, "stage sizes")
            if drop is not None:
                src, mask, dst = drop
                st.drop_dst = _flat(dst, "dropout dst", typenum, &st.drop_n, -1)
                st.drop_src = _flat(src, "dropout src", typenum, NULL, st.drop_n)
                st.drop_mask = _flat(mask, "dropout mask", typenum, NULL, st.drop_n)
                _check(st.drop_dst == st.layer.x, "dropout must write the stage's x")
        self._check_rows(part)

    cdef void _check_rows(self, Part* part) except *:
        """Lengths and active rows within the part's steps and rows, rows
        non-negative (the upper bound is checked against out at each run)."""
        cdef Py_ssize_t r, s, t
        for s in range(part.n_stages):
            for t in range(part.n_steps):
                _check(0 <= part.stages[s].layer.batch_sizes[t] <= part.n_rows, "batch_sizes")
        for r in range(part.n_rows):
            _check(1 <= part.lengths[r] <= part.n_steps and part.dest_rows[r] >= 0,
                   "lengths/rows")
            if part.dest_rows[r] > self.max_row:
                self.max_row = part.dest_rows[r]

    cdef Py_ssize_t _team_size(self, Py_ssize_t wanted):
        """Threads to split each step of the one part: up to `wanted`, with
        _team_min_work per thread; by units where every stage runs fused
        steps (float32 inference, at most fused_cell_max_rows rows), by rows
        (ROW_TEAM_MIN_ROWS a thread) where the part has more rows and every
        stage can (_row_team_forward_ok: float32 training forwards)."""
        cdef Part* part = self.parts
        cdef Layer* L
        cdef Py_ssize_t s, n, K, work, groups, V = clstm_fused_width()
        cdef Py_ssize_t least = max(1, _team_min_work)
        if wanted < 2 or self.n_parts != 1 or not CLSTM_HAVE_THREADS or not part.single:
            return 1
        if part.n_rows > _fused_max_rows:
            # a row team: every stage's steps split by rows (_forward_rows_slice)
            n = wanted
            for s in range(part.n_stages):
                L = &part.stages[s].layer
                if not _row_team_forward_ok(L):
                    return 1
                K = L.input_size + L.out_size if L.packed_xh_t != NULL else L.out_size
                n = min(n, _row_team_size(wanted, part.n_rows, part.n_steps,
                                          part.n_rows * K * L.n_gates))
            return n
        n = min(wanted, CLSTM_TEAM_MAX)
        for s in range(part.n_stages):
            L = &part.stages[s].layer
            if L.fused_xh_t != NULL:
                K = L.input_size + L.out_size
            elif L.fused_hh_t != NULL:
                K = L.out_size
            else:
                return 1
            groups = (L.hidden + V - 1) // V
            work = part.n_rows * K * L.n_gates
            n = min(n, groups, work // least, part.n_steps * work // (least * TEAM_MIN_STEPS))
        return max(1, n)

    def team_threads(self, wanted):
        """The threads run() would split each step across for team_threads
        = wanted (1: no team)."""
        return self._team_size(wanted)

    def run(self, out, finals, n_threads=None, team_threads=1, x=None, out_in_place=False):
        """Run the forward: ``out`` (N, T_out >= T, W) batch-first output
        (``out[rows[r], t] = top[t, r]`` for t < T), ``finals`` the final
        states, one (n_stages, N, units) array per state (h; LSTM: h, c).

        ``out_in_place``: the top layer writes its h straight into ``out``
        (C-contiguous), not into the plan's time-major buffer that is then
        copied (a forward no backward reads: nothing else reads that buffer);
        only where every part's rows are a contiguous run of full length.

        ``x`` (N, T_x >= T, I), C-contiguous, batch-first: the first layer's
        input read in place, not from the plan's time-major buffer: only
        where every part's rows are a contiguous run of full length and
        every stage reading that buffer takes x in its steps' products alone
        (packed_xh_t; _x_rows), so it is never copied (inference).

        The parts go to ``n_threads`` groups (default: one per part), each a
        contiguous run of parts in order, claimed one at a time by the
        calling thread and the POSIX threads started here (_threads.h: a
        helper that is not scheduled promptly leaves its group to the calling
        thread; serially where the build has no threads), all with the GIL
        released. A single part of few rows has no rows to split: up to
        ``team_threads`` threads then split each of its steps by units
        (_team_size; the same values). Every thread of the call runs BLAS on
        one thread where a limiter was handed over (set_blas_thread_limiter).
        Returns the number of groups (or team threads) that ran on helper
        threads."""
        cdef Py_ssize_t k, s, n_out, started, n_team
        cdef Groups groups
        cdef clstm_team team
        cdef TeamRun team_run
        cdef Part* part
        cdef Stage* st
        self.max_row = -1
        for k in range(self.n_parts):        # rows and lengths may have changed
            self._check_rows(self.parts + k)
        _check(cnp.PyArray_Check(out) and cnp.PyArray_NDIM(<cnp.ndarray> out) == 3, "out")
        n_out = out.shape[0]
        _check(self.max_row < n_out, "out rows")
        _check(len(finals) == (2 if self.lstm else 1), "finals")
        cdef Layer* first = &self.stages[0].layer
        cdef char* final_h = <char*> _data(finals[0], "final h", self.typenum, 3,
                                           self.n_stages, n_out, first.out_size)
        cdef char* final_c = NULL
        if self.lstm:
            final_c = <char*> _data(finals[1], "final c", self.typenum, 3, self.n_stages,
                                    n_out, first.hidden)
        cdef Py_ssize_t item = 4 if self.typenum == cnp.NPY_FLOAT32 else 8
        cdef list inputs = [] if x is None else self._inputs_in_place(x)
        cdef list tops = self._tops_in_place(out) if out_in_place else []
        cdef Py_ssize_t x_row = 0 if x is None else x.shape[1] * first.input_size
        cdef Stage* reader
        cdef Stage* writer
        for k in range(self.n_parts):
            part = self.parts + k
            part.out_steps = out.shape[1]
            _check(part.out_steps >= part.n_steps, "out steps")
            part.out = _data(out, "out", self.typenum, 3, n_out, part.out_steps, part.width)
            for s in range(self.n_stages):
                st = part.stages + s
                st.final_h = final_h + s * n_out * first.out_size * item
                st.final_c = NULL if final_c == NULL else \
                    final_c + s * n_out * first.hidden * item
        groups.parts, groups.run_part, groups.n_parts = self.parts, _part_task, self.n_parts
        groups.n_groups = self.n_parts if n_threads is None else \
            max(1, min(<Py_ssize_t> n_threads, self.n_parts))
        n_team = self._team_size(team_threads)
        cdef int blas_saved = clstm_blas_hold()
        try:
            for stage, rows, _ in inputs:      # (set here: nothing fails from here on)
                reader = <Stage*> <Py_ssize_t> stage
                reader.layer.x = <void*> <Py_ssize_t> rows
                reader.layer.x_step, reader.layer.x_row = first.input_size, x_row
            for stage, h, _ in tops:
                writer = <Stage*> <Py_ssize_t> stage
                writer.layer.h_seq = <void*> <Py_ssize_t> h
                writer.layer.ld_h = out.shape[1] * out.shape[2]
                writer.layer.step_h = out.shape[2]
            for k in range(self.n_parts):
                self.parts[k].top_in_place = out_in_place
            if n_team == 1:
                with nogil:
                    started = clstm_run_tasks(groups.n_groups, _group_task, &groups)
                return started
            clstm_team_init(&team, n_team)
            team_run.groups, team_run.team = &groups, &team
            for s in range(self.n_stages):
                self.parts.stages[s].layer.team = &team
            with nogil:
                started = clstm_run_tasks(n_team, _team_task, &team_run)
            return started
        finally:
            clstm_blas_release(blas_saved)
            for s in range(self.n_stages):
                self.parts.stages[s].layer.team = NULL
            for stage, _, own in inputs:       # the plan's own buffer again
                reader = <Stage*> <Py_ssize_t> stage
                reader.layer.x = <void*> <Py_ssize_t> own
                reader.layer.x_step = reader.layer.x_row = 0
            for stage, _, own in tops:
                writer = <Stage*> <Py_ssize_t> stage
                writer.layer.h_seq = <void*> <Py_ssize_t> own
                writer.layer.ld_h = self.parts[0].width
                writer.layer.step_h = writer.layer.batch * writer.layer.ld_h
            for k in range(self.n_parts):
                self.parts[k].top_in_place = False

    cdef list _tops_in_place(self, out):
        """(stage, where in out its h starts, its own h_seq) for every stage of
        the top layer (those writing the part's ``top``), out being written in
        place (run's ``out_in_place``); raises where out or the plan does not
        allow it."""
        cdef Part* part
        cdef Stage* st
        cdef Py_ssize_t k, s, offset
        cdef Py_ssize_t item = 4 if self.typenum == cnp.NPY_FLOAT32 else 8
        _check(cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray> out)
               and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray> out)
               and cnp.PyArray_TYPE(<cnp.ndarray> out) == self.typenum, "out in place")
        cdef Py_ssize_t T_out = out.shape[1], W = out.shape[2]
        cdef char* data = <char*> cnp.PyArray_DATA(<cnp.ndarray> out)
        cdef list tops = []
        cdef Py_ssize_t found
        for k in range(self.n_parts):
            part = self.parts + k
            found = len(tops)
            _check(part.width == W, "out in place: width")
            _check(_rows_in_order(part), "out in place: rows")
            for s in range(part.n_stages):
                st = part.stages + s
                offset = <char*> st.layer.h_seq - <char*> part.top
                if not 0 <= offset < W * item:
                    continue           # (a layer below the top one)
                _check(st.layer.ld_h == W and st.layer.step_h == part.n_rows * W,
                       "out in place: the top layer's layout")
                tops.append((<Py_ssize_t> st,
                             <Py_ssize_t> (data + part.dest_rows[0] * T_out * W * item + offset),
                             <Py_ssize_t> st.layer.h_seq))
            _check(len(tops) > found, "out in place: no top layer")
        return tops

    cdef list _inputs_in_place(self, x):
        """(stage, x's data at its part's first row, its own buffer) for every
        stage that reads the first layer's input buffer, x read in place
        (run's ``x``); raises where x or the plan does not allow it."""
        cdef Part* part
        cdef Stage* st
        cdef Py_ssize_t k, s, I = self.stages[0].layer.input_size
        _check(cnp.PyArray_Check(x) and cnp.PyArray_NDIM(<cnp.ndarray> x) == 3
               and cnp.PyArray_TYPE(<cnp.ndarray> x) == cnp.NPY_FLOAT32 and self.parts.single
               and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray> x)
               and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray> x), "x in place")
        cdef Py_ssize_t T_x = x.shape[1]
        _check(x.shape[0] > self.max_row and x.shape[2] == I, "x in place: shape")
        cdef char* data = <char*> cnp.PyArray_DATA(<cnp.ndarray> x)
        cdef list inputs = []
        for k in range(self.n_parts):
            part = self.parts + k
            _check(part.n_steps <= T_x, "x in place: steps")
            _check(_rows_in_order(part), "x in place: rows")
            for s in range(part.n_stages):
                st = part.stages + s
                if st.layer.x != part.stages[0].layer.x:
                    continue
                _check(st.layer.packed_xh_t != NULL and not st.layer.separate
                       and not st.layer.conv and st.layer.mask == NULL and st.drop_n == 0,
                       "x in place: only the steps' products may read x")
                inputs.append((<Py_ssize_t> st,
                               <Py_ssize_t> (data + part.dest_rows[0] * T_x * I * 4),
                               <Py_ssize_t> st.layer.x))
        return inputs


def forward_network(list parts, out, finals, n_threads=None):
    """One forward through every sub-batch, layer and direction:
    ``NetworkPlan(parts).run(out, finals, n_threads)`` (which see)."""
    return NetworkPlan(parts).run(out, finals, n_threads)


# --- The network's backward: every sub-batch through every layer direction -------
# The mirror of NetworkPlan for BPTT: a BackwardPart is one sub-batch, its
# BackwardStages its layer directions from the top layer down. Each stage's
# parameter gradients go to its targets: sub-batch 0's are the caller's
# (given to each run), the others' the plan's own, zeroed at each run and
# added to sub-batch 0's after every sub-batch is done, in sub-batch order.

cdef enum:
    # a stage's gradient targets, in this order (absent ones NULL)
    N_TARGETS = 10
    TARGET_BIAS_IH = 8
    TARGET_BIAS_HH = 9

_TARGET_NAMES = ("grad_weight_ih", "grad_weight_hh", "grad_weight_hr", "grad_peephole",
                 "grad_ln_ih", "grad_ln_hh", "grad_ln_c_w", "grad_ln_c_b", "grad_bias_ih",
                 "grad_bias_hh")


cdef struct BackwardStage:
    Layer layer
    # LSTM family: the bias gradient the scan adds up ((G,), zeroed at each
    # run), then added to both bias targets (b_ih and b_hh see the same sum)
    void* bias_sum
    # the input dropout of the layer below's output, undone after the layer's
    # last direction: unmask_x[:unmask_n] *= unmask_mask
    void* unmask_x
    const void* unmask_mask
    Py_ssize_t unmask_n
    void* targets[N_TARGETS]
    Py_ssize_t sizes[N_TARGETS]
    # the top layer reads grad_out rows [grad_out_row0, + batch) in place
    bint top
    Py_ssize_t grad_out_row0, column
    # the bottom layer's directions write the network's grad_x (skipped in a
    # run without it: their layer's grad_x set NULL for that run)
    bint bottom
    void* grad_x


cdef struct BackwardPart:
    BackwardStage* stages
    Py_ssize_t n_stages
    bint single, own_targets


cdef inline void _add_into(floating* dst, const floating* src, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        dst[i] += src[i]


cdef void _backward_stage_done(BackwardStage* st, floating* tag) noexcept nogil:
    """After a stage's BPTT: its bias gradient to both targets; the input
    dropout of the layer below undone on its output's gradient."""
    cdef Py_ssize_t i, G = st.layer.n_gates
    cdef floating* x = <floating*> st.unmask_x
    cdef const floating* mask = <const floating*> st.unmask_mask
    if st.bias_sum != NULL:
        _add_into(<floating*> st.targets[TARGET_BIAS_IH], <floating*> st.bias_sum, G)
        _add_into(<floating*> st.targets[TARGET_BIAS_HH], <floating*> st.bias_sum, G)
    for i in range(st.unmask_n):
        x[i] *= mask[i]


cdef void _backward_part_begin(BackwardPart* part, BackwardStage* st) noexcept nogil:
    """Zero what a stage adds to that is not the caller's."""
    cdef Py_ssize_t j, item = 4 if part.single else 8
    if st.bias_sum != NULL:
        memset(st.bias_sum, 0, st.layer.n_gates * item)
    if part.own_targets:
        for j in range(N_TARGETS):
            if st.targets[j] != NULL:
                memset(st.targets[j], 0, st.sizes[j] * item)


cdef void _run_backward_part(BackwardPart* part) noexcept nogil:
    cdef Py_ssize_t s
    cdef BackwardStage* st
    for s in range(part.n_stages):
        st = part.stages + s
        _backward_part_begin(part, st)
        if part.single:
            scan_backward(&st.layer, <float*> NULL)
            _backward_stage_done(st, <float*> NULL)
        else:
            scan_backward(&st.layer, <double*> NULL)
            _backward_stage_done(st, <double*> NULL)


cdef void _backward_part_task(void* ctx, Py_ssize_t k) noexcept nogil:
    _run_backward_part((<BackwardPart*> ctx) + k)


cdef class BackwardPlan:
    """A whole backward, parsed once, run many times (clstm._rnn keeps one
    beside the forward's NetworkPlan and reuses it while the buffers and
    weights stay the same).

    ``parts``: one dict per sub-batch, in sub-batch order:

    - ``stages``: per layer direction from the top layer down (layer L-1's
      directions first), ``(arrays, cfg, unmask)``: backward()'s arrays and
      cfg, with sub-batch 0's gradient targets those of the first run
      (replaced by each run's), and for LSTM-family cells ``grad_bias`` the
      stage's (G,) bias sum; the top layer's with ``grad_out`` (b, T, W) of
      the first run (its layout; each run gives its own grad_out);
      ``unmask`` None or ``(grad_x, mask)``: the input dropout undone on the
      stage's grad_x after it.
    - ``row0``: the sub-batch's first row of grad_out;
    - ``targets`` (sub-batches after the first): per stage, a dict of the
      plan's own gradient arrays by _TARGET_NAMES.

    Everything is checked here and in run() with the GIL held: nothing can
    fail once the threads start.
    """
    cdef BackwardPart* parts
    cdef BackwardStage* stages
    cdef readonly Py_ssize_t n_parts, n_stages
    cdef Py_ssize_t grad_out_shape[3]
    cdef int typenum
    cdef list specs

    def __cinit__(self, list parts):
        cdef Py_ssize_t total = 0, k, s, offset = 0
        cdef BackwardPart* part
        _check(len(parts) > 0, "no parts")
        for spec in parts:
            total += len(spec["stages"])
        self.n_parts = len(parts)
        self.parts = <BackwardPart*> PyMem_Malloc(self.n_parts * sizeof(BackwardPart))
        self.stages = <BackwardStage*> PyMem_Malloc(total * sizeof(BackwardStage))
        if self.parts == NULL or self.stages == NULL:
            raise MemoryError()
        memset(self.parts, 0, self.n_parts * sizeof(BackwardPart))
        memset(self.stages, 0, total * sizeof(BackwardStage))
        self.grad_out_shape[0] = -1
        first = parts[0]["stages"][0][0]["x"]
        _check(cnp.PyArray_Check(first), "x")
        self.typenum = cnp.PyArray_TYPE(<cnp.ndarray> first)
        self.specs = []
        for k in range(self.n_parts):
            part = self.parts + k
            part.stages = self.stages + offset
            part.n_stages = len(parts[k]["stages"])
            part.single = self.typenum == cnp.NPY_FLOAT32
            part.own_targets = k > 0
            _check(part.n_stages == len(parts[0]["stages"]) and part.n_stages > 0, "stages")
            for s in range(part.n_stages):
                self._fill_stage(part.stages + s, parts[k], s, k > 0)
            for s in range(part.n_stages):     # (the last stage is the bottom layer's)
                part.stages[s].grad_x = part.stages[s].layer.grad_x
                part.stages[s].bottom = (part.stages[s].grad_x
                                         == part.stages[part.n_stages - 1].layer.grad_x)
            offset += part.n_stages
        self.n_stages = self.parts[0].n_stages

    def __dealloc__(self):
        PyMem_Free(self.parts)
        PyMem_Free(self.stages)

    cdef void _fill_stage(self, BackwardStage* st, dict spec, Py_ssize_t s,
                          bint own) except *:
        arrays, cfg, unmask = spec["stages"][s]
        cdef Layer* L = &st.layer
        cdef Py_ssize_t G, I, H, P, R, n_peep
        cdef cnp.ndarray g
        _fill_layer(L, arrays, cfg, True)
        _check(cnp.PyArray_TYPE(<cnp.ndarray> arrays["x"]) == self.typenum, "mixed dtypes")
        _check(not L.conv and L.team == NULL, "stage")
        G, I, H, P, R = L.n_gates, L.input_size, L.hidden, L.out_size, L.rec_size
        n_peep = (2 if L.variant & CLSTM_COUPLED else 3) * H
        st.sizes[0], st.sizes[1], st.sizes[2], st.sizes[3] = G * I, G * R, P * H, n_peep
        st.sizes[4], st.sizes[5], st.sizes[6], st.sizes[7] = G, G, H, H
        st.sizes[8], st.sizes[9] = G, G
        if L.kind == CELL_LSTM:
            st.bias_sum = L.grad_bias       # the spec's grad_bias: the stage's sum
        st.top = arrays.get("grad_out") is not None
        if st.top:
            g = <cnp.ndarray> arrays["grad_out"]
            if self.grad_out_shape[0] < 0:
                self.grad_out_shape[0] = spec["row0"] + g.shape[0]
                self.grad_out_shape[1], self.grad_out_shape[2] = g.shape[1], g.shape[2]
            _check(g.shape[1] == self.grad_out_shape[1] and g.shape[2] == self.grad_out_shape[2],
                   "grad_out widths")
            st.grad_out_row0, st.column = spec["row0"], cfg["column"]
            self.grad_out_shape[0] = max(self.grad_out_shape[0], st.grad_out_row0 + L.batch)
            L.grad_h_seq = NULL            # set by each run from its grad_out
        if unmask is not None:
            grad_x, mask = unmask
            st.unmask_x = _flat(grad_x, "unmask grad_x", self.typenum, &st.unmask_n, -1)
            st.unmask_mask = _flat(mask, "unmask mask", self.typenum, NULL, st.unmask_n)
            _check(st.unmask_x == L.grad_x, "the input dropout must be undone on grad_x")
        if own:
            self._set_targets(st, spec["targets"][s])
        # kept alive for the plan's life; not the first run's grad_out
        self.specs.append(({k: v for k, v in arrays.items() if k != "grad_out"}, unmask,
                           spec["targets"][s] if own else None))

    cdef void _set_targets(self, BackwardStage* st, dict targets) except *:
        """A stage's gradient targets by _TARGET_NAMES: present exactly where
        its layer has the parameter, of its size."""
        cdef Layer* L = &st.layer
        cdef bint want[N_TARGETS]
        cdef Py_ssize_t j
        cdef bint ln_cell = bool(L.variant & CLSTM_LN_CELL)
        want[0], want[1], want[2] = True, True, L.weight_hr != NULL
        want[3] = bool(L.variant & CLSTM_PEEPHOLE)
        want[4], want[5], want[6], want[7] = L.ln_gates, L.ln_gates, ln_cell, ln_cell
        want[8], want[9] = True, True
        for j in range(N_TARGETS):
            name = _TARGET_NAMES[j]
            obj = targets.get(name)
            _check((obj is not None) == want[j], name + " presence")
            st.targets[j] = NULL if obj is None else \
                _flat(obj, name, self.typenum, NULL, st.sizes[j])
        L.grad_weight_ih, L.grad_weight_hh = st.targets[0], st.targets[1]
        L.grad_weight_hr, L.grad_peephole = st.targets[2], st.targets[3]
        L.grad_ln_ih, L.grad_ln_hh = st.targets[4], st.targets[5]
        L.grad_ln_c_w, L.grad_ln_c_b = st.targets[6], st.targets[7]
        if st.bias_sum == NULL:              # GRU: the scan adds to the targets
            L.grad_bias, L.grad_bias_hh = st.targets[8], st.targets[9]

    def run(self, grad_out, list targets, n_threads=None, team_threads=1, bint grad_x=True):
        """Run the backward: ``grad_out`` (N, T, W) the gradient reaching the
        top layer's batch-first output (read in place), ``targets`` one dict
        per stage (by _TARGET_NAMES) of the arrays sub-batch 0's gradients
        are added to (the caller zeroes them); the other sub-batches' are
        added after, in order. The sub-batches go to ``n_threads`` threads
        (default: one each), each a contiguous run; a single sub-batch may
        split each step's rows across ``team_threads`` threads instead
        (backward(); the same values). ``grad_x`` False: the bottom layer's
        grad_x is not computed (its buffer is left as it was; the other
        gradients are the same). Returns the largest team a stage ran with
        (1: none), as backward() does."""
        cdef Py_ssize_t k, s, j, item = 4 if self.typenum == cnp.NPY_FLOAT32 else 8
        cdef BackwardStage* st
        cdef BackwardStage* st0
        cdef BackwardPart* part
        cdef Groups groups
        cdef Py_ssize_t started = 1
        cdef char* g = <char*> _data(grad_out, "grad_out", self.typenum, 3,
                                     self.grad_out_shape[0], self.grad_out_shape[1],
                                     self.grad_out_shape[2])
        _check(len(targets) == self.n_stages, "targets")
        for s in range(self.n_stages):
            self._set_targets(self.parts[0].stages + s, targets[s])
        for k in range(self.n_parts):
            part = self.parts + k
            for s in range(part.n_stages):
                st = part.stages + s
                st.layer.grad_x = st.grad_x if grad_x or not st.bottom else NULL
                if st.top:
                    st.layer.grad_h_seq = g + (st.grad_out_row0 * self.grad_out_shape[1]
                                               * self.grad_out_shape[2] + st.column) * item
        cdef int blas_saved = clstm_blas_hold()
        try:
            small_gemm_volume()              # (read from the BLAS on the first backward)
            part = self.parts
            if self.n_parts == 1 and team_threads > 1:
                # as backward(): each stage that can splits its steps' rows
                for s in range(part.n_stages):
                    st = part.stages + s
                    _backward_part_begin(part, st)
                    started = max(started, _scan_backward_team(&st.layer, team_threads,
                                                               part.single))
                    with nogil:
                        if part.single:
                            _backward_stage_done(st, <float*> NULL)
                        else:
                            _backward_stage_done(st, <double*> NULL)
                return started
            groups.parts, groups.run_part = self.parts, _backward_part_task
            groups.n_parts = self.n_parts
            groups.n_groups = self.n_parts if n_threads is None else \
                max(1, min(<Py_ssize_t> n_threads, self.n_parts))
            with nogil:
                clstm_run_tasks(groups.n_groups, _group_task, &groups)
                # the other sub-batches' gradients, in sub-batch order
                for k in range(1, self.n_parts):
                    for s in range(self.n_stages):
                        st0, st = self.parts[0].stages + s, self.parts[k].stages + s
                        for j in range(N_TARGETS):
                            if st.targets[j] == NULL:
                                continue
                            if self.parts[0].single:
                                _add_into(<float*> st0.targets[j], <float*> st.targets[j],
                                          st.sizes[j])
                            else:
                                _add_into(<double*> st0.targets[j], <double*> st.targets[j],
                                          st.sizes[j])
            return 1
        finally:
            clstm_blas_release(blas_saved)


def conv_columns(x, shape, kernel, out=None):
    """im2col of maps, one pixel a row: x (M, C) with M = n_maps * prod(shape),
    shape = (map_h, map_w), kernel = (ker_h, ker_w) odd -> (M, ker_h*ker_w*C)
    columns of the 'same', stride-1 convolution (see image_columns)."""
    cdef Py_ssize_t mh = shape[0], mw = shape[1], kh = kernel[0], kw = kernel[1]
    _check(isinstance(x, np.ndarray) and x.ndim == 2 and x.flags.c_contiguous
           and x.dtype in (np.float32, np.float64), "x")
    cdef Py_ssize_t M = x.shape[0], C = x.shape[1]
    _check(mh > 0 and mw > 0 and kh % 2 == 1 and kw % 2 == 1 and kh > 0 and kw > 0
           and M % (mh * mw) == 0, "conv geometry")
    if out is None:
        out = np.empty((M, kh * kw * C), dtype=x.dtype)
    _check(isinstance(out, np.ndarray) and out.dtype == x.dtype and out.flags.c_contiguous
           and out.shape == (M, kh * kw * C), "out")
    cdef void* src = cnp.PyArray_DATA(<cnp.ndarray> x)
    cdef void* dst = cnp.PyArray_DATA(<cnp.ndarray> out)
    cdef bint single = x.dtype == np.float32
    cdef Py_ssize_t n_maps = M // (mh * mw)
    with nogil:
        if single:
            image_columns(n_maps, mh, mw, C, kh, kw, <float*> src, C, <float*> dst, kh * kw * C)
        else:
            image_columns(n_maps, mh, mw, C, kh, kw, <double*> src, C, <double*> dst,
                          kh * kw * C)
    return out


def conv_columns_adjoint(cols, shape, kernel, Py_ssize_t channels):
    """col2im, the adjoint of conv_columns: cols (M, ker_h*ker_w*C) -> (M, C),
    each column added to the pixel its tap read."""
    cdef Py_ssize_t mh = shape[0], mw = shape[1], kh = kernel[0], kw = kernel[1]
    _check(isinstance(cols, np.ndarray) and cols.ndim == 2 and cols.flags.c_contiguous
           and cols.dtype in (np.float32, np.float64), "cols")
    cdef Py_ssize_t M = cols.shape[0], C = channels
    _check(mh > 0 and mw > 0 and kh % 2 == 1 and kw % 2 == 1 and kh > 0 and kw > 0
           and M % (mh * mw) == 0 and C > 0 and cols.shape[1] == kh * kw * C, "conv geometry")
    out = np.zeros((M, C), dtype=cols.dtype)
    cdef void* src = cnp.PyArray_DATA(<cnp.ndarray> cols)
    cdef void* dst = cnp.PyArray_DATA(<cnp.ndarray> out)
    cdef bint single = cols.dtype == np.float32
    cdef Py_ssize_t n_maps = M // (mh * mw)
    with nogil:
        if single:
            add_image_columns(n_maps, mh, mw, C, kh, kw, <float*> src, kh * kw * C,
                              <float*> dst, C)
        else:
            add_image_columns(n_maps, mh, mw, C, kh, kw, <double*> src, kh * kw * C,
                              <double*> dst, C)
    return out


def same_values(a, b):
    """True if the two arrays hold the same bytes (same dtype and shape;
    memcmp: how the network notices parameters edited in place)."""
    _check(cnp.PyArray_Check(a) and cnp.PyArray_Check(b), "arrays")
    cdef cnp.ndarray x = <cnp.ndarray> a, y = <cnp.ndarray> b
    if (cnp.PyArray_TYPE(x) != cnp.PyArray_TYPE(y) or not cnp.PyArray_SAMESHAPE(x, y)
            or not cnp.PyArray_IS_C_CONTIGUOUS(x) or not cnp.PyArray_IS_C_CONTIGUOUS(y)):
        return False
    return memcmp(cnp.PyArray_DATA(x), cnp.PyArray_DATA(y), cnp.PyArray_NBYTES(x)) == 0


def aligned_empty(shape, dtype):
    """An uninitialised array like np.empty(shape, dtype) that starts on a
    64-byte boundary (NumPy's allocations are aligned to 16 bytes).

    For packed weights, so that each panel row or unit-group row is whole
    cache lines: a vector load split across two lines made whole forwards
    ~25 % slower on AVX-512 (stream training forward 100 -> 125 us on Zen 5,
    in the 3 of 4 processes where the allocation fell off the boundary) and
    the fused kernel ~10 % on AVX2. And for the scan's buffers, whose rows
    the members of a units team write in neighbouring columns: a line
    shared by two members passed between their cores every step (stream
    inference at 2 threads, with the ISA level found once: 0.0705 -> 0.0614 ms)."""
    dtype = np.dtype(dtype)
    cdef Py_ssize_t n_bytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(n_bytes + 64, dtype=np.uint8)
    cdef Py_ssize_t start = (-raw.ctypes.data) % 64
    return raw[start:start + n_bytes].view(dtype).reshape(shape)


def pack_weight(const float[:, ::1] weight, bint transposed):
    """Pack a float32 weight for the small-GEMM kernel (see _packed_gemm.h).

    transposed=False packs B = weight (K x N = its shape), for
    grad_h = grad_gates @ weight_hh; transposed=True packs B = weight.T, for
    gates += h @ weight_hh.T. Returns a 1-D float32 array.
    """
    cdef Py_ssize_t K = weight.shape[1] if transposed else weight.shape[0]
    cdef Py_ssize_t N = weight.shape[0] if transposed else weight.shape[1]
    out = aligned_empty((clstm_packed_size(K, N),), np.float32)
    cdef float[::1] packed = out
    if out.shape[0]:
        with nogil:
            clstm_pack_b(K, N, &weight[0, 0], weight.shape[1], transposed, &packed[0])
    return out


def repack_weights(list ops):
    """Pack float32 weights again into their kept packed arrays (after an
    optimizer step changed the weights in place), each as pack_weight packs
    it: ``ops`` holds ``(packed, transposed, weight)``, or ``(packed,
    transposed, left, right, scratch)`` for the weight ``[left | right]``
    (side by side, gathered in ``scratch`` of its shape first)."""
    cdef const float[:, ::1] w
    cdef const float[:, ::1] left
    cdef const float[:, ::1] right
    cdef float[:, ::1] both
    cdef float[::1] packed
    cdef Py_ssize_t K, N, r, n_left, n_right
    cdef bint transposed
    for op in ops:
        packed, transposed = op[0], op[1]
        if len(op) == 5:
            left, right, both = op[2], op[3], op[4]
            n_left, n_right = left.shape[1], right.shape[1]
            _check(left.shape[0] == right.shape[0] == both.shape[0]
                   and both.shape[1] == n_left + n_right, "repack shapes")
            with nogil:
                for r in range(both.shape[0]):
                    if n_left:
                        memcpy(&both[r, 0], &left[r, 0], n_left * sizeof(float))
                    if n_right:
                        memcpy(&both[r, n_left], &right[r, 0], n_right * sizeof(float))
            w = both
        else:
            w = op[2]
        K = w.shape[1] if transposed else w.shape[0]
        N = w.shape[0] if transposed else w.shape[1]
        _check(packed.shape[0] == clstm_packed_size(K, N), "repack size")
        if packed.shape[0]:
            with nogil:
                clstm_pack_b(K, N, &w[0, 0], w.shape[1], transposed, &packed[0])


def packed_matmul(const float[:, ::1] a, const float[:, ::1] weight, bint transposed,
                  float[:, ::1] c, bint accumulate, packed=None, int order=0):
    """Test twin of the small-GEMM kernel: c (+)= a @ B, with B = weight.T
    if transposed else weight, packed by pack_weight (or ``packed``, what
    pack_weight(weight, transposed) returned: the kernel alone, as the scan
    runs it T times after one packing); ``order`` odd: the first block of
    rows takes the panels right to left (as a scan's odd steps)."""
    cdef Py_ssize_t K = weight.shape[1] if transposed else weight.shape[0]
    cdef Py_ssize_t N = weight.shape[0] if transposed else weight.shape[1]
    _check(a.shape[1] == K and c.shape[0] == a.shape[0] and c.shape[1] == N, "shapes")
    if not CLSTM_HAVE_PACKED_GEMM:
        raise RuntimeError("this build has no small-GEMM kernel (uses BLAS)")
    if packed is None:
        packed = pack_weight(weight, transposed)
    cdef const float[::1] view = packed
    _check(view.shape[0] == clstm_packed_size(K, N), "packed size")
    if a.shape[0] == 0 or K == 0 or N == 0:
        return
    with nogil:
        clstm_packed_gemm(a.shape[0], K, N, &a[0, 0], K, &view[0], &c[0, 0], N, accumulate,
                          order)


def row_gemv(const float[:, ::1] w, const float[::1] a, float[::1] c, bint accumulate):
    """Test twin of _row_gemv.h: c (+)= w @ a for one row a (the streaming
    step's product on live weights). Returns False (c untouched) where the
    kernel does not run (below AVX-512: the step uses BLAS)."""
    _check(w.shape[1] == a.shape[0] and c.shape[0] == w.shape[0], "shapes")
    if w.shape[0] == 0:
        return True
    cdef int done
    with nogil:
        done = clstm_row_gemv(w.shape[0], w.shape[1], &w[0, 0], &a[0] if a.shape[0] else NULL,
                              &c[0], accumulate)
    return bool(done)


def packed_row_split(const float[::1] a, const float[:, ::1] weight, float[::1] c,
                     bint accumulate, int order=0):
    """Test twin of clstm_packed_row_split: c (+)= a @ weight for one row a
    (K) and weight (K x N), packed as the backward's W_hh (batch 1's grad_h;
    on AVX-512 each output summed in two halves of k, descending where
    `order` is odd; elsewhere the small GEMM)."""
    cdef Py_ssize_t K = weight.shape[0], N = weight.shape[1]
    _check(a.shape[0] == K and c.shape[0] == N and K > 0 and N > 0, "shapes")
    packed = pack_weight(weight, False)
    cdef const float[::1] pk = packed
    with nogil:
        clstm_packed_row_split(K, &a[0], N, &pk[0], &c[0], accumulate, order)


def wgrad_swapped(Py_ssize_t G, Py_ssize_t N):
    """Whether the weight-gradient kernel computes a G x N gradient as its
    transpose (C^T = B^T @ A, A packed)."""
    return clstm_wgrad_swapped(G, N)


def wgrad_matmul(const float[:, ::1] a, const float[:, ::1] b, float[:, ::1] c,
                 bint accumulate, Py_ssize_t r0=0, r1=None):
    """Test twin of the weight-gradient kernel (clstm_wgrad): c (+)= a.T @ b,
    for a (M x G) and b (M x N), in rows [r0, r1) of c."""
    cdef Py_ssize_t M = a.shape[0], G = a.shape[1], N = b.shape[1]
    cdef Py_ssize_t end = G if r1 is None else r1
    _check(b.shape[0] == M and c.shape[0] == G and c.shape[1] == N
           and 0 <= r0 <= end <= G, "shapes")
    if not CLSTM_HAVE_PACKED_GEMM:
        raise RuntimeError("this build has no small-GEMM kernel (uses BLAS)")
    if end == r0 or G == 0 or N == 0:
        return
    work = np.empty(clstm_wgrad_work_size(G, N), dtype=np.float32)
    cdef float[::1] w = work
    with nogil:
        clstm_wgrad(M, G, N, &a[0, 0] if M else NULL, G, &b[0, 0] if M else NULL, N,
                    &c[0, 0], N, accumulate, r0, end, &w[0])


def fused_cell_max_rows():
    """Steps of at most this many rows (of a sub-batch) run the fused cell
    in inference forwards; larger ones the two passes (same values)."""
    return _fused_max_rows


cdef Py_ssize_t _replace_setting(Py_ssize_t* setting, Py_ssize_t value,
                                 str name) except -1:
    """Set one of the process-wide settings below (>= 0); returns the previous value."""
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    previous = setting[0]
    setting[0] = value
    return previous


def small_gemm_volume():
    """The multiply-adds per BLAS call below which float32 weight gradients
    are summed in row blocks (0: one call each; see _weight_gradient); read
    from the BLAS in use (clstm._parallel.blas_small_gemm_volume) on first need."""
    global _small_gemm_volume
    if _small_gemm_volume < 0:
        from clstm._parallel import blas_small_gemm_volume
        _small_gemm_volume = blas_small_gemm_volume()
    return _small_gemm_volume


def set_small_gemm_volume(Py_ssize_t volume):
    """Set small_gemm_volume (process-wide; for tests and benchmarks).
    Returns the previous value."""
    small_gemm_volume()
    return _replace_setting(&_small_gemm_volume, volume, "volume")


def set_wgrad_kernel(bint on):
    """Run float32 weight gradients on the small-GEMM kernel (True, the
    default where the build has it) or on SciPy's BLAS (False); process-wide,
    for tests and benchmarks. Returns the previous setting."""
    global _wgrad_kernel
    if on and not CLSTM_HAVE_PACKED_GEMM:
        raise RuntimeError("this build has no small-GEMM kernel (uses BLAS)")
    previous = _wgrad_kernel
    _wgrad_kernel = on
    return previous


def set_fused_cell_max_rows(Py_ssize_t n):
    """Set fused_cell_max_rows (0: never fused; for tests and benchmarks:
    process-wide, read when each scan starts). Returns the previous value."""
    return _replace_setting(&_fused_max_rows, n, "n")


def team_min_work():
    """Multiply-adds of a fused step each thread of a team needs (see
    NetworkPlan.run)."""
    return _team_min_work


def set_team_min_work(Py_ssize_t n):
    """Set team_min_work (0: split every fused step of a one-part forward
    across team_threads; for tests and benchmarks, process-wide). Returns the
    previous value."""
    return _replace_setting(&_team_min_work, n, "n")


def fused_cell_width():
    """Units per group of the fused cell on this CPU (16 AVX-512, 8 AVX2,
    4 baseline SSE2): the width pack_fused_cell lays the weights out for."""
    return clstm_fused_width()


def pack_fused_cell(const float[:, ::1] weight_ih, const float[:, ::1] weight_hh,
                    const float[::1] bias, peephole, Py_ssize_t hidden, bint thin):
    """Pack one LSTM direction's weights for the fused cell (_fused_cell.h):
    thin: [W_ih | W_hh]^T (the scan's fused_xh_t), else W_hh^T (fused_hh_t),
    gate-interleaved, with the bias and the peepholes (None: none). Gate
    count from the weights: 4H (i, f, g, o) or 3H (coupled: i, g, o).
    Returns a 1-D float32 array."""
    cdef Py_ssize_t G = weight_hh.shape[0], H = hidden, P = weight_hh.shape[1]
    cdef Py_ssize_t I = weight_ih.shape[1] if thin else 0
    cdef int ng = <int> (G // H) if H > 0 else 0
    _check(H > 0 and (ng == 3 or ng == 4) and G == ng * H and weight_ih.shape[0] == G
           and bias.shape[0] == G and P > 0, "fused cell shapes")
    cdef const float[::1] peep
    cdef const float* peep_ptr = NULL
    if peephole is not None:
        peep = peephole
        _check(peep.shape[0] == (ng - 1) * H, "peephole shape")
        peep_ptr = &peep[0]
    out = aligned_empty((clstm_fused_size(I + P, H, ng, peep_ptr != NULL),), np.float32)
    cdef float[::1] packed = out
    cdef const float* w_ih = &weight_ih[0, 0] if I > 0 else NULL
    with nogil:
        clstm_pack_fused(I, w_ih, P, &weight_hh[0, 0], H, ng, &bias[0], peep_ptr,
                         &packed[0])
    return out
