"""LSTM layer kernels: the scan over time, forward and backward (BPTT).

A layer is one direction of one LSTM layer. Forward: one GEMM projects the
inputs of all timesteps (for thin inputs the projection is folded into each
step's product instead); then per step one recurrent product adds
h_prev @ W_hh^T and the cell kernel activates the gates. Backward: per step
only the cell backward and grad_h_prev = grad_gates @ W_hh; the weight
gradients and grad_x come after the loop as whole-sequence GEMMs.

Each call covers one (sub-)batch single-threaded with the GIL released; the
model runs independent sub-batches in parallel threads (clstm._parallel).
"""

from libc.string cimport memcpy, memset

from clstm._blas cimport _gemm, _gemv, RowMajor, NoTrans, Trans
from clstm._cell cimport lstm_cell_forward, lstm_cell_backward

cdef extern from "_packed_gemm.h" nogil:
    int CLSTM_HAVE_PACKED_GEMM
    Py_ssize_t clstm_packed_size(Py_ssize_t K, Py_ssize_t N)
    void clstm_pack_b(Py_ssize_t K, Py_ssize_t N, const float* b, Py_ssize_t ldb,
                      int transposed, float* packed)
    void clstm_packed_gemm(Py_ssize_t n, Py_ssize_t K, Py_ssize_t N, const float* a,
                           Py_ssize_t lda, const float* packed, float* c,
                           Py_ssize_t ldc, int accumulate)
    void clstm_packed_gemm2(Py_ssize_t n, Py_ssize_t K1, const float* a1, Py_ssize_t lda1,
                            Py_ssize_t K2, const float* a2, Py_ssize_t lda2, Py_ssize_t N,
                            const float* packed, float* c, Py_ssize_t ldc, int accumulate)

import numpy as np


# --- Helpers ------------------------------------------------------------------
cdef inline void _recurrent_matmul(Py_ssize_t n, Py_ssize_t hidden_size,
                                   const floating* h_prev, Py_ssize_t ld,
                                   const floating* weight_hh, const float* packed,
                                   floating* gates) noexcept nogil:
    """gates[:n] += h_prev[:n] @ weight_hh.T

    float32 with `packed` (weight_hh.T in panels, see _packed_gemm.h): the
    small-GEMM kernel; otherwise BLAS (GEMV for a single row).
    """
    cdef int H = <int> hidden_size
    if n <= 0:
        return
    if floating is float:
        if packed != NULL:
            clstm_packed_gemm(n, H, 4 * H, h_prev, ld, packed, gates, 4 * H, 1)
            return
    if n == 1:
        # gates[0] += weight_hh @ h_prev[0]
        _gemv(RowMajor, NoTrans, 4 * H, H, 1.0, weight_hh, H, h_prev, 1,
              1.0, gates, 1)
    else:
        _gemm(RowMajor, NoTrans, Trans, <int> n, 4 * H, H, 1.0, h_prev, <int> ld,
              weight_hh, H, 1.0, gates, 4 * H)


cdef inline void _step_matmul(Py_ssize_t n, Py_ssize_t hidden_size,
                              Py_ssize_t input_size, const floating* x_rows,
                              const floating* h_prev, Py_ssize_t ld,
                              const floating* weight_hh, const float* packed_hh_t,
                              const float* packed_xh_t, floating* gates) noexcept nogil:
    """One step's gate pre-activations for n rows.

    With packed_xh_t (float32, thin inputs): gates[:n] = [x_t | h_prev] @
    [weight_ih | weight_hh].T in one small GEMM (the input projection is
    folded into the step); otherwise gates[:n] += h_prev @ weight_hh.T on top
    of the precomputed input projection.
    """
    if n <= 0:
        return
    if floating is float:
        if packed_xh_t != NULL:
            clstm_packed_gemm2(n, input_size, x_rows, input_size, hidden_size, h_prev, ld,
                               4 * hidden_size, packed_xh_t, gates, 4 * hidden_size, 0)
            return
    _recurrent_matmul(n, hidden_size, h_prev, ld, weight_hh, packed_hh_t, gates)


