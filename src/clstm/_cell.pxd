# The cells' elementwise math ("postgemm"): each cell kind's forward and
# backward row kernels, written once in C (_cell_rows.h, over _cell_kernels.h)
# so that they can carry restrict and runtime CPU dispatch. These fused inline
# wrappers are what the scan calls; the s/d choice happens here.

from cython cimport floating

cdef extern from "_cell_kernels.h" nogil:
    int CLSTM_PEEPHOLE
    int CLSTM_COUPLED
    int CLSTM_LN_CELL
    int CLSTM_GATES_UNREAD

    # --- LSTM family (LSTM, peephole, coupled gates, layer-normalised cell) --
    void clstm_lstm_forward_f(int variant, Py_ssize_t n_rows, Py_ssize_t hidden,
                              float* gates, Py_ssize_t ld_gates, const float* bias,
                              const float* peep, const float* c_prev, Py_ssize_t ld_c_prev,
                              float* c, Py_ssize_t ld_c, float* h, Py_ssize_t ld_h,
                              const float* ln_w, const float* ln_b, float* chat, float* rstd)
    void clstm_lstm_forward_d(int variant, Py_ssize_t n_rows, Py_ssize_t hidden,
                              double* gates, Py_ssize_t ld_gates, const double* bias,
                              const double* peep, const double* c_prev, Py_ssize_t ld_c_prev,
                              double* c, Py_ssize_t ld_c, double* h, Py_ssize_t ld_h,
                              const double* ln_w, const double* ln_b, double* chat,
                              double* rstd)
    void clstm_lstm_backward_f(int variant, Py_ssize_t n_rows, Py_ssize_t hidden,
                               float* gates, Py_ssize_t ld_gates, const float* peep,
                               const float* c_prev, Py_ssize_t ld_c_prev,
                               const float* c, Py_ssize_t ld_c,
                               const float* grad_h_out, Py_ssize_t ld_grad_h_out,
                               const float* grad_h_rec, float* grad_c,
                               float* grad_peep, const float* ln_w, const float* ln_b,
                               const float* chat, const float* rstd, float* grad_ln_w,
                               float* grad_ln_b, float* work)
    void clstm_lstm_backward_d(int variant, Py_ssize_t n_rows, Py_ssize_t hidden,
                               double* gates, Py_ssize_t ld_gates, const double* peep,
                               const double* c_prev, Py_ssize_t ld_c_prev,
                               const double* c, Py_ssize_t ld_c,
                               const double* grad_h_out, Py_ssize_t ld_grad_h_out,
                               const double* grad_h_rec, double* grad_c,
                               double* grad_peep, const double* ln_w, const double* ln_b,
                               const double* chat, const double* rstd, double* grad_ln_w,
                               double* grad_ln_b, double* work)

    # --- gate layer norm (layer-normalised LSTM) ------------------------------
    void clstm_ln_gates_forward_f(Py_ssize_t n_rows, Py_ssize_t n, float* ax, float* ah,
                                  float* xhat, const float* w_ih, const float* w_hh,
                                  float* rstd)
    void clstm_ln_gates_forward_d(Py_ssize_t n_rows, Py_ssize_t n, double* ax, double* ah,
                                  double* xhat, const double* w_ih, const double* w_hh,
                                  double* rstd)
    void clstm_ln_gates_backward_f(Py_ssize_t n_rows, Py_ssize_t n, float* grad_x,
                                   float* grad_h, const float* xhat, const float* hhat,
                                   const float* w_ih, const float* w_hh, const float* rstd,
                                   float* grad_bias, float* grad_w_ih, float* grad_w_hh)
    void clstm_ln_gates_backward_d(Py_ssize_t n_rows, Py_ssize_t n, double* grad_x,
                                   double* grad_h, const double* xhat, const double* hhat,
                                   const double* w_ih, const double* w_hh,
                                   const double* rstd, double* grad_bias,
                                   double* grad_w_ih, double* grad_w_hh)

    # --- GRU -------------------------------------------------------------------
    void clstm_gru_forward_f(Py_ssize_t n_rows, Py_ssize_t hidden, float* gx, float* gh,
                             const float* bias, const float* bias_hn, const float* h_prev,
                             Py_ssize_t ld_h_prev, float* h, Py_ssize_t ld_h)
    void clstm_gru_forward_d(Py_ssize_t n_rows, Py_ssize_t hidden, double* gx, double* gh,
                             const double* bias, const double* bias_hn,
                             const double* h_prev, Py_ssize_t ld_h_prev, double* h,
                             Py_ssize_t ld_h)
    void clstm_gru_backward_f(Py_ssize_t n_rows, Py_ssize_t hidden, float* gx,
                              float* gh, const float* h_prev, Py_ssize_t ld_h_prev,
                              const float* grad_h_out, Py_ssize_t ld_grad_h_out,
                              float* grad_h_rec)
    void clstm_gru_backward_d(Py_ssize_t n_rows, Py_ssize_t hidden, double* gx,
                              double* gh, const double* h_prev, Py_ssize_t ld_h_prev,
                              const double* grad_h_out, Py_ssize_t ld_grad_h_out,
                              double* grad_h_rec)

    # --- activations (test twins) ----------------------------------------------
    void clstm_tanh_f(Py_ssize_t n, const float* x, float* y)
    void clstm_tanh_d(Py_ssize_t n, const double* x, double* y)
    void clstm_sigmoid_f(Py_ssize_t n, const float* x, float* y)
    void clstm_sigmoid_d(Py_ssize_t n, const double* x, double* y)
    const char* clstm_dispatch_level()


