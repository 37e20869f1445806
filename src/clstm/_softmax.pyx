"""Softmax cross-entropy over wide outputs (a language model's vocabulary), fused.

Per row: the loss and the gradient, written in the dtype of the logits, with
no (rows x vocabulary) temporaries. float64 logits: every exp, sum and log in
double with libm (the values of NumPy's float64 ``log_softmax`` formulation,
the accuracy path). float32 logits: the exps in float32 by a vectorized
polynomial (``_softmax_rows.h``, a few ulp), their sum, the log and the loss
in double.
"""

from cython cimport floating
from libc.math cimport exp, log
from libc.stdint cimport int64_t
from libc.string cimport memset

cdef extern from "_softmax_rows.h" nogil:
    double clstm_softmax_xent_row_f(const float* z, Py_ssize_t k, int64_t y, double w,
                                    float* g)


cdef double _cross_entropy_rows(const floating* z, Py_ssize_t n_rows, Py_ssize_t n_classes,
                                const int64_t* codes, const double* weights,
                                floating* grad, double* work) noexcept nogil:
    """sum_r w_r (logsumexp(z_r) - z_r[y_r]); grad_r = w_r (softmax(z_r) - onehot(y_r)).

    ``work`` holds one row of exp(z_r - max z_r) in double (float64 only). Rows of weight 0
    get a zero gradient and add nothing.
    """
    cdef Py_ssize_t r, j
    cdef const floating* row
    cdef floating* g
    cdef double m, s, w, scale
    cdef double total = 0.0
    for r in range(n_rows):
        row = z + r * n_classes
        g = grad + r * n_classes
        w = weights[r]
        if w == 0.0:
            memset(g, 0, n_classes * sizeof(floating))
            continue
        if floating is float:
            total += clstm_softmax_xent_row_f(row, n_classes, codes[r], w, g)
        else:
            m = row[0]
            for j in range(1, n_classes):
                if row[j] > m:
                    m = row[j]
            s = 0.0
            for j in range(n_classes):
                work[j] = exp(<double> row[j] - m)
                s += work[j]
            total += w * (log(s) + m - <double> row[codes[r]])
            scale = w / s
            for j in range(n_classes):
                g[j] = <floating> (work[j] * scale)
            g[codes[r]] = <floating> ((work[codes[r]] / s - 1.0) * w)
    return total


def cross_entropy(const floating[:, ::1] logits, const int64_t[::1] codes,
                  const double[::1] weights, floating[:, ::1] grad, double[::1] work):
    """Weighted softmax cross-entropy of ``logits`` (N, K) against class codes (N,).

    Returns ``sum_r weights[r] * (logsumexp(logits[r]) - logits[r, codes[r]])``
    and fills ``grad`` (N, K) with its gradient. ``codes`` must lie in
    [0, K) (the caller checks); ``work`` is a (K,) scratch row.
    """
    cdef Py_ssize_t N = logits.shape[0], K = logits.shape[1]
    if (codes.shape[0] != N or weights.shape[0] != N or grad.shape[0] != N
            or grad.shape[1] != K or work.shape[0] < K):
        raise ValueError(f"cross_entropy: codes and weights must be ({N},), grad ({N}, {K}) "
                         f"and work at least ({K},)")
    if N == 0 or K == 0:
        return 0.0
    cdef double total
    with nogil:
        total = _cross_entropy_rows(&logits[0, 0], N, K, &codes[0], &weights[0],
                                    &grad[0, 0], &work[0])
    return total
