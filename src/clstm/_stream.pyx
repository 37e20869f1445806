"""The streaming step: one timestep of a unidirectional network in one C call.

`RecurrentNetwork.step` spends most of a small step in Python (validation,
weight preparation, the scan's dict of arrays). A StepPlan, built once per
network from its parameter arrays, holds one Layer description (_scan.pxd)
per layer pointing at those live arrays; a step checks the inputs' type and
shape in C, allocates the outputs, and runs `scan_forward` with one step per
layer under `nogil`.

Never stale: the plan keeps the parameter arrays it points at and checks,
on every call, that `net.params` still holds those very objects (identity, a
few pointer compares); in-place edits are seen because the kernel reads the
live arrays (nothing is packed or copied; the biases are summed per call).
Anything the fast path does not take (another dtype, a non-contiguous array,
a wrong shape, NaN/inf, replaced parameters) makes `step` return None and the
network runs its general path, which converts, validates and raises.

Thread-safe: the plan is read-only after construction and each call has its
own scratch (malloc'ed per call), so independent streams may share a network.

Why the live weights, not clstm's packed small-GEMM kernel: at batch 1, I=16,
H=64 (2-core AMD EPYC, AVX2 clones, 1 thread) a step's kernel part took 1.7 us
on packed weights against 2.0 us on the live ones with BLAS, but a packed copy
must be checked against the live arrays on every call to see in-place edits,
and comparing 80 KB bytewise (_scan.same_values) costs 2.0 us by itself. On
AVX-512 the products on the live weights run on _row_gemv.h (Zen 5: the
kernel part 1.13 -> 0.77 us against OpenBLAS's sgemv), elsewhere on BLAS.
`_use_packed` keeps the comparison reproducible (benchmarks only).
"""

from cpython.dict cimport PyDict_GetItem
from cpython.ref cimport PyObject
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memset

cimport numpy as cnp
from cython cimport floating

from clstm._cell cimport CLSTM_LN_CELL
from clstm._scan cimport CELL_GRU, CELL_LSTM, Layer, scan_forward

import numpy as np

cnp.import_array()

cdef extern from "time.h" nogil:
    ctypedef long time_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clock_id, timespec* tp)
    int CLOCK_MONOTONIC


# --- Checks ----------------------------------------------------------------------
cdef bint _all_finite_f(const float* v, Py_ssize_t n) noexcept nogil:
    """all(isfinite(v)): no exponent field all ones (integer ops, vectorised)"""
    cdef const uint32_t* bits = <const uint32_t*> v
    cdef uint32_t bad = 0
    cdef Py_ssize_t i
    for i in range(n):
        bad |= ((bits[i] & 0x7f800000u) == 0x7f800000u)
    return bad == 0


cdef bint _all_finite_d(const double* v, Py_ssize_t n) noexcept nogil:
    """all(isfinite(v)) for float64"""
    cdef const uint64_t* bits = <const uint64_t*> v
    cdef uint64_t bad = 0
    cdef Py_ssize_t i
    for i in range(n):
        bad |= ((bits[i] & 0x7ff0000000000000u) == 0x7ff0000000000000u)
    return bad == 0


cdef inline bint _fits(object obj, int typenum, int ndim, Py_ssize_t d0, Py_ssize_t d1,
                       Py_ssize_t d2):
    """obj is a C-contiguous, aligned, native-byte-order ndarray of exactly typenum and
    shape (d0, d1, d2)[:ndim] (a negative d0: any size >= 1)"""
    if not cnp.PyArray_CheckExact(obj):
        return False
    cdef cnp.ndarray a = <cnp.ndarray> obj
    if (cnp.PyArray_TYPE(a) != typenum or cnp.PyArray_NDIM(a) != ndim
            or not cnp.PyArray_IS_C_CONTIGUOUS(a) or not cnp.PyArray_ISALIGNED(a)
            or not cnp.PyArray_ISNOTSWAPPED(a)):
        return False
    if d0 >= 0 and cnp.PyArray_DIM(a, 0) != d0 or d0 < 0 and cnp.PyArray_DIM(a, 0) < 1:
        return False
    if ndim > 1 and cnp.PyArray_DIM(a, 1) != d1:
        return False
    if ndim > 2 and cnp.PyArray_DIM(a, 2) != d2:
        return False
    return True