# --- LSTM family ----------------------------------------------------------------
cdef inline void lstm_cell_forward(
        int variant, Py_ssize_t n_rows, Py_ssize_t hidden_size,
        floating* gates, Py_ssize_t ld_gates, const floating* bias, const floating* peep,
        const floating* c_prev, Py_ssize_t ld_c_prev, floating* c, Py_ssize_t ld_c,
        floating* h, Py_ssize_t ld_h, const floating* ln_w, const floating* ln_b,
        floating* chat, floating* rstd) noexcept nogil:
    """gates <- act(gates + bias (+ peepholes)); c = f*c_prev + i*g; h = o*tanh(c) (or of ln(c))"""
    if floating is float:
        clstm_lstm_forward_f(variant, n_rows, hidden_size, gates, ld_gates, bias, peep,
                             c_prev, ld_c_prev, c, ld_c, h, ld_h, ln_w, ln_b, chat, rstd)
    else:
        clstm_lstm_forward_d(variant, n_rows, hidden_size, gates, ld_gates, bias, peep,
                             c_prev, ld_c_prev, c, ld_c, h, ld_h, ln_w, ln_b, chat, rstd)


cdef inline void lstm_cell_backward(
        int variant, Py_ssize_t n_rows, Py_ssize_t hidden_size,
        floating* gates, Py_ssize_t ld_gates, const floating* peep,
        const floating* c_prev, Py_ssize_t ld_c_prev, const floating* c, Py_ssize_t ld_c,
        const floating* grad_h_out, Py_ssize_t ld_grad_h_out, const floating* grad_h_rec,
        floating* grad_c, floating* grad_peep, const floating* ln_w, const floating* ln_b,
        const floating* chat, const floating* rstd, floating* grad_ln_w,
        floating* grad_ln_b, floating* work) noexcept nogil:
    """(grad_h, grad_c, c_prev, c, gates) -> (gates overwritten by their pre-activation
    gradients, grad_c_prev in grad_c; peephole and cell-norm parameter gradients accumulated)"""
    if floating is float:
        clstm_lstm_backward_f(variant, n_rows, hidden_size, gates, ld_gates, peep, c_prev,
                              ld_c_prev, c, ld_c, grad_h_out, ld_grad_h_out, grad_h_rec,
                              grad_c, grad_peep, ln_w, ln_b, chat, rstd, grad_ln_w,
                              grad_ln_b, work)
    else:
        clstm_lstm_backward_d(variant, n_rows, hidden_size, gates, ld_gates, peep, c_prev,
                              ld_c_prev, c, ld_c, grad_h_out, ld_grad_h_out, grad_h_rec,
                              grad_c, grad_peep, ln_w, ln_b, chat, rstd, grad_ln_w,
                              grad_ln_b, work)