cdef inline void _masked_copy(Py_ssize_t n, Py_ssize_t hidden_size,
                              const floating* src, Py_ssize_t ld_src,
                              const floating* mask, floating* dst,
                              Py_ssize_t ld_dst) noexcept nogil:
    """dst[:n] = src[:n] * mask[:n] (mask NULL: plain copy), rows of hidden_size"""
    cdef Py_ssize_t r, j
    for r in range(n):
        if mask == NULL:
            memcpy(dst + r * ld_dst, src + r * ld_src, hidden_size * sizeof(floating))
        else:
            for j in range(hidden_size):
                dst[r * ld_dst + j] = src[r * ld_src + j] * mask[r * hidden_size + j]


# --- Layer forward ------------------------------------------------------------
cdef void lstm_input_projection(
        Py_ssize_t n_rows, Py_ssize_t input_size, Py_ssize_t hidden_size,
        const floating* x, const floating* weight_ih, const float* packed_ih_t,
        floating* gates) noexcept nogil:
    """gates = x @ weight_ih.T, for all T*B rows in one GEMM (the bias is
    added by the cell kernel, saving a pass over the gate buffer)

    float32 with packed_ih_t: the small-GEMM kernel, which beats BLAS on this
    shape once input_size is a few dozen; otherwise BLAS.
    """
    cdef Py_ssize_t G = 4 * hidden_size
    if n_rows == 0:
        return
    if input_size == 0:
        memset(gates, 0, n_rows * G * sizeof(floating))
        return
    if floating is float:
        if packed_ih_t != NULL:
            clstm_packed_gemm(n_rows, input_size, G, x, input_size, packed_ih_t, gates,
                              G, 0)
            return
    # gates = x @ weight_ih.T
    _gemm(RowMajor, NoTrans, Trans, <int> n_rows, <int> G, <int> input_size,
          1.0, x, <int> input_size, weight_ih, <int> input_size, 0.0, gates,
          <int> G)


cdef void lstm_recurrence_forward(
        Py_ssize_t n_steps, Py_ssize_t batch_size, Py_ssize_t hidden_size,
        const floating* weight_hh, const float* packed_hh_t, const floating* bias,
        const floating* h0, const floating* c0,
        const int* batch_sizes, bint reverse, const floating* recurrent_mask,
        floating* gates, floating* c_seq, floating* h_seq, Py_ssize_t ld_h,
        floating* work, const floating* x, Py_ssize_t input_size,
        const float* packed_xh_t) noexcept nogil:
    """Scan the cell over time.

    On entry gates holds the input projections (bias not yet added); on exit
    the activated gates.
    Rows that start at step t (t = 0 forward; t = length-1 reverse) read
    h0/c0; the others read the previous step. With recurrent_mask (B, H),
    h_prev is multiplied by it before the recurrent GEMM (work: (B, H)).
    With packed_xh_t, gates holds nothing on entry: each step computes its
    input and recurrent products together from x (T, B, input_size).
    """
    cdef Py_ssize_t H = hidden_size, G = 4 * hidden_size, B = batch_size
    cdef Py_ssize_t s, t, p, n, n_cont
    cdef floating* g_t
    cdef const floating* x_t
    cdef const floating* mask = recurrent_mask
    for s in range(n_steps):
        t = n_steps - 1 - s if reverse else s
        p = t + 1 if reverse else t - 1          # the step h_prev comes from
        n = batch_sizes[t]
        if n == 0:
            continue
        # rows [0, n_cont) continue from step p; rows [n_cont, n) start here
        n_cont = 0
        if 0 <= p < n_steps:
            n_cont = min(batch_sizes[p], n)
        g_t = gates + t * B * G

        # gates[t] += h_prev @ weight_hh.T  (or, fused: [x_t | h_prev] @ W.T)
        x_t = NULL if x == NULL else x + t * B * input_size
        if mask != NULL:
            _masked_copy(n_cont, H, h_seq + p * B * ld_h, ld_h, mask, work, H)
            _masked_copy(n - n_cont, H, h0 + n_cont * H, H,
                         mask + n_cont * H, work + n_cont * H, H)
            _step_matmul(n, H, input_size, x_t, work, H, weight_hh, packed_hh_t,
                         packed_xh_t, g_t)
        else:
            if n_cont > 0:
                _step_matmul(n_cont, H, input_size, x_t, h_seq + p * B * ld_h,
                             ld_h, weight_hh, packed_hh_t, packed_xh_t, g_t)
            _step_matmul(n - n_cont, H, input_size,
                         NULL if x_t == NULL else x_t + n_cont * input_size,
                         h0 + n_cont * H, H, weight_hh, packed_hh_t,
                         packed_xh_t, g_t + n_cont * G)

        # gates, c, h = cell(gates, c_prev)
        if n_cont > 0:
            lstm_cell_forward(n_cont, H, g_t, G, bias, c_seq + p * B * H, H,
                              c_seq + t * B * H, H, h_seq + t * B * ld_h, ld_h)
        if n > n_cont:
            lstm_cell_forward(n - n_cont, H, g_t + n_cont * G, G, bias,
                              c0 + n_cont * H, H,
                              c_seq + (t * B + n_cont) * H, H,
                              h_seq + (t * B + n_cont) * ld_h, ld_h)