# --- One step of the stack ---------------------------------------------------------
cdef void _fuse_biases(const Layer* L, const void* b_ih, const void* b_hh,
                       floating* bias) noexcept nogil:
    """bias = b_ih + b_hh (LSTM family); GRU: r, z blocks summed, n block b_in alone
    (b_hn is read by the cell inside r * (W_hn h + b_hn))"""
    cdef const floating* a = <const floating*> b_ih
    cdef const floating* b = <const floating*> b_hh
    cdef Py_ssize_t j, G = L.n_gates, n_sum = G
    if L.kind == CELL_GRU:
        n_sum = 2 * L.hidden
    for j in range(n_sum):
        bias[j] = a[j] + b[j]
    for j in range(n_sum, G):
        bias[j] = a[j]


cdef void _step_layers(const Layer* layers, const void* const* biases, Py_ssize_t n_layers,
                       int B, const floating* x, const floating* h_prev,
                       const floating* c_prev, floating* h_new, floating* c_new,
                       floating* scratch) noexcept nogil:
    """h_new[l], c_new[l] = cell_l(input_l, h_prev[l], c_prev[l]) for each layer l,
    input_0 = x, input_l = h_new[l - 1]: the scan over one step, layer after layer."""
    cdef Layer L
    cdef Py_ssize_t l, G, H, P
    cdef floating* s
    for l in range(n_layers):
        memcpy(&L, &layers[l], sizeof(Layer))
        G, H, P = L.n_gates, L.hidden, L.out_size
        L.batch = B
        L.batch_sizes = &B
        L.x = <void*> (x if l == 0 else h_new + (l - 1) * B * P)
        L.h0 = <void*> (h_prev + l * B * P)
        L.h_seq = <void*> (h_new + l * B * P)
        L.ld_h, L.step_h = P, B * P
        if L.kind == CELL_LSTM:
            L.c0 = <void*> (c_prev + l * B * H)
            L.c_seq = <void*> (c_new + l * B * H)
        # scratch, carved in the order of _scratch_size
        s = scratch
        L.bias = s
        s += G
        _fuse_biases(&L, biases[2 * l], biases[2 * l + 1], <floating*> L.bias)
        L.gates = s
        s += B * G
        if L.separate:
            L.hgates = s
            s += B * G
        if L.weight_hr != NULL:
            L.m_seq = s
            s += B * H
        if L.ln_gates:
            L.ln_x = s
            s += B * G
            L.ln_stats = s
            s += 2 * B
        if L.variant & CLSTM_LN_CELL:
            L.chat = s
            s += B * H
            L.c_stats = s
            s += B
        scan_forward(&L, s)


cdef Py_ssize_t _scratch_size(const Layer* L, Py_ssize_t B) noexcept nogil:
    """Elements of one step's scratch (the same for every layer of a stack)."""
    cdef Py_ssize_t G = L.n_gates, H = L.hidden
    return (G + B * G + (B * G if L.separate else 0) + (B * H if L.weight_hr != NULL else 0)
            + (B * G + 2 * B if L.ln_gates else 0)
            + (B * H + B if L.variant & CLSTM_LN_CELL else 0))


