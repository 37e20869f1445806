"""The optimizers' elementwise steps, one pass over contiguous arrays.

NumPy's form of an Adam step is ten array operations, each a pass over the
parameters with a temporary of their size: 17 us for a 4,500-entry model
(most of it per-call overhead) and 3.4 ms for 1.6 million entries (memory
traffic), measured on a 2-core AMD EPYC (Zen 4). Here each step reads the
gradient and its slots once and writes the parameter and the slots once.

The arithmetic is NumPy's, operation by operation and in the parameters'
dtype (float32 or float64): every product, sum, square root and quotient is
rounded as the array expression in the docstrings rounds it, so the result
is bit for bit what that expression gives (tests/test_optimizer_steps.py
checks this against the NumPy forms). That needs the compiler to keep each
operation as written: the module is built with -ffp-contract=off (no fused
multiply-adds, which would skip a rounding) and without -ffast-math. The Adam
and RMSprop loops (``_optimizer_rows.h``) have AVX2 and AVX-512 clones picked
at load time; each operation is elementwise, so every clone gives those bits.

The arrays are 1-D, C-contiguous, of one floating dtype and one size (the
outputs writable); scalars arrive as Python floats: SGD and RMSprop pass them
already rounded to that dtype (``dtype.type(x)``), so their cast is exact; Adam
passes doubles, which the cast to float32 rounds as ``np.float32(x)`` does. Raw
pointers rather than typed memoryviews keep the module small (a wheel budget).

``sum_of_squares`` accumulates in float64 for both dtypes (the gradient
norm of the training loop). ``all_finite`` is the finiteness check of the
inputs, states and gradients (clstm._validation.check_finite) without
NumPy's boolean temporary of the array's size.
"""

from cython cimport floating

cimport numpy as cnp

import numpy as np

cnp.import_array()


cdef extern from "_optimizer_rows.h" nogil:
    void clstm_adam_f(Py_ssize_t n, float* param, const float* grad, float* m, float* v,
                      float beta_1, float one_minus_beta_1, float beta_2,
                      float one_minus_beta_2, float neg_step, float epsilon)
    void clstm_adam_d(Py_ssize_t n, double* param, const double* grad, double* m, double* v,
                      double beta_1, double one_minus_beta_1, double beta_2,
                      double one_minus_beta_2, double neg_step, double epsilon)
    void clstm_rmsprop_f(Py_ssize_t n, float* param, const float* grad, float* s, float rho,
                         float one_minus_rho, float neg_rate, float epsilon)
    void clstm_rmsprop_d(Py_ssize_t n, double* param, const double* grad, double* s,
                         double rho, double one_minus_rho, double neg_rate, double epsilon)
    double clstm_sum_of_squares_f(Py_ssize_t n, const float* values)
    double clstm_sum_of_squares_d(Py_ssize_t n, const double* values)


cdef void _sgd(Py_ssize_t n, floating* param, const floating* grad, floating* velocity,
               floating rate, floating momentum, bint nesterov) noexcept nogil:
    cdef Py_ssize_t i
    cdef floating g, vi, neg_rate = -rate
    if velocity == NULL:
        for i in range(n):
            param[i] = param[i] + neg_rate * grad[i]
        return
    for i in range(n):
        g = grad[i]
        vi = velocity[i] * momentum
        vi = vi - rate * g
        velocity[i] = vi
        if nesterov:
            param[i] = param[i] + (momentum * vi - rate * g)
        else:
            param[i] = param[i] + vi


cdef inline void* _data(cnp.ndarray a) noexcept:
    return cnp.PyArray_DATA(a)


cdef int _check(tuple outputs, tuple inputs) except -1:
    """Every array 1-D, C-contiguous, of the first one's floating dtype and
    size; outputs writable. Returns the dtype's size in bytes (4 or 8)."""
    arrays = outputs + inputs
    for a in arrays:
        if not isinstance(a, np.ndarray):
            raise TypeError(f"optimizer step: arrays expected, got {type(a).__name__}")
    dtype, n = arrays[0].dtype, arrays[0].size
    if dtype != np.float32 and dtype != np.float64:
        raise TypeError(f"optimizer step: float32 or float64 arrays, got {dtype}")
    for k, a in enumerate(arrays):
        if a.ndim != 1 or not a.flags.c_contiguous or a.dtype != dtype:
            raise ValueError(f"optimizer step: 1-D C-contiguous {dtype} arrays expected, got "
                             f"shape {a.shape}, dtype {a.dtype}")
        if a.size != n:
            raise ValueError(f"optimizer step: arrays of {n} and {a.size} entries; they "
                             "must have the same size")
        if k < len(outputs) and not a.flags.writeable:
            raise ValueError("optimizer step: the parameter and its slots must be writable")
    return dtype.itemsize


