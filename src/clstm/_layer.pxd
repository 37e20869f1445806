# LSTM layer kernels: one direction of one layer over the whole sequence.
#
# Layout (time-major, built by the model): x (T, B, I); gates (T, B, 4H);
# c_seq (T, B, H); h_seq (T, B, ld_h) holding this direction's H columns.
# The batch is sorted by decreasing length, so the rows active at step t are
# the first batch_sizes[t] (PyTorch's packed-sequence layout).
# Kernels own no memory: the caller passes every buffer.

from cython cimport floating


# --- Layer forward ------------------------------------------------------------
cdef void lstm_input_projection(
    Py_ssize_t n_rows, Py_ssize_t input_size, Py_ssize_t hidden_size,
    const floating* x, const floating* weight_ih, const float* packed_ih_t,
    floating* gates) noexcept nogil

cdef void lstm_recurrence_forward(
    Py_ssize_t n_steps, Py_ssize_t batch_size, Py_ssize_t hidden_size,
    const floating* weight_hh, const float* packed_hh_t, const floating* bias,
    const floating* h0, const floating* c0,
    const int* batch_sizes, bint reverse, const floating* recurrent_mask,
    floating* gates, floating* c_seq, floating* h_seq, Py_ssize_t ld_h,
    floating* work, const floating* x, Py_ssize_t input_size,
    const float* packed_xh_t) noexcept nogil

# --- Layer backward -----------------------------------------------------------
cdef void lstm_recurrence_backward(
    Py_ssize_t n_steps, Py_ssize_t batch_size, Py_ssize_t hidden_size,
    const floating* weight_hh, const float* packed_hh, const floating* h0, const floating* c0,
    const int* batch_sizes, bint reverse, const floating* recurrent_mask,
    const floating* gates, const floating* c_seq,
    const floating* h_seq, Py_ssize_t ld_h,
    const floating* grad_h_seq, Py_ssize_t ld_grad_h,
    floating* grad_h, floating* grad_c, floating* grad_gates,
    floating* h_prev_seq, Py_ssize_t ld_hp) noexcept nogil

cdef void lstm_weight_gradients(
    Py_ssize_t n_rows, Py_ssize_t input_size, Py_ssize_t hidden_size,
    const floating* xh, const floating* grad_gates, floating* grad_w,
    floating* grad_weight_ih, floating* grad_weight_hh,
    floating* grad_bias) noexcept nogil

cdef void lstm_input_gradient(
    Py_ssize_t n_rows, Py_ssize_t input_size, Py_ssize_t hidden_size,
    const floating* grad_gates, const floating* weight_ih, const float* packed_ih,
    floating* grad_x, bint accumulate) noexcept nogil
