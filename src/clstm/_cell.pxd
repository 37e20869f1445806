# LSTM cell kernels: gate activations and state update, forward and backward.
#
# The loops are C (_cell_kernels.h) so that they can carry restrict and
# runtime CPU dispatch; these fused inline wrappers are what kernels call.

from cython cimport floating

cdef extern from "_cell_kernels.h" nogil:
    void clstm_cell_forward_f(Py_ssize_t n_rows, Py_ssize_t hidden,
                              float* gates, Py_ssize_t ld_gates, const float* bias,
                              const float* c_prev, Py_ssize_t ld_c_prev,
                              float* c, Py_ssize_t ld_c,
                              float* h, Py_ssize_t ld_h)
    void clstm_cell_forward_d(Py_ssize_t n_rows, Py_ssize_t hidden,
                              double* gates, Py_ssize_t ld_gates, const double* bias,
                              const double* c_prev, Py_ssize_t ld_c_prev,
                              double* c, Py_ssize_t ld_c,
                              double* h, Py_ssize_t ld_h)
    void clstm_cell_backward_f(Py_ssize_t n_rows, Py_ssize_t hidden,
                               const float* gates, Py_ssize_t ld_gates,
                               const float* c_prev, Py_ssize_t ld_c_prev,
                               const float* c, Py_ssize_t ld_c,
                               const float* grad_h_out, Py_ssize_t ld_grad_h_out,
                               const float* grad_h_rec, float* grad_c,
                               float* grad_gates, Py_ssize_t ld_grad_gates)
    void clstm_cell_backward_d(Py_ssize_t n_rows, Py_ssize_t hidden,
                               const double* gates, Py_ssize_t ld_gates,
                               const double* c_prev, Py_ssize_t ld_c_prev,
                               const double* c, Py_ssize_t ld_c,
                               const double* grad_h_out, Py_ssize_t ld_grad_h_out,
                               const double* grad_h_rec, double* grad_c,
                               double* grad_gates, Py_ssize_t ld_grad_gates)
    void clstm_tanh_f(Py_ssize_t n, const float* x, float* y)
    void clstm_tanh_d(Py_ssize_t n, const double* x, double* y)
    void clstm_sigmoid_f(Py_ssize_t n, const float* x, float* y)
    void clstm_sigmoid_d(Py_ssize_t n, const double* x, double* y)
    const char* clstm_dispatch_level()


# --- Cell forward -------------------------------------------------------------
cdef inline void lstm_cell_forward(
        Py_ssize_t n_rows, Py_ssize_t hidden_size,
        floating* gates, Py_ssize_t ld_gates, const floating* bias,
        const floating* c_prev, Py_ssize_t ld_c_prev,
        floating* c, Py_ssize_t ld_c,
        floating* h, Py_ssize_t ld_h) noexcept nogil:
    """gates <- act(gates + bias); c = f*c_prev + i*g; h = o*tanh(c), row by row"""
    if floating is float:
        clstm_cell_forward_f(n_rows, hidden_size, gates, ld_gates, bias, c_prev,
                             ld_c_prev, c, ld_c, h, ld_h)
    else:
        clstm_cell_forward_d(n_rows, hidden_size, gates, ld_gates, bias, c_prev,
                             ld_c_prev, c, ld_c, h, ld_h)


# --- Cell backward ------------------------------------------------------------
cdef inline void lstm_cell_backward(
        Py_ssize_t n_rows, Py_ssize_t hidden_size,
        const floating* gates, Py_ssize_t ld_gates,
        const floating* c_prev, Py_ssize_t ld_c_prev,
        const floating* c, Py_ssize_t ld_c,
        const floating* grad_h_out, Py_ssize_t ld_grad_h_out,
        const floating* grad_h_rec, floating* grad_c,
        floating* grad_gates, Py_ssize_t ld_grad_gates) noexcept nogil:
    """(grad_h_out + grad_h_rec, grad_c, c_prev, c, gates) -> (grad_gates, grad_c_prev in grad_c)"""
    if floating is float:
        clstm_cell_backward_f(n_rows, hidden_size, gates, ld_gates, c_prev,
                              ld_c_prev, c, ld_c, grad_h_out, ld_grad_h_out,
                              grad_h_rec, grad_c, grad_gates, ld_grad_gates)
    else:
        clstm_cell_backward_d(n_rows, hidden_size, gates, ld_gates, c_prev,
                              ld_c_prev, c, ld_c, grad_h_out, ld_grad_h_out,
                              grad_h_rec, grad_c, grad_gates, ld_grad_gates)
