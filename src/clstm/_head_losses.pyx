"""The output head's losses, fused: one pass per row, no temporaries.

``dense_head_loss``: a small Dense head (a few outputs) and its squared-error or
logistic loss, forward and backward at once. Unfused, the head, the loss and the
head's gradients are about ten NumPy calls of 1-4 us each on a mini-batch of 32
rows, ~12 us: about a third of the forward kernels at a forecasting fit's shapes
(batch 32, 20 steps, 32 units), now one call.

``cross_entropy``: softmax cross-entropy over wide outputs (a language model's
vocabulary), with no (rows x vocabulary) temporaries. float64 logits: every
exp, sum and log in double with libm (the values of NumPy's float64
``log_softmax`` formulation, the accuracy path). float32 logits: the exps in
float32 by a vectorized polynomial (``_softmax_rows.h``, a few ulp), their sum,
the log and the loss in double.
"""

from cython cimport floating
from libc.math cimport exp, fabs, log, log1p
from libc.stdlib cimport free, malloc
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


# dense_head_loss's losses
cdef enum:
    _SQUARED_ERROR = 0
    _LOGISTIC = 1

SQUARED_ERROR = _SQUARED_ERROR
LOGISTIC = _LOGISTIC


cdef inline double _expit(double z) noexcept nogil:
    cdef double e
    if z >= 0.0:
        return 1.0 / (1.0 + exp(-z))
    e = exp(z)
    return e / (1.0 + e)


cdef double _dense_head_rows(const floating* feats, Py_ssize_t M, Py_ssize_t F,
                             Py_ssize_t K, const floating* weight_t, const floating* bias,
                             const floating* targets, const double* sample_weight,
                             double norm, int kind, floating* z, double* grad_w,
                             double* grad_b, floating* grad_feats,
                             double* check) noexcept nogil:
    """The weighted loss sum of M rows; grad_w (K x F) and grad_b (K) accumulate in
    double, grad_feats (M x F) is written. ``z`` is a (K,) scratch row. ``check``
    gets sum(g - g) over the written gradient: 0 unless one is inf or NaN."""
    cdef Py_ssize_t r, k, f
    cdef const floating* x
    cdef const floating* w_k
    cdef floating* gx
    cdef floating acc, diff, g
    cdef floating scale
    cdef double w, zd, y, sq, total = 0.0, bad = 0.0
    for r in range(M):
        x = feats + r * F
        gx = grad_feats + r * F
        w = sample_weight[r]
        for k in range(K):
            w_k = weight_t + k * F
            acc = 0
            for f in range(F):
                acc = acc + x[f] * w_k[f]
            z[k] = acc + bias[k]
        if kind == _SQUARED_ERROR:
            # as squared_error: diff in the dtype, its square and the sums in double,
            # the gradient diff * (w / (norm K)) rounded to the dtype first
            scale = <floating> (w / (norm * K))
            sq = 0.0
            for k in range(K):
                diff = z[k] - targets[r * K + k]
                sq = sq + <double> diff * <double> diff
                z[k] = diff * scale
            total = total + w * (0.5 * (sq / K if K > 1 else sq))
        else:
            # as logistic_loss (K == 1): max(z, 0) - y z + log1p(exp(-|z|))
            zd = z[0]
            y = targets[r]
            total = total + w * ((zd if zd > 0.0 else 0.0) - y * zd + log1p(exp(-fabs(zd))))
            z[0] = <floating> ((_expit(zd) - y) * w / norm)
        for f in range(F):
            gx[f] = 0
        for k in range(K):
            g = z[k]
            grad_b[k] = grad_b[k] + g
            w_k = weight_t + k * F
            for f in range(F):
                grad_w[k * F + f] = grad_w[k * F + f] + <double> g * <double> x[f]
                gx[f] = gx[f] + g * w_k[f]
        for f in range(F):
            bad = bad + (gx[f] - gx[f])
    check[0] = bad
    return total


def dense_head_loss(const floating[:, ::1] feats, const floating[:, ::1] weight,
                    const floating[::1] bias, const floating[:, ::1] targets,
                    const double[::1] sample_weight, double norm, int kind,
                    floating[:, ::1] grad_weight, floating[::1] grad_bias,
                    floating[:, ::1] grad_feats):
    """A Dense head ``Z = feats @ weight + bias`` (M x K) and its loss, fused.

    Returns ``(loss, finite)``: ``sum_r sample_weight[r] * l_r / norm`` (l as
    :func:`clstm._losses.squared_error` for ``kind`` SQUARED_ERROR, as
    :func:`clstm._losses.logistic_loss` for LOGISTIC, K = 1), and whether every
    entry of ``grad_feats`` is finite. Adds the loss's gradient to ``grad_weight``
    (F x K) and ``grad_bias`` (K,), writes the gradient reaching ``feats`` into
    ``grad_feats`` (M x F). The gradients of the head sum over rows in double.
    """
    cdef Py_ssize_t M = feats.shape[0], F = feats.shape[1], K = weight.shape[1]
    if (weight.shape[0] != F or bias.shape[0] != K or targets.shape[0] != M
            or targets.shape[1] != K or sample_weight.shape[0] != M
            or grad_weight.shape[0] != F or grad_weight.shape[1] != K
            or grad_bias.shape[0] != K or grad_feats.shape[0] != M
            or grad_feats.shape[1] != F):
        raise ValueError(f"dense_head_loss: feats ({M}, {F}) needs weight and grad_weight "
                         f"({F}, {K}), bias and grad_bias ({K},), targets ({M}, {K}), "
                         f"sample_weight ({M},) and grad_feats ({M}, {F})")
    if kind not in (_SQUARED_ERROR, _LOGISTIC) or (kind == _LOGISTIC and K != 1):
        raise ValueError(f"dense_head_loss: kind must be SQUARED_ERROR, or LOGISTIC with one "
                         f"output, got kind={kind} with {K} outputs")
    if M == 0 or K == 0:
        return 0.0, True
    cdef Py_ssize_t f, k
    cdef double total, check = 0.0
    cdef floating* weight_t = <floating*> malloc((K * F + K) * sizeof(floating))
    cdef double* grads = <double*> malloc((K * F + K) * sizeof(double))
    if weight_t == NULL or grads == NULL:
        free(weight_t)
        free(grads)
        raise MemoryError()
    with nogil:
        # the head's columns as contiguous rows; the gradients' sums from zero
        for f in range(F):
            for k in range(K):
                weight_t[k * F + f] = weight[f, k]
        memset(grads, 0, (K * F + K) * sizeof(double))
        total = _dense_head_rows(&feats[0, 0], M, F, K, weight_t, &bias[0], &targets[0, 0],
                                 &sample_weight[0], norm, kind, weight_t + K * F, grads,
                                 grads + K * F, &grad_feats[0, 0], &check)
        for k in range(K):
            grad_bias[k] = grad_bias[k] + <floating> grads[K * F + k]
            for f in range(F):
                grad_weight[f, k] = grad_weight[f, k] + <floating> grads[k * F + f]
    free(weight_t)
    free(grads)
    return total / norm, check == 0.0