# --- gate layer norm ------------------------------------------------------------------
cdef inline void ln_gates_forward(Py_ssize_t n_rows, Py_ssize_t n, floating* ax,
                                  floating* ah, floating* xhat, const floating* w_ih,
                                  const floating* w_hh, floating* rstd) noexcept nogil:
    """ax <- ln(ax) * w_ih + ln(ah) * w_hh; ah <- ln(ah); xhat <- ln(ax); rstd (n_rows, 2)"""
    if floating is float:
        clstm_ln_gates_forward_f(n_rows, n, ax, ah, xhat, w_ih, w_hh, rstd)
    else:
        clstm_ln_gates_forward_d(n_rows, n, ax, ah, xhat, w_ih, w_hh, rstd)


cdef inline void ln_gates_backward(Py_ssize_t n_rows, Py_ssize_t n, floating* grad_x,
                                   floating* grad_h, const floating* xhat,
                                   const floating* hhat, const floating* w_ih,
                                   const floating* w_hh, const floating* rstd,
                                   floating* grad_bias, floating* grad_w_ih,
                                   floating* grad_w_hh) noexcept nogil:
    """grad_x (in: grad of the combined pre-activation) -> grads of the two products"""
    if floating is float:
        clstm_ln_gates_backward_f(n_rows, n, grad_x, grad_h, xhat, hhat, w_ih, w_hh, rstd,
                                  grad_bias, grad_w_ih, grad_w_hh)
    else:
        clstm_ln_gates_backward_d(n_rows, n, grad_x, grad_h, xhat, hhat, w_ih, w_hh, rstd,
                                  grad_bias, grad_w_ih, grad_w_hh)


# --- GRU -------------------------------------------------------------------------------
cdef inline void gru_cell_forward(Py_ssize_t n_rows, Py_ssize_t hidden_size, floating* gx,
                                  floating* gh, const floating* bias, const floating* bias_hn,
                                  const floating* h_prev, Py_ssize_t ld_h_prev, floating* h,
                                  Py_ssize_t ld_h) noexcept nogil:
    """gx <- (r, z, n); gh_n <- W_hn h + b_hn; h = (1 - z) n + z h_prev"""
    if floating is float:
        clstm_gru_forward_f(n_rows, hidden_size, gx, gh, bias, bias_hn, h_prev, ld_h_prev,
                            h, ld_h)
    else:
        clstm_gru_forward_d(n_rows, hidden_size, gx, gh, bias, bias_hn, h_prev, ld_h_prev,
                            h, ld_h)


cdef inline void gru_cell_backward(Py_ssize_t n_rows, Py_ssize_t hidden_size,
                                   floating* gx, floating* gh,
                                   const floating* h_prev, Py_ssize_t ld_h_prev,
                                   const floating* grad_h_out, Py_ssize_t ld_grad_h_out,
                                   floating* grad_h_rec) noexcept nogil:
    """(grad_h, gates, h_prev) -> (gx, gh overwritten by the gradients of the input and
    recurrent pre-activations, grad_h_rec <- grad_h * z)"""
    if floating is float:
        clstm_gru_backward_f(n_rows, hidden_size, gx, gh, h_prev, ld_h_prev, grad_h_out,
                             ld_grad_h_out, grad_h_rec)
    else:
        clstm_gru_backward_d(n_rows, hidden_size, gx, gh, h_prev, ld_h_prev, grad_h_out,
                             ld_grad_h_out, grad_h_rec)