cdef int _adam(param, grad, m, v, double beta_1, double one_minus_beta_1, double beta_2,
               double one_minus_beta_2, double neg_step, double epsilon) except -1:
    cdef int size = _check((param, m, v), (grad,))
    cdef Py_ssize_t n = param.size
    cdef void* p = _data(param)
    cdef void* g = _data(grad)
    cdef void* pm = _data(m)
    cdef void* pv = _data(v)
    with nogil:
        if size == 4:
            clstm_adam_f(n, <float*> p, <const float*> g, <float*> pm, <float*> pv,
                         <float> beta_1, <float> one_minus_beta_1, <float> beta_2,
                         <float> one_minus_beta_2, <float> neg_step, <float> epsilon)
        else:
            clstm_adam_d(n, <double*> p, <const double*> g, <double*> pm, <double*> pv,
                         beta_1, one_minus_beta_1, beta_2, one_minus_beta_2, neg_step, epsilon)
    return 0


def adam_step(param, grad, m, v, double beta_1, double one_minus_beta_1, double beta_2,
              double one_minus_beta_2, double neg_step, double epsilon):
    """In place, per entry::

        m = m * beta_1;  m = m + one_minus_beta_1 * grad
        v = v * beta_2;  v = v + one_minus_beta_2 * (grad * grad)
        param = param + (neg_step * m) / (sqrt(v) + epsilon)

    For float32 arrays the scalars are rounded to float32 (as ``np.float32(x)``
    rounds them), for float64 ones used as they are.
    """
    _adam(param, grad, m, v, beta_1, one_minus_beta_1, beta_2, one_minus_beta_2, neg_step,
          epsilon)


def adam_steps(list steps, double beta_1, double one_minus_beta_1, double beta_2,
               double one_minus_beta_2, double neg_step, double epsilon):
    """:func:`adam_step` on each ``(param, grad, m, v)`` of ``steps`` in turn: one
    call for all of a model's parameters (a Python call each costs more than
    the step of a small parameter)."""
    for param, grad, m, v in steps:
        _adam(param, grad, m, v, beta_1, one_minus_beta_1, beta_2, one_minus_beta_2,
              neg_step, epsilon)


cdef bint _same_layout(cnp.ndarray a, cnp.ndarray like, bint writable):
    """a is C-contiguous, of like's dtype and shape (and writable where asked)."""
    cdef int k, nd = cnp.PyArray_NDIM(like)
    if (cnp.PyArray_TYPE(a) != cnp.PyArray_TYPE(like) or cnp.PyArray_NDIM(a) != nd
            or not cnp.PyArray_IS_C_CONTIGUOUS(a)
            or (writable and not cnp.PyArray_ISWRITEABLE(a))):
        return False
    for k in range(nd):
        if cnp.PyArray_DIM(a, k) != cnp.PyArray_DIM(like, k):
            return False
    return True


cdef bint _dense_ready(dict params, dict grads, tuple slots) except -1:
    """Whether every parameter of ``params``, its gradient and its entry in
    each dict of ``slots`` are what the optimizers' per-parameter loops step
    in place: float32 or float64 ndarrays of the parameter's dtype and shape,
    C-contiguous, the parameter and slots writable."""
    cdef cnp.ndarray p
    for name, param in params.items():
        grad = grads.get(name)
        if type(param) is not np.ndarray or type(grad) is not np.ndarray:
            return False
        p = <cnp.ndarray> param
        if (cnp.PyArray_TYPE(p) not in (cnp.NPY_FLOAT32, cnp.NPY_FLOAT64)
                or not _same_layout(p, p, True) or not _same_layout(grad, p, False)):
            return False
        for slot in slots:
            buf = (<dict> slot).get(name)
            if type(buf) is not np.ndarray or not _same_layout(buf, p, True):
                return False
    return True


# One parameter's step over raw arrays (float32 where `single`): its data,
# its gradient's, its slots' (up to two, NULL past those in use) and the
# optimizer's scalars, in the order of its *_dense_update's arguments.
ctypedef void (*dense_fn)(bint single, Py_ssize_t n, void* p, const void* g, void* s0,
                          void* s1, const double* k) noexcept nogil


cdef void _adam_arrays(bint single, Py_ssize_t n, void* p, const void* g, void* m, void* v,
                       const double* k) noexcept nogil:
    if single:
        clstm_adam_f(n, <float*> p, <const float*> g, <float*> m, <float*> v, <float> k[0],
                     <float> k[1], <float> k[2], <float> k[3], <float> k[4], <float> k[5])
    else:
        clstm_adam_d(n, <double*> p, <const double*> g, <double*> m, <double*> v, k[0], k[1],
                     k[2], k[3], k[4], k[5])