# --- The plan ----------------------------------------------------------------------
cdef class StepPlan:
    """One network's step, prepared: a Layer per layer over the live parameter arrays.

    Built by `RecurrentNetwork._step_plan_for` from the network's parameters
    (a dict name -> array), its per-layer parameter names by kind, the scan
    configuration and each parameter's expected shape. Raises ValueError
    when a parameter is not a C-contiguous array of the network's dtype and
    shape (the network then keeps its general path).
    """
    cdef Layer* layers
    cdef const void** biases      # per layer: b_ih, b_hh data
    cdef Py_ssize_t n_layers, input_size, hidden, out_size, n_states, itemsize
    cdef int typenum
    cdef tuple names               # the parameter names the plan points into ...
    cdef tuple arrays              # ... and the arrays it checked (kept alive here)

    def __cinit__(self):
        self.layers = NULL
        self.biases = NULL

    def __init__(self, params, list layer_names, dict cfg, dict shapes, dtype):
        cdef int typenum = np.dtype(dtype).num
        if typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64:
            raise ValueError("dtype")
        cdef Py_ssize_t n = len(layer_names)
        names, arrays = [], []
        for per_layer in layer_names:
            for name in per_layer.values():
                value = params.get(name)
                shape = shapes[name]
                if not _fits(value, typenum, len(shape), shape[0],
                             shape[1] if len(shape) > 1 else 0, 0):
                    raise ValueError(f"parameter {name!r} is not a C-contiguous "
                                     f"{np.dtype(dtype).name} array of shape {shape}")
                names.append(name)
                arrays.append(value)
        self.names, self.arrays = tuple(names), tuple(arrays)
        self.typenum = typenum
        self.itemsize = np.dtype(dtype).itemsize
        self.n_layers = n
        self.hidden, self.out_size = cfg["hidden"], cfg["out_size"]
        self.n_states = 2 if cfg["kind"] == CELL_LSTM else 1
        self.layers = <Layer*> malloc(n * sizeof(Layer))
        self.biases = <const void**> malloc(2 * n * sizeof(void*))
        if self.layers == NULL or self.biases == NULL:
            raise MemoryError()
        cdef Layer* L
        cdef Py_ssize_t l
        for l in range(n):
            L = &self.layers[l]
            p = {kind: params[name] for kind, name in layer_names[l].items()}
            _describe(L, p, cfg, typenum)
            if l == 0:
                self.input_size = L.input_size
            self.biases[2 * l] = cnp.PyArray_DATA(<cnp.ndarray> p["bias_ih"])
            self.biases[2 * l + 1] = cnp.PyArray_DATA(<cnp.ndarray> p["bias_hh"])

    def __dealloc__(self):
        free(self.layers)
        free(<void*> self.biases)

    def __reduce__(self):
        raise TypeError("a StepPlan points into one network's arrays; it is not pickled "
                        "(the network rebuilds it on its first step)")

    cdef bint current(self, dict params):
        """params still holds, under every name, the array this plan points at"""
        cdef Py_ssize_t i
        cdef PyObject* found
        for i in range(len(self.names)):
            found = PyDict_GetItem(params, self.names[i])
            if found != <PyObject*> self.arrays[i]:
                return False
        return True

    def is_current(self, params):
        """Whether this plan still describes `params` (see `current`)."""
        return type(params) is dict and self.current(<dict> params)

    def step(self, params, x_t, state):
        """``(y_t, state)`` as RecurrentNetwork.step, or None when the fast path
        does not take these arguments (the caller then runs its general path)."""
        if type(params) is not dict or not self.current(<dict> params):
            return None
        cdef int typenum = self.typenum
        if not _fits(x_t, typenum, 2, -1, self.input_size, 0):
            return None
        cdef Py_ssize_t B = cnp.PyArray_DIM(<cnp.ndarray> x_t, 0)
        cdef Py_ssize_t L = self.n_layers, H = self.hidden, P = self.out_size
        cdef const void* h_prev = NULL
        cdef const void* c_prev = NULL
        cdef bint lstm = self.n_states == 2
        cdef cnp.npy_intp dims[3]
        dims[0], dims[1] = L, B
        if state is not None:
            if type(state) is not tuple or len(<tuple> state) != self.n_states:
                return None
            s_h = (<tuple> state)[0]
            if not _fits(s_h, typenum, 3, L, B, P):
                return None
            h_prev = cnp.PyArray_DATA(<cnp.ndarray> s_h)
            if lstm:
                s_c = (<tuple> state)[1]
                if not _fits(s_c, typenum, 3, L, B, H):
                    return None
                c_prev = cnp.PyArray_DATA(<cnp.ndarray> s_c)
        else:
            dims[2] = P
            s_h = cnp.PyArray_ZEROS(3, dims, typenum, 0)
            h_prev = cnp.PyArray_DATA(<cnp.ndarray> s_h)
            if lstm:
                dims[2] = H
                s_c = cnp.PyArray_ZEROS(3, dims, typenum, 0)
                c_prev = cnp.PyArray_DATA(<cnp.ndarray> s_c)
        cdef const void* x = cnp.PyArray_DATA(<cnp.ndarray> x_t)
        cdef bint finite
        cdef Py_ssize_t n_x = B * self.input_size, n_h = L * B * P, n_c = L * B * H
        if typenum == cnp.NPY_FLOAT32:
            finite = (_all_finite_f(<const float*> x, n_x)
                      and _all_finite_f(<const float*> h_prev, n_h)
                      and (not lstm or _all_finite_f(<const float*> c_prev, n_c)))
        else:
            finite = (_all_finite_d(<const double*> x, n_x)
                      and _all_finite_d(<const double*> h_prev, n_h)
                      and (not lstm or _all_finite_d(<const double*> c_prev, n_c)))
        if not finite:
            return None                 # the general path names what is not finite

        dims[2] = P
        h_new = cnp.PyArray_EMPTY(3, dims, typenum, 0)
        y_t = cnp.PyArray_EMPTY(2, &dims[1], typenum, 0)
        c_new = None
        cdef void* c_out = NULL
        if lstm:
            dims[2] = H
            c_new = cnp.PyArray_EMPTY(3, dims, typenum, 0)
            c_out = cnp.PyArray_DATA(<cnp.ndarray> c_new)
        cdef void* h_out = cnp.PyArray_DATA(<cnp.ndarray> h_new)
        cdef void* y = cnp.PyArray_DATA(<cnp.ndarray> y_t)
        cdef void* scratch = malloc(_scratch_size(self.layers, B) * self.itemsize)
        if scratch == NULL:
            raise MemoryError()
        self._run(B, x, h_prev, c_prev, h_out, c_out, scratch)
        free(scratch)
        # y_t is its own array (not a view of the state, which the caller passes back)
        memcpy(y, <char*> h_out + (L - 1) * B * P * self.itemsize, B * P * self.itemsize)
        return y_t, ((h_new, c_new) if lstm else (h_new,))

    cdef void _run(self, Py_ssize_t B, const void* x, const void* h_prev, const void* c_prev,
                   void* h_out, void* c_out, void* scratch) noexcept:
        """The kernel part of a step: every layer, GIL released."""
        cdef int b = <int> B
        with nogil:
            if self.typenum == cnp.NPY_FLOAT32:
                _step_layers(self.layers, self.biases, self.n_layers, b, <const float*> x,
                             <const float*> h_prev, <const float*> c_prev, <float*> h_out,
                             <float*> c_out, <float*> scratch)
            else:
                _step_layers(self.layers, self.biases, self.n_layers, b, <const double*> x,
                             <const double*> h_prev, <const double*> c_prev,
                             <double*> h_out, <double*> c_out, <double*> scratch)


