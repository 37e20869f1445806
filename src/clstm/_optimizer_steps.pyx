"""The optimizers' elementwise steps, one pass over contiguous arrays.

NumPy's form of an Adam step is ten array operations, each a pass over the
parameters with a temporary of their size: 17 us for a 4,500-entry model
(most of it per-call overhead) and 3.4 ms for 1.6 million entries (memory
traffic), measured on a 2-core AMD EPYC (Zen 3). Here each step reads the
gradient and its slots once and writes the parameter and the slots once.

The arithmetic is NumPy's, operation by operation and in the parameters'
dtype (float32 or float64): every product, sum, square root and quotient is
rounded as the array expression in the docstrings rounds it, so the result
is bit for bit what that expression gives (tests/test_optimizer_steps.py
checks this against the NumPy forms). That needs the compiler to keep each
operation as written: the module is built with -ffp-contract=off (no fused
multiply-adds, which would skip a rounding) and without -ffast-math.

``sum_of_squares`` accumulates in float64 for both dtypes (the gradient
norm of the training loop).
"""

from cython cimport floating
from libc.math cimport sqrt, sqrtf


cdef inline floating _sqrt(floating x) noexcept nogil:
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt(x)


def adam_step(floating[::1] param, const floating[::1] grad, floating[::1] m,
              floating[::1] v, floating beta_1, floating one_minus_beta_1, floating beta_2,
              floating one_minus_beta_2, floating neg_step, floating epsilon):
    """In place, per entry::

        m = m * beta_1;  m = m + one_minus_beta_1 * grad
        v = v * beta_2;  v = v + one_minus_beta_2 * (grad * grad)
        param = param + (neg_step * m) / (sqrt(v) + epsilon)
    """
    cdef Py_ssize_t i, n = _common_size(param, grad, m, v)
    cdef floating g, mi, vi
    with nogil:
        for i in range(n):
            g = grad[i]
            mi = m[i] * beta_1
            mi = mi + one_minus_beta_1 * g
            vi = v[i] * beta_2
            vi = vi + one_minus_beta_2 * (g * g)
            m[i] = mi
            v[i] = vi
            param[i] = param[i] + (neg_step * mi) / (_sqrt(vi) + epsilon)


def rmsprop_step(floating[::1] param, const floating[::1] grad, floating[::1] s,
                 floating rho, floating one_minus_rho, floating neg_rate, floating epsilon):
    """In place, per entry::

        s = s * rho;  s = s + one_minus_rho * (grad * grad)
        param = param + (neg_rate * grad) / (sqrt(s) + epsilon)
    """
    cdef Py_ssize_t i, n = _common_size(param, grad, s, s)
    cdef floating g, si
    with nogil:
        for i in range(n):
            g = grad[i]
            si = s[i] * rho
            si = si + one_minus_rho * (g * g)
            s[i] = si
            param[i] = param[i] + (neg_rate * g) / (_sqrt(si) + epsilon)


def sgd_step(floating[::1] param, const floating[::1] grad, floating[::1] velocity,
             floating rate, floating momentum, bint nesterov):
    """In place, per entry; without ``velocity`` (None: no momentum)
    ``param = param + (-rate) * grad``, with it::

        velocity = velocity * momentum;  velocity = velocity - rate * grad
        param = param + (momentum * velocity - rate * grad)   (nesterov)
        param = param + velocity                               (otherwise)
    """
    cdef Py_ssize_t i, n
    cdef floating g, vi, neg_rate = -rate
    if velocity is None:
        n = _common_size(param, grad, param, param)
        with nogil:
            for i in range(n):
                param[i] = param[i] + neg_rate * grad[i]
        return
    n = _common_size(param, grad, velocity, velocity)
    with nogil:
        for i in range(n):
            g = grad[i]
            vi = velocity[i] * momentum
            vi = vi - rate * g
            velocity[i] = vi
            if nesterov:
                param[i] = param[i] + (momentum * vi - rate * g)
            else:
                param[i] = param[i] + vi


def sum_of_squares(const floating[::1] values):
    """sum(values ** 2) accumulated in float64 (four interleaved partial sums,
    so the adds pipeline; their order is fixed: the same bits every call)."""
    cdef Py_ssize_t i, n = values.shape[0], n4 = n - n % 4
    cdef double a, s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0
    with nogil:
        for i in range(0, n4, 4):
            a = values[i]
            s0 = s0 + a * a
            a = values[i + 1]
            s1 = s1 + a * a
            a = values[i + 2]
            s2 = s2 + a * a
            a = values[i + 3]
            s3 = s3 + a * a
        for i in range(n4, n):
            a = values[i]
            s0 = s0 + a * a
    return (s0 + s1) + (s2 + s3)


cdef Py_ssize_t _common_size(floating[::1] a, const floating[::1] b, floating[::1] c,
                             floating[::1] d) except -1:
    cdef Py_ssize_t n = a.shape[0]
    if b.shape[0] != n or c.shape[0] != n or d.shape[0] != n:
        raise ValueError(f"optimizer step: arrays of {n}, {b.shape[0]}, {c.shape[0]} and "
                         f"{d.shape[0]} entries; they must have the same size")
    return n