# --- Layer backward -----------------------------------------------------------
cdef void lstm_recurrence_backward(
        Py_ssize_t n_steps, Py_ssize_t batch_size, Py_ssize_t hidden_size,
        const floating* weight_hh, const float* packed_hh, const floating* h0,
        const floating* c0,
        const int* batch_sizes, bint reverse, const floating* recurrent_mask,
        const floating* gates, const floating* c_seq,
        const floating* h_seq, Py_ssize_t ld_h,
        const floating* grad_h_seq, Py_ssize_t ld_grad_h,
        floating* grad_h, floating* grad_c, floating* grad_gates,
        floating* h_prev_seq, Py_ssize_t ld_hp) noexcept nogil:
    """BPTT, in the reverse of the forward order.

    grad_h, grad_c (B, H): on entry the gradients reaching h_n, c_n; on exit
    those reaching h0, c0. grad_gates (T, B, 4H) receives the pre-activation
    gate gradients (zero on inactive rows); h_prev_seq (T, B, ld_hp) the
    (masked) h_prev of every step in its first H columns, for grad_weight_hh
    after the loop.
    """
    cdef Py_ssize_t H = hidden_size, G = 4 * hidden_size, B = batch_size
    cdef Py_ssize_t s, t, p, n, n_cont, r, j
    cdef const floating* g_t
    cdef floating* dg_t
    cdef floating* dh = grad_h
    cdef floating* dc = grad_c
    cdef const floating* mask = recurrent_mask
    for s in range(n_steps):
        t = s if reverse else n_steps - 1 - s
        p = t + 1 if reverse else t - 1
        n = batch_sizes[t]
        n_cont = 0
        if 0 <= p < n_steps:
            n_cont = min(batch_sizes[p], n)
        g_t = gates + t * B * G
        dg_t = grad_gates + t * B * G
        if n < B:       # inactive rows: zero, so the whole-sequence GEMMs may read them
            memset(dg_t + n * G, 0, (B - n) * G * sizeof(floating))
            for r in range(n, B):
                memset(h_prev_seq + (t * B + r) * ld_hp, 0, H * sizeof(floating))
        if n == 0:
            continue

        # h_prev of this step, kept for grad_weight_hh = grad_gates^T @ h_prev
        _masked_copy(n_cont, H, h_seq + p * B * ld_h, ld_h, mask,
                     h_prev_seq + t * B * ld_hp, ld_hp)
        _masked_copy(n - n_cont, H, h0 + n_cont * H, H,
                     NULL if mask == NULL else mask + n_cont * H,
                     h_prev_seq + (t * B + n_cont) * ld_hp, ld_hp)

        # grad_gates[t], grad_c = cell_backward(grad_h_seq[t] + grad_h, grad_c, ...)
        if n_cont > 0:
            lstm_cell_backward(n_cont, H, g_t, G, c_seq + p * B * H, H,
                               c_seq + t * B * H, H,
                               grad_h_seq + t * B * ld_grad_h, ld_grad_h,
                               dh, dc, dg_t, G)
        if n > n_cont:
            lstm_cell_backward(n - n_cont, H, g_t + n_cont * G, G,
                               c0 + n_cont * H, H,
                               c_seq + (t * B + n_cont) * H, H,
                               grad_h_seq + (t * B + n_cont) * ld_grad_h,
                               ld_grad_h, dh + n_cont * H, dc + n_cont * H,
                               dg_t + n_cont * G, G)

        # grad_h[:n] = grad_gates[t, :n] @ weight_hh
        if floating is float and packed_hh != NULL:
            clstm_packed_gemm(n, G, H, dg_t, G, packed_hh, dh, H, 0)
        elif n == 1:
            _gemv(RowMajor, Trans, <int> G, <int> H, 1.0, weight_hh, <int> H,
                  dg_t, 1, 0.0, dh, 1)
        else:
            _gemm(RowMajor, NoTrans, NoTrans, <int> n, <int> H, <int> G, 1.0,
                  dg_t, <int> G, weight_hh, <int> H, 0.0, dh, <int> H)
        if mask != NULL:
            for r in range(n):
                for j in range(H):
                    dh[r * H + j] *= mask[r * H + j]