cdef void _rmsprop_arrays(bint single, Py_ssize_t n, void* p, const void* g, void* s,
                          void* unused, const double* k) noexcept nogil:
    if single:
        clstm_rmsprop_f(n, <float*> p, <const float*> g, <float*> s, <float> k[0],
                        <float> k[1], <float> k[2], <float> k[3])
    else:
        clstm_rmsprop_d(n, <double*> p, <const double*> g, <double*> s, k[0], k[1], k[2], k[3])


cdef void _sgd_arrays(bint single, Py_ssize_t n, void* p, const void* g, void* velocity,
                      void* unused, const double* k) noexcept nogil:
    # k: rate, momentum, nesterov (0 or 1)
    if single:
        _sgd(n, <float*> p, <const float*> g, <float*> velocity, <float> k[0], <float> k[1],
             k[2] != 0)
    else:
        _sgd(n, <double*> p, <const double*> g, <double*> velocity, k[0], k[1], k[2] != 0)


cdef bint _dense_update(dict params, dict grads, tuple slots, dense_fn step,
                        const double* k) except -1:
    """``step`` on every parameter of ``params`` with its gradient and its
    entries in the dicts of ``slots``, where _dense_ready allows: the
    *_dense_update functions below."""
    if not _dense_ready(params, grads, slots):
        return False
    cdef cnp.ndarray p
    cdef void* buf[2]
    cdef void* data
    cdef const void* grad
    cdef Py_ssize_t i, n
    cdef bint single
    for name, param in params.items():
        p = <cnp.ndarray> param
        buf[0] = buf[1] = NULL
        for i in range(len(slots)):
            buf[i] = cnp.PyArray_DATA(<cnp.ndarray> (<dict> slots[i])[name])
        single, n, data = cnp.PyArray_TYPE(p) == cnp.NPY_FLOAT32, cnp.PyArray_SIZE(p), \
            cnp.PyArray_DATA(p)
        grad = cnp.PyArray_DATA(<cnp.ndarray> grads[name])
        with nogil:
            step(single, n, data, grad, buf[0], buf[1], k)
    return True


# The *_dense_update functions: the step of every parameter of ``params``
# with its gradient and its slots (dicts by parameter name), as the
# optimizer's per-parameter loop runs it (the same kernels and scalars: the
# same bits), where all of them are already what that loop steps in place
# (_dense_ready). They check every parameter before they step any: False,
# having changed nothing, where one is not of that kind (a slot still to
# make, a row-sparse or converted gradient), and the caller's loop takes the
# step; else True. Scalars arrive as doubles, rounded to float32 for float32
# arrays (as np.float32(x) rounds them).

def adam_dense_update(dict params, dict grads, dict m, dict v, double beta_1,
                      double one_minus_beta_1, double beta_2, double one_minus_beta_2,
                      double neg_step, double epsilon):
    """:func:`adam_step` on every parameter, moments ``m`` and ``v`` (see above)."""
    cdef double k[6]
    k[:] = [beta_1, one_minus_beta_1, beta_2, one_minus_beta_2, neg_step, epsilon]
    return _dense_update(params, grads, (m, v), _adam_arrays, k)


def rmsprop_dense_update(dict params, dict grads, dict s, double rho, double one_minus_rho,
                         double neg_rate, double epsilon):
    """:func:`rmsprop_step` on every parameter, averages ``s`` (see above)."""
    cdef double k[4]
    k[:] = [rho, one_minus_rho, neg_rate, epsilon]
    return _dense_update(params, grads, (s,), _rmsprop_arrays, k)


def sgd_dense_update(dict params, dict grads, velocity, double rate, double momentum,
                     bint nesterov):
    """:func:`sgd_step` on every parameter, ``velocity`` a dict of the
    velocities or None (no momentum; see above)."""
    cdef double k[3]
    k[:] = [rate, momentum, 1.0 if nesterov else 0.0]
    return _dense_update(params, grads, () if velocity is None else (velocity,), _sgd_arrays,
                         k)


def rmsprop_step(param, grad, s, double rho, double one_minus_rho, double neg_rate,
                 double epsilon):
    """In place, per entry::

        s = s * rho;  s = s + one_minus_rho * (grad * grad)
        param = param + (neg_rate * grad) / (sqrt(s) + epsilon)
    """
    cdef int size = _check((param, s), (grad,))
    cdef Py_ssize_t n = param.size
    cdef void* p = _data(param)
    cdef void* g = _data(grad)
    cdef void* ps = _data(s)
    with nogil:
        if size == 4:
            clstm_rmsprop_f(n, <float*> p, <const float*> g, <float*> ps, <float> rho,
                            <float> one_minus_rho, <float> neg_rate, <float> epsilon)
        else:
            clstm_rmsprop_d(n, <double*> p, <const double*> g, <double*> ps, rho, one_minus_rho,
                            neg_rate, epsilon)