cdef void _describe(Layer* L, dict p, dict cfg, int typenum) except *:
    """The step-invariant part of one layer's Layer (batch, states, buffers: per call)."""
    cdef cnp.ndarray w_ih = p["weight_ih"]
    memset(L, 0, sizeof(Layer))
    L.kind = cfg["kind"]
    L.variant = cfg["variant"]
    L.ln_gates = cfg["ln_gates"]
    L.separate = L.kind == CELL_GRU or L.ln_gates
    L.reverse = False
    L.n_steps = 1
    L.input_size = cnp.PyArray_DIM(w_ih, 1)
    L.hidden, L.out_size, L.n_gates = cfg["hidden"], cfg["out_size"], cfg["n_gates"]
    L.rec_size = L.out_size
    L.weight_ih = cnp.PyArray_DATA(w_ih)
    L.weight_hh = cnp.PyArray_DATA(<cnp.ndarray> p["weight_hh"])
    L.weight_hr = _data_or_null(p.get("weight_hr"))
    L.peephole = _data_or_null(p.get("weight_peephole"))
    L.ln_ih = _data_or_null(p.get("weight_ln_ih"))
    L.ln_hh = _data_or_null(p.get("weight_ln_hh"))
    L.ln_c_w = _data_or_null(p.get("weight_ln_c"))
    L.ln_c_b = _data_or_null(p.get("bias_ln_c"))
    if L.kind == CELL_GRU:       # b_hn: the n block of b_hh
        L.bias_hn = <char*> cnp.PyArray_DATA(<cnp.ndarray> p["bias_hh"]) + (
            2 * L.hidden * cnp.PyArray_ITEMSIZE(<cnp.ndarray> p["bias_hh"]))
    # packed_* stay NULL: the live weights go to _row_gemv.h or BLAS (GEMV)