cdef void lstm_weight_gradients(
        Py_ssize_t n_rows, Py_ssize_t input_size, Py_ssize_t hidden_size,
        const floating* xh, const floating* grad_gates, floating* grad_w,
        floating* grad_weight_ih, floating* grad_weight_hh,
        floating* grad_bias) noexcept nogil:
    """Weight and bias gradients, summed over all n_rows = T*B rows
    (accumulating).

    xh (n_rows, I + H) holds [x_t | h_{t-1}] side by side, so one GEMM gives
    both weight gradients and grad_gates is read (and packed by BLAS) once;
    grad_w (4H, I + H) is the workspace it lands in.
    """
    cdef int M = <int> n_rows, I = <int> input_size, H = <int> hidden_size
    cdef int G = 4 * H, K = I + H
    cdef Py_ssize_t r, j
    if n_rows == 0:
        return
    # grad_w = grad_gates.T @ xh
    _gemm(RowMajor, Trans, NoTrans, G, K, M, 1.0, grad_gates, G, xh, K, 0.0, grad_w, K)
    # grad_weight_ih += grad_w[:, :I];  grad_weight_hh += grad_w[:, I:]
    for r in range(G):
        for j in range(I):
            grad_weight_ih[r * I + j] += grad_w[r * K + j]
        for j in range(H):
            grad_weight_hh[r * H + j] += grad_w[r * K + I + j]
    # grad_bias += grad_gates.sum(axis=0)
    for r in range(n_rows):
        for j in range(G):
            grad_bias[j] += grad_gates[r * G + j]


cdef void lstm_input_gradient(
        Py_ssize_t n_rows, Py_ssize_t input_size, Py_ssize_t hidden_size,
        const floating* grad_gates, const floating* weight_ih, const float* packed_ih,
        floating* grad_x, bint accumulate) noexcept nogil:
    """grad_x (+)= grad_gates @ weight_ih, for n_rows rows

    (float32 with packed_ih: the small-GEMM kernel, which streams grad_gates
    once instead of repacking it as BLAS does; otherwise BLAS).
    """
    cdef int G = 4 * <int> hidden_size, I = <int> input_size
    if n_rows == 0:
        return
    if floating is float:
        if packed_ih != NULL:
            clstm_packed_gemm(n_rows, G, I, grad_gates, G, packed_ih, grad_x, I,
                              accumulate)
            return
    _gemm(RowMajor, NoTrans, NoTrans, <int> n_rows, I, G, 1.0, grad_gates, G,
          weight_ih, I, 1.0 if accumulate else 0.0, grad_x, I)


# --- Python-facing entry points (called by clstm._lstm) -----------------------
# Each runs one phase of a layer over a (sub-)batch with the GIL released.
# Shapes are validated by the caller (clstm._lstm.LSTM); the checks here
# guard memory safety only.