def sgd_step(param, grad, velocity, double rate, double momentum, bint nesterov):
    """In place, per entry; without ``velocity`` (None: no momentum)
    ``param = param + (-rate) * grad``, with it::

        velocity = velocity * momentum;  velocity = velocity - rate * grad
        param = param + (momentum * velocity - rate * grad)   (nesterov)
        param = param + velocity                               (otherwise)
    """
    outputs = (param,) if velocity is None else (param, velocity)
    cdef int size = _check(outputs, (grad,))
    cdef Py_ssize_t n = param.size
    cdef void* p = _data(param)
    cdef void* g = _data(grad)
    cdef void* pv = NULL if velocity is None else _data(velocity)
    with nogil:
        if size == 4:
            _sgd(n, <float*> p, <const float*> g, <float*> pv, <float> rate, <float> momentum,
                 nesterov)
        else:
            _sgd(n, <double*> p, <const double*> g, <double*> pv, rate, momentum, nesterov)


cdef inline double _sum_of_squares(Py_ssize_t n, const floating* values) noexcept nogil:
    if floating is float:
        return clstm_sum_of_squares_f(n, values)
    return clstm_sum_of_squares_d(n, values)


def sum_of_squares(values):
    """sum(values ** 2) accumulated in float64 (interleaved partial sums, so
    the adds pipeline; their order is fixed: the same bits every call and on
    every CPU; _optimizer_rows.h)."""
    cdef int size = _check((), (values,))
    cdef Py_ssize_t n = values.size
    cdef void* p = _data(values)
    cdef double total
    with nogil:
        if size == 4:
            total = _sum_of_squares(n, <const float*> p)
        else:
            total = _sum_of_squares(n, <const double*> p)
    return total


def dense_sum_of_squares(dict params, dict grads):
    """The common case of a public optimizer's step, checked in one call: every
    parameter a writable float32 or float64 ndarray, its gradient an ndarray of
    the same dtype and shape, C-contiguous (what a network's backward gives).
    Returns the sum of all their squares (sum_of_squares, added in the
    parameters' order), or None where one pair is not of that kind or a name
    has no gradient: the caller's general loop then converts, or raises with
    the parameter's name."""
    cdef double total = 0.0
    cdef cnp.ndarray p, g
    for name, param in params.items():
        grad = grads.get(name)
        if type(param) is not np.ndarray or type(grad) is not np.ndarray:
            return None
        p, g = <cnp.ndarray> param, <cnp.ndarray> grad
        if (cnp.PyArray_TYPE(p) not in (cnp.NPY_FLOAT32, cnp.NPY_FLOAT64)
                or not cnp.PyArray_ISWRITEABLE(p) or not _same_layout(g, p, False)):
            return None
        with nogil:
            if cnp.PyArray_TYPE(g) == cnp.NPY_FLOAT32:
                total += _sum_of_squares(cnp.PyArray_SIZE(g), <const float*> cnp.PyArray_DATA(g))
            else:
                total += _sum_of_squares(cnp.PyArray_SIZE(g), <const double*> cnp.PyArray_DATA(g))
    return total


cdef bint _all_finite(Py_ssize_t n, const floating* values) noexcept nogil:
    # x - x is 0 for a finite x and NaN for inf or NaN: the eight sums stay 0
    # exactly while every entry is finite (independent sums: the adds pipeline)
    cdef Py_ssize_t i, j, n8 = n - n % 8
    cdef floating acc[8]
    for j in range(8):
        acc[j] = 0
    for i in range(0, n8, 8):
        for j in range(8):
            acc[j] = acc[j] + (values[i + j] - values[i + j])
    for i in range(n8, n):
        acc[0] = acc[0] + (values[i] - values[i])
    for j in range(1, 8):
        acc[0] = acc[0] + acc[j]
    return acc[0] == 0


def all_finite(values):
    """Whether every entry of ``values`` is finite: a C-contiguous float32 or
    float64 ndarray of any shape, read in one pass; None for any other
    argument (the caller asks NumPy then)."""
    if not isinstance(values, np.ndarray) or not values.flags.c_contiguous:
        return None
    cdef cnp.ndarray arr = values
    cdef Py_ssize_t n = arr.size
    cdef void* p = _data(arr)
    cdef bint finite
    if arr.dtype == np.float32:
        with nogil:
            finite = _all_finite(n, <const float*> p)
    elif arr.dtype == np.float64:
        with nogil:
            finite = _all_finite(n, <const double*> p)
    else:
        return None
    return finite
