"""Python-callable twins of the cell kernels and activations (for tests)."""

import numpy as np


def dispatch_level():
    """Name of the CPU code path the dispatched kernels run on this machine."""
    return clstm_dispatch_level().decode()


def tanh(floating[::1] x):
    """tanh as the float kernels compute it (rational approximation for float32)."""
    out = np.empty(x.shape[0], dtype=np.float32 if floating is float else np.float64)
    cdef floating[::1] y = out
    if x.shape[0]:
        if floating is float:
            clstm_tanh_f(x.shape[0], &x[0], &y[0])
        else:
            clstm_tanh_d(x.shape[0], &x[0], &y[0])
    return out


def sigmoid(floating[::1] x):
    """sigmoid as the cell kernels compute it."""
    out = np.empty(x.shape[0], dtype=np.float32 if floating is float else np.float64)
    cdef floating[::1] y = out
    if x.shape[0]:
        if floating is float:
            clstm_sigmoid_f(x.shape[0], &x[0], &y[0])
        else:
            clstm_sigmoid_d(x.shape[0], &x[0], &y[0])
    return out


def cell_forward(floating[:, ::1] gates, floating[:, ::1] c_prev, bias=None):
    """One step: gates (B, 4H) pre-activations (+ bias (4H,)) -> (activated gates, c, h)."""
    cdef Py_ssize_t B = gates.shape[0], H = c_prev.shape[1]
    if gates.shape[1] != 4 * H or c_prev.shape[0] != B:
        raise ValueError("gates must be (B, 4H) and c_prev (B, H)")
    dtype = np.float32 if floating is float else np.float64
    act = np.array(gates, dtype=dtype, copy=True)
    c_out = np.empty((B, H), dtype=dtype)
    h_out = np.empty((B, H), dtype=dtype)
    cdef floating[:, ::1] g = act
    cdef floating[:, ::1] c = c_out
    cdef floating[:, ::1] h = h_out
    cdef floating[::1] b = (np.zeros(4 * H, dtype=dtype) if bias is None
                            else np.ascontiguousarray(bias, dtype=dtype))
    if b.shape[0] != 4 * H:
        raise ValueError("bias must have 4H entries")
    if B and H:
        lstm_cell_forward(0, B, H, &g[0, 0], 4 * H, &b[0], NULL, &c_prev[0, 0], H,
                          &c[0, 0], H, &h[0, 0], H, NULL, NULL, NULL, NULL)
    return act, c_out, h_out


def cell_backward(floating[:, ::1] gates, floating[:, ::1] c_prev,
                  floating[:, ::1] c, floating[:, ::1] grad_h,
                  floating[:, ::1] grad_c):
    """One step backward -> (grad_gates (B, 4H) pre-activation, grad_c_prev)."""
    cdef Py_ssize_t B = gates.shape[0], H = c_prev.shape[1]
    dtype = np.float32 if floating is float else np.float64
    zeros = np.zeros((B, H), dtype=dtype)
    grad_c_prev = np.array(grad_c, dtype=dtype, copy=True)
    grad_gates = np.array(gates, dtype=dtype, copy=True)    # the kernel works in place
    cdef floating[:, ::1] z = zeros
    cdef floating[:, ::1] gc = grad_c_prev
    cdef floating[:, ::1] gg = grad_gates
    if B and H:
        lstm_cell_backward(0, B, H, &gg[0, 0], 4 * H, NULL, &c_prev[0, 0], H,
                           &c[0, 0], H, &grad_h[0, 0], H, &z[0, 0], &gc[0, 0],
                           NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
    return grad_gates, grad_c_prev