cdef inline void _check(bint ok, str what) except *:
    if not ok:
        raise ValueError(f"internal layout error: {what}")


cdef void _check_recurrence(Py_ssize_t* gates, Py_ssize_t* weight_hh,
                            Py_ssize_t* h0, Py_ssize_t* c0, const int[::1] batch_sizes,
                            Py_ssize_t* c_seq, Py_ssize_t* h_seq,
                            Py_ssize_t column) except *:
    """Shapes shared by the forward and backward recurrence (from .shape arrays)."""
    cdef Py_ssize_t T = gates[0], B = gates[1], H = weight_hh[1]
    _check(T > 0 and B > 0 and H > 0 and gates[2] == 4 * H and weight_hh[0] == 4 * H,
           "weight_hh")
    _check(h0[0] == B and h0[1] == H and c0[0] == B and c0[1] == H, "h0/c0")
    _check(batch_sizes.shape[0] == T and batch_sizes[0] <= B, "batch_sizes")
    _check(c_seq[0] == T and c_seq[1] == B and c_seq[2] == H, "c_seq")
    _check(h_seq[0] == T and h_seq[1] == B and column >= 0 and column + H <= h_seq[2],
           "h_seq")


cdef const float* _packed_pointer(packed, Py_ssize_t K, Py_ssize_t N) except? NULL:
    """Data pointer of a packed weight from pack_weight (None: NULL, use BLAS)."""
    cdef const float[::1] view
    if packed is None:
        return NULL
    view = packed
    _check(view.shape[0] == clstm_packed_size(K, N) and view.shape[0] > 0, "packed weight")
    return &view[0]


HAVE_PACKED_GEMM = bool(CLSTM_HAVE_PACKED_GEMM)


def pack_weight(const float[:, ::1] weight, bint transposed):
    """Pack a float32 weight for the small-GEMM kernel (see _packed_gemm.h).

    transposed=False packs B = weight (K x N = its shape), for
    grad_h = grad_gates @ weight_hh; transposed=True packs B = weight.T, for
    gates += h @ weight_hh.T. Returns a 1-D float32 array.
    """
    cdef Py_ssize_t K = weight.shape[1] if transposed else weight.shape[0]
    cdef Py_ssize_t N = weight.shape[0] if transposed else weight.shape[1]
    out = np.empty(clstm_packed_size(K, N), dtype=np.float32)
    cdef float[::1] packed = out
    if out.shape[0]:
        with nogil:
            clstm_pack_b(K, N, &weight[0, 0], weight.shape[1], transposed, &packed[0])
    return out


def input_projection(const floating[:, :, ::1] x, const floating[:, ::1] weight_ih,
                     floating[:, :, ::1] gates, packed_ih_t=None):
    """gates = x @ weight_ih.T, over all T*B rows"""
    cdef Py_ssize_t T = x.shape[0], B = x.shape[1], I = x.shape[2]
    cdef Py_ssize_t G = gates.shape[2]
    _check(weight_ih.shape[0] == G and weight_ih.shape[1] == I and G % 4 == 0, "weight_ih")
    _check(gates.shape[0] == T and gates.shape[1] == B, "gates")
    cdef const float* packed_ptr = _packed_pointer(packed_ih_t, I, G)
    with nogil:
        lstm_input_projection(T * B, I, G // 4, &x[0, 0, 0], &weight_ih[0, 0], packed_ptr,
                              &gates[0, 0, 0])


