# The scan: one direction of one recurrent layer over the whole sequence,
# forward and backward (BPTT), for every cell kind.
#
# Layout (time-major, built by the network): x (T, B, I); gates (T, B, G);
# c_seq (T, B, H); h_seq (T, B, ld_h) holding this direction's columns.
# The batch is sorted by decreasing length, so the rows active at step t are
# the first batch_sizes[t] (PyTorch's packed-sequence layout).
# Kernels own no memory: the caller passes every buffer (in a Layer).

from cython cimport floating

# --- Cell description -----------------------------------------------------------
cdef enum CellKind:
    CELL_LSTM = 0      # LSTM family: states (h, c); variant flags from _cell.pxd
    CELL_GRU = 1       # GRU: state h; its recurrent product is kept apart


cdef struct Layer:
    # what the cell is
    int kind                  # CellKind
    int variant               # LSTM family: CLSTM_PEEPHOLE | CLSTM_COUPLED | CLSTM_LN_CELL
    bint ln_gates             # layer-normalised products (LSTM with layer_norm)
    bint separate             # recurrent product kept apart from the input product
    # sizes: T steps, B rows, I inputs, H cell units, P units of h, G gate units
    Py_ssize_t n_steps, batch, input_size, hidden, out_size, n_gates
    bint reverse
    const int* batch_sizes
    # ConvLSTM (Shi et al. 2015): the two products are 'same' convolutions
    # (stride 1) over maps of map_h x map_w pixels, one pixel a row (rows of a
    # sequence contiguous, batch_sizes multiples of the map size). The input
    # arrives as im2col columns (I = ker_h * ker_w * channels); the scan
    # im2cols h_{t-1} per step and col2ims its gradient.
    bint conv
    Py_ssize_t map_h, map_w, ker_h, ker_w
    Py_ssize_t rec_size       # width of the recurrent product's input: P (conv: ker_h*ker_w*P)
    void* h_cols              # (B, rec_size) conv: im2col of h_{t-1} / its gradient
    # parameters (floating*, typed by the caller's specialisation)
    void* weight_ih           # (G, I)
    void* weight_hh           # (G, rec_size)
    void* weight_hr           # (P, H) projection, or NULL
    void* bias                # (G,) the biases the cell adds (see each cell)
    void* bias_hn             # (H,) GRU: b_hn
    void* peephole            # LSTM peepholes, or NULL
    void* ln_ih               # (G,) layer-norm gains of the two products
    void* ln_hh
    void* ln_c_w              # (H,) layer-norm gain and bias of the cell state
    void* ln_c_b
    # float32 weights packed for the small-GEMM kernel (NULL: use BLAS)
    const float* packed_ih_t  # W_ih^T    (input projection)
    const float* packed_hh_t  # W_hh^T    (recurrent product)
    const float* packed_xh_t  # [W_ih | W_hh]^T (inputs taken in each step's product)
    const float* packed_hr_t  # W_hr^T    (projection)
    const float* packed_ih    # W_ih      (grad_x)
    const float* packed_hh    # W_hh      (grad_h)
    const float* packed_hr    # W_hr      (grad_m)
    # inference only (no backward reads gates): the cell as the epilogue of the
    # step's product, weights packed gate-interleaved (_fused_cell.h); at most one
    const float* fused_xh_t   # [W_ih | W_hh]^T + bias (+ peepholes): inputs in the step
    const float* fused_hh_t   # W_hh^T + bias (+ peepholes): on top of the projection
    # a team that splits each fused step's units across threads (_threads.h's
    # clstm_team), or NULL
    void* team
    # inputs and initial states
    void* x                   # (T, B, I)
    # x_row != 0: x read in place from a batch-first array instead (inference
    # whose steps take the inputs, packed_xh_t: only the steps' products read it): row r
    # of step t at x + t * x_step + r * x_row
    Py_ssize_t x_step, x_row
    void* h0                  # (B, P)
    void* c0                  # (B, H) LSTM family
    void* mask                # (B, P) recurrent dropout on h_{t-1}, or NULL
    # activations written by the forward, read by the backward
    void* gates               # (T, B, G) activated gates
    void* hgates              # (T, B, G) separate recurrent product (GRU: W_hn h + b_hn in
                              # block n; layer norm: the normalised product)
    void* c_seq               # (T, B, H)
    # inference (no backward reads them): gates / c_seq hold two steps, step t
    # in slot t & 1, so they stay in cache (gates: only where each step's one
    # product writes its whole gates, packed_xh_t; c_seq: the LSTM family)
    bint gates_ring
    bint c_ring
    void* m_seq               # (T, B, H) o * tanh(c) before the projection
    void* h_seq               # this direction's P columns: row r of step t at
    Py_ssize_t ld_h           #   t * step_h + r * ld_h: (T, B, ld_h) time-major, or
    Py_ssize_t step_h         #   an inference's top layer: the batch-first output
    void* ln_x                # (T, B, G) normalised input product
    void* ln_stats            # (T, B, 2) inverse deviations of the two products
    void* chat                # (T, B, H) normalised cell state
    void* c_stats             # (T, B) its inverse deviation
    void* work                # (B, P) scratch
    # backward only
    void* grad_h_seq          # gradient reaching h_seq: row r of step t at
    Py_ssize_t ld_grad_h      #   t * step_grad_h + r * ld_grad_h (time-major, or the
    Py_ssize_t step_grad_h    #   top layer's batch-first grad_out read in place)
    void* grad_h              # (B, P) in: reaching h_n; out: reaching h0
    void* grad_c              # (B, H) in: reaching c_n; out: reaching c0
    void* grad_gates          # (T, B, G) = gates: the backward overwrites them
    void* grad_hgates         # (T, B, G) separate recurrent product (GRU: = hgates)
    void* h_prev_seq          # (T, B, P) masked h_{t-1} (recurrent dropout, unless xh)
    void* xh                  # (T, B, I + P) [x_t | masked h_{t-1}], or NULL: thin inputs
    void* grad_w              # (G, I + P) its weight gradient (the two weights' side by side)
    void* grad_hp             # (T, B, P) projection: gradient reaching h_t
    void* grad_m              # (B, H) projection: gradient reaching m_t
    void* cell_work           # (2H,) cell scratch
    void* grad_x              # (T, B, I)
    bint accumulate_grad_x
    void* grad_weight_ih
    void* grad_weight_hh
    void* grad_weight_hr
    void* grad_bias           # (G,) LSTM family: b_ih and b_hh share it; GRU: b_ih
    void* grad_bias_hh        # (G,) GRU
    void* grad_peephole
    void* grad_ln_ih
    void* grad_ln_hh
    void* grad_ln_c_w
    void* grad_ln_c_b


# --- Convolution columns ('same' padding, stride 1; rows are pixels of maps) ---
cdef void image_columns(Py_ssize_t n_maps, Py_ssize_t map_h, Py_ssize_t map_w,
                        Py_ssize_t channels, Py_ssize_t ker_h, Py_ssize_t ker_w,
                        const floating* src, Py_ssize_t ld_src, floating* cols,
                        Py_ssize_t ld_cols) noexcept nogil
cdef void add_image_columns(Py_ssize_t n_maps, Py_ssize_t map_h, Py_ssize_t map_w,
                            Py_ssize_t channels, Py_ssize_t ker_h, Py_ssize_t ker_w,
                            const floating* cols, Py_ssize_t ld_cols, floating* dst,
                            Py_ssize_t ld_dst) noexcept nogil


# --- Scan -----------------------------------------------------------------------
cdef void scan_forward(Layer* L, floating* tag) noexcept nogil
cdef void scan_backward(Layer* L, floating* tag) noexcept nogil
