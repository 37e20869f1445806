"""The embedding kernels: a row gather forward and a row scatter-add backward.

An embedding is a lookup table ``weight`` (vocab_size, dim): step t of
sequence b reads row ``ids[b, t]``. Its gradient touches only the rows that
occur in the batch, so the backward accumulates into one row per distinct id
(``grad_rows``, (n_unique, dim)) through a slot map computed by the caller,
never into a dense (vocab_size, dim) array. Ids are validated in Python
(:mod:`clstm._embedding`) before either kernel runs; the kernels trust them.
"""

from cython cimport floating
from libc.stdint cimport int64_t
from libc.string cimport memcpy, memset


# --- forward: gather ---------------------------------------------------------
cdef void _gather(const floating* weight, Py_ssize_t dim, const int64_t* ids,
                  const int64_t* lengths, Py_ssize_t batch_size, Py_ssize_t n_steps,
                  floating* out) noexcept nogil:
    """out[b, t] = weight[ids[b, t]] for t < lengths[b]; out[b, t] = 0 past it."""
    cdef Py_ssize_t b, t
    cdef floating* row
    for b in range(batch_size):
        for t in range(n_steps):
            row = out + (b * n_steps + t) * dim
            if t < lengths[b]:
                memcpy(row, weight + ids[b * n_steps + t] * dim, dim * sizeof(floating))
            else:
                memset(row, 0, dim * sizeof(floating))


def gather(const floating[:, ::1] weight, const int64_t[:, ::1] ids,
           const int64_t[::1] lengths, floating[:, :, ::1] out):
    """out[b, t] = weight[ids[b, t]] for t < lengths[b], zero past each length.

    ``ids`` (B, T) must hold valid rows of ``weight`` at every valid step
    (the caller checks); ``out`` is (B, T, dim) of weight's dtype.
    """
    cdef Py_ssize_t B = ids.shape[0], T = ids.shape[1], D = weight.shape[1]
    if out.shape[0] != B or out.shape[1] != T or out.shape[2] != D or lengths.shape[0] != B:
        raise ValueError(f"gather: out must be ({B}, {T}, {D}) and lengths ({B},)")
    if B == 0 or T == 0 or D == 0:
        return
    with nogil:
        _gather(&weight[0, 0], D, &ids[0, 0], &lengths[0], B, T, &out[0, 0, 0])


# --- backward: scatter-add into the used rows --------------------------------
cdef void _scatter_add(const floating* grad_out, Py_ssize_t dim, const int64_t* slots,
                       const int64_t* lengths, Py_ssize_t batch_size, Py_ssize_t n_steps,
                       floating* grad_rows) noexcept nogil:
    """grad_rows[slots[b, t]] += grad_out[b, t] for t < lengths[b] and slots[b, t] >= 0."""
    cdef Py_ssize_t b, t, k, s
    cdef const floating* src
    cdef floating* dst
    for b in range(batch_size):
        for t in range(lengths[b]):
            s = slots[b * n_steps + t]
            if s < 0:
                continue
            src = grad_out + (b * n_steps + t) * dim
            dst = grad_rows + s * dim
            for k in range(dim):
                dst[k] += src[k]


def scatter_add(const floating[:, :, ::1] grad_out, const int64_t[:, ::1] slots,
                const int64_t[::1] lengths, floating[:, ::1] grad_rows):
    """grad_rows[slots[b, t]] += grad_out[b, t] over the valid steps; slot -1 skips a step.

    ``slots`` (B, T) maps each step to its distinct id's row of ``grad_rows``
    (n_unique, dim), which the caller zeroes; every slot must be < n_unique.
    """
    cdef Py_ssize_t B = slots.shape[0], T = slots.shape[1], D = grad_rows.shape[1]
    if (grad_out.shape[0] != B or grad_out.shape[1] != T or grad_out.shape[2] != D
            or lengths.shape[0] != B):
        raise ValueError(f"scatter_add: grad_out must be ({B}, {T}, {D}) and lengths ({B},)")
    if B == 0 or T == 0 or D == 0 or grad_rows.shape[0] == 0:
        return
    with nogil:
        _scatter_add(&grad_out[0, 0, 0], D, &slots[0, 0], &lengths[0], B, T,
                     &grad_rows[0, 0])