def recurrence_forward(const floating[:, ::1] weight_hh, const floating[::1] bias,
                       const floating[:, ::1] h0,
                       const floating[:, ::1] c0, const int[::1] batch_sizes,
                       bint reverse, floating[:, :, ::1] gates,
                       floating[:, :, ::1] c_seq, floating[:, :, ::1] h_seq,
                       Py_ssize_t column, recurrence_mask=None, work=None,
                       packed_hh_t=None, x=None, packed_xh_t=None):
    """Scan over time (see lstm_recurrence_forward).

    h_seq (T, B, D*H) is pre-zeroed where sequences are padded; this direction
    writes columns [column, column + H). With packed_xh_t (pack_weight of
    [weight_ih | weight_hh], transposed) the input projection is computed per
    step from x (T, B, I) and gates needs no prior input_projection.
    """
    cdef Py_ssize_t T = gates.shape[0], B = gates.shape[1], H = weight_hh.shape[1]
    _check_recurrence(gates.shape, weight_hh.shape, h0.shape, c0.shape, batch_sizes,
                      c_seq.shape, h_seq.shape, column)
    cdef const floating[:, ::1] mask_view
    cdef floating[:, ::1] work_view
    cdef const floating* mask_ptr = NULL
    cdef floating* work_ptr = NULL
    if recurrence_mask is not None:
        mask_view = recurrence_mask
        work_view = work
        _check(mask_view.shape[0] == B and mask_view.shape[1] == H, "mask")
        _check(work_view.shape[0] == B and work_view.shape[1] == H, "work")
        mask_ptr = &mask_view[0, 0]
        work_ptr = &work_view[0, 0]
    _check(bias.shape[0] == 4 * H, "bias")
    cdef const float* packed_ptr = _packed_pointer(packed_hh_t, H, 4 * H)
    cdef const floating[:, :, ::1] x_view
    cdef const floating* x_ptr = NULL
    cdef Py_ssize_t I = 0
    cdef const float* packed_xh_ptr = NULL
    if packed_xh_t is not None:
        x_view = x
        I = x_view.shape[2]
        _check(x_view.shape[0] == T and x_view.shape[1] == B and I > 0, "x")
        x_ptr = &x_view[0, 0, 0]
        packed_xh_ptr = _packed_pointer(packed_xh_t, I + H, 4 * H)
    cdef Py_ssize_t ld_h = h_seq.shape[2]
    with nogil:
        lstm_recurrence_forward(T, B, H, &weight_hh[0, 0], packed_ptr, &bias[0],
                                &h0[0, 0], &c0[0, 0], &batch_sizes[0], reverse,
                                mask_ptr, &gates[0, 0, 0], &c_seq[0, 0, 0],
                                &h_seq[0, 0, column], ld_h, work_ptr, x_ptr, I,
                                packed_xh_ptr)


def recurrence_backward(const floating[:, ::1] weight_hh, const floating[:, ::1] h0,
                        const floating[:, ::1] c0, const int[::1] batch_sizes,
                        bint reverse, const floating[:, :, ::1] gates,
                        const floating[:, :, ::1] c_seq, const floating[:, :, ::1] h_seq,
                        const floating[:, :, ::1] grad_h_seq, Py_ssize_t column,
                        floating[:, ::1] grad_h, floating[:, ::1] grad_c,
                        floating[:, :, ::1] grad_gates, floating[:, :, ::1] xh,
                        recurrence_mask=None, packed_hh=None):
    """BPTT (see lstm_recurrence_backward).

    grad_h / grad_c (B, H): gradients reaching h_n / c_n on entry, h0 / c0 on
    exit. grad_gates (T, B, 4H) is filled, and so are the last H columns of
    xh (T, B, I + H) with h_prev (its first I columns hold the layer input).
    """
    cdef Py_ssize_t T = gates.shape[0], B = gates.shape[1], H = weight_hh.shape[1]
    _check_recurrence(gates.shape, weight_hh.shape, h0.shape, c0.shape, batch_sizes,
                      c_seq.shape, h_seq.shape, column)
    _check(grad_h_seq.shape[0] == T and grad_h_seq.shape[1] == B
           and column + H <= grad_h_seq.shape[2], "grad_h_seq")
    _check(grad_h.shape[0] == B and grad_h.shape[1] == H and grad_c.shape[0] == B
           and grad_c.shape[1] == H, "grad_h/grad_c")
    _check(grad_gates.shape[0] == T and grad_gates.shape[1] == B
           and grad_gates.shape[2] == 4 * H, "grad_gates")
    _check(xh.shape[0] == T and xh.shape[1] == B and xh.shape[2] >= H, "xh")
    cdef const floating[:, ::1] mask_view
    cdef const floating* mask_ptr = NULL
    if recurrence_mask is not None:
        mask_view = recurrence_mask
        _check(mask_view.shape[0] == B and mask_view.shape[1] == H, "mask")
        mask_ptr = &mask_view[0, 0]
    cdef const float* packed_ptr = _packed_pointer(packed_hh, 4 * H, H)
    with nogil:
        lstm_recurrence_backward(T, B, H, &weight_hh[0, 0], packed_ptr, &h0[0, 0],
                                 &c0[0, 0], &batch_sizes[0], reverse,
                                 mask_ptr, &gates[0, 0, 0], &c_seq[0, 0, 0],
                                 &h_seq[0, 0, column], h_seq.shape[2],
                                 &grad_h_seq[0, 0, column], grad_h_seq.shape[2],
                                 &grad_h[0, 0], &grad_c[0, 0],
                                 &grad_gates[0, 0, 0],
                                 &xh[0, 0, xh.shape[2] - H], xh.shape[2])