cdef inline void* _data_or_null(object value):
    return NULL if value is None else cnp.PyArray_DATA(<cnp.ndarray> value)


# --- Measuring the kernel part ---------------------------------------------------------
def _bench_kernel(StepPlan plan, x_t, state, Py_ssize_t n_steps):
    """Seconds per step of the nogil region alone: `n_steps` steps of the
    batch in x_t from `state` (each step's new state feeds the next), timed
    in C around the kernel calls. For benchmarks (benchmarks/bench_step.py)."""
    y_t, new = plan.step({name: a for name, a in zip(plan.names, plan.arrays)}, x_t, state)
    cdef Py_ssize_t B = x_t.shape[0], L = plan.n_layers
    bufs = [np.array(s) for s in new] + [np.array(s) for s in new]
    cdef void* x = cnp.PyArray_DATA(<cnp.ndarray> x_t)
    cdef void* h[2]
    cdef void* c[2]
    h[0], h[1] = cnp.PyArray_DATA(<cnp.ndarray> bufs[0]), NULL
    cdef bint lstm = plan.n_states == 2
    c[0] = c[1] = NULL
    if lstm:
        h[1] = cnp.PyArray_DATA(<cnp.ndarray> bufs[2])
        c[0] = cnp.PyArray_DATA(<cnp.ndarray> bufs[1])
        c[1] = cnp.PyArray_DATA(<cnp.ndarray> bufs[3])
    else:
        h[1] = cnp.PyArray_DATA(<cnp.ndarray> bufs[1])
    cdef void* scratch = malloc(_scratch_size(plan.layers, B) * plan.itemsize)
    cdef timespec t0, t1
    cdef Py_ssize_t i
    clock_gettime(CLOCK_MONOTONIC, &t0)
    for i in range(n_steps):
        plan._run(B, x, h[i % 2], c[i % 2], h[(i + 1) % 2], c[(i + 1) % 2], scratch)
    clock_gettime(CLOCK_MONOTONIC, &t1)
    free(scratch)
    return ((t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec)) / max(n_steps, 1)


def _use_packed(StepPlan plan, list packed):
    """Benchmark only: point the plan's layers at packed float32 weights
    (per layer a dict packed_xh_t / packed_ih_t / packed_hh_t / packed_hr_t,
    kept alive by the caller), to compare the small-GEMM kernel with BLAS."""
    cdef Layer* L
    for l, arrays in enumerate(packed):
        L = &plan.layers[l]
        for key, value in arrays.items():
            if value is None:
                continue
            ptr = <const float*> cnp.PyArray_DATA(<cnp.ndarray> value)
            if key == "packed_xh_t":
                L.packed_xh_t = ptr
            elif key == "packed_ih_t":
                L.packed_ih_t = ptr
            elif key == "packed_hh_t":
                L.packed_hh_t = ptr
            elif key == "packed_hr_t":
                L.packed_hr_t = ptr