def parameter_gradients(const floating[:, :, ::1] xh, const floating[:, ::1] weight_ih,
                        floating[:, :, ::1] grad_gates, floating[:, :, ::1] grad_x,
                        bint accumulate_grad_x, floating[:, ::1] grad_weight_ih,
                        floating[:, ::1] grad_weight_hh, floating[::1] grad_bias,
                        floating[:, ::1] grad_w, packed_ih=None):
    """After BPTT: the weight/bias gradients (added to), and grad_x
    (overwritten, or added to when accumulate_grad_x).

    xh (T, B, I + H) = [layer input | h_prev]; grad_w (4H, I + H) workspace.
    """
    cdef Py_ssize_t T = xh.shape[0], B = xh.shape[1]
    cdef Py_ssize_t G = grad_gates.shape[2], H = G // 4, I = xh.shape[2] - G // 4
    _check(G % 4 == 0 and grad_gates.shape[0] == T and grad_gates.shape[1] == B, "grad_gates")
    _check(I >= 1 and weight_ih.shape[0] == G and weight_ih.shape[1] == I, "weight_ih")
    _check(grad_x.shape[0] == T and grad_x.shape[1] == B and grad_x.shape[2] == I, "grad_x")
    _check(grad_weight_ih.shape[0] == G and grad_weight_ih.shape[1] == I
           and grad_weight_hh.shape[0] == G and grad_weight_hh.shape[1] == H
           and grad_bias.shape[0] == G, "grad weights")
    _check(grad_w.shape[0] == G and grad_w.shape[1] == I + H, "grad_w")
    cdef const float* packed_ptr = _packed_pointer(packed_ih, G, I)
    with nogil:
        lstm_weight_gradients(T * B, I, H, &xh[0, 0, 0],
                              &grad_gates[0, 0, 0], &grad_w[0, 0],
                              &grad_weight_ih[0, 0], &grad_weight_hh[0, 0],
                              &grad_bias[0])
        lstm_input_gradient(T * B, I, H, &grad_gates[0, 0, 0], &weight_ih[0, 0],
                            packed_ptr, &grad_x[0, 0, 0], accumulate_grad_x)


def packed_matmul(const float[:, ::1] a, const float[:, ::1] weight, bint transposed,
                  float[:, ::1] c, bint accumulate):
    """Test twin of the small-GEMM kernel: c (+)= a @ B, with B = weight.T
    if transposed else weight, packed by pack_weight."""
    cdef Py_ssize_t K = weight.shape[1] if transposed else weight.shape[0]
    cdef Py_ssize_t N = weight.shape[0] if transposed else weight.shape[1]
    _check(a.shape[1] == K and c.shape[0] == a.shape[0] and c.shape[1] == N, "shapes")
    if not CLSTM_HAVE_PACKED_GEMM:
        raise RuntimeError("this build has no small-GEMM kernel (uses BLAS)")
    packed = pack_weight(weight, transposed)
    cdef const float* pk = _packed_pointer(packed, K, N)
    if a.shape[0] == 0:
        return
    with nogil:
        clstm_packed_gemm(a.shape[0], K, N, &a[0, 0], K, pk, &c[0, 0], N, accumulate)
