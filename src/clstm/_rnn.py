"""Recurrent networks: the stack of layers and directions over one scan.

`RecurrentNetwork` owns everything that does not depend on the cell: the
parameters (a dict of numpy arrays with torch's names), validation, the
time-major layout sorted by decreasing length (so the active rows of every
step are a prefix), the split into independent sub-batches for threads,
dropout masks, workspaces, and the calls of the compiled scan (clstm._scan):
one per forward (all sub-batches, layers and directions: forward_network),
one per layer and direction in the backward. A cell kind (clstm.LSTM, clstm.GRU) adds its
parameter shapes and initial values, how its parameters become the scan's
arrays, and the signature of its public forward/backward.
"""

import contextlib
import numbers
import threading
from functools import partial

import numpy as np

from clstm._parallel import (
    MIN_ROWS_PER_THREAD,
    blas_single_threaded,
    fixed_part_count,
    hand_over_blas_limit,
    resolve_n_threads,
    run_parts,
    split_rows,
)
from clstm._validation import (
    as_float_array,
    check_finite,
    check_lengths,
    check_positive_int,
    check_state,
    resolve_dtype,
)

__all__ = ["RecurrentNetwork"]

# float32 recurrent products use clstm's own small-GEMM kernel on weights
# packed once per call (_packed_gemm.h); float64 and compilers without vector
# extensions use BLAS. Tests flip this to compare the two paths.
USE_PACKED_GEMM = None      # None: wherever the build has the kernel

# A sub-batch must carry at least this much work (B*T*H^2, about an eighth
# of the recurrent FLOPs) for a Python thread to pay for its wake-up and
# hand-off (~0.1-0.2 ms): ~0.2 ms of work on one core. ConvLSTM's parts use it.
MIN_WORK_PER_THREAD = 2_500_000
# The same for a training forward's fixed part (_fixed_parts), whose forward
# and backward each run as one compiled call on C threads (~5-25 us a
# hand-off). Below it a batch is one part, whose steps a row team may split
# (_scan's _row_team_size); from it, parts whose backward needs no wait
# between steps and sums each part's weight gradients from its own core's
# cache, where a row team's sums read the other core's rows. Training step
# (B, T, I, H), 2 threads on 2 Zen 5 cores, time of one part / of two:
# (32, 10, 1, 16), work 82K, 0.91; (32, 20, 1, 16), 164K, 1.10; (32, 10, 1,
# 32), 328K, 1.19; ts-small (32, 50, 1, 50), 4.0M, 1.19. On 1 thread two
# parts take 1.01-1.03x the time from 328K on (1.07x at 164K).
FIXED_PART_MIN_WORK = 250_000
# The same for a POSIX thread of the one-call inference forward (B*T*H^2 per
# layer direction, ~0.1 ms on one core): starting and joining one costs
# ~20-45 us (_threads.h).
MIN_WORK_PER_C_THREAD = 1_000_000

# Each step of the LSTM family computes [x_t | h_{t-1}] @ [W_ih | W_hh]^T in
# one product (packed_xh_t) for inputs under MIN_PACKED_INPUT_SIZE features,
# and for wider ones in batches of at least STEPWISE_MIN_BATCH rows; batches
# of fewer rows over wide inputs run the input projection as one GEMM over
# all steps first (small-GEMM kernel), which reads each weight once for all
# T*B rows instead of once a step. Under 32 inputs that whole-sequence GEMM
# is too thin (store-bound). From 4 rows the step's product is no slower,
# and it writes each step's gates where the cell reads them next: inference
# keeps two steps of them (the scan's gate ring), reads X in place and runs
# no T*B x 4H projection through memory. Inference, one / two threads, the
# whole-sequence projection's time / the step's (Zen 5): nlp-large (64, 100,
# 256, 512) 1.03 / 1.04, stacked (32, 100, 16, 128, 2 layers: the second's
# 128 inputs) 1.11 / 1.04, (64, 100, 64, 128) 1.27 / 1.22, (4, 100, 128,
# 128) 1.03 / 1.41, (2, ...) 0.91 / 0.94, batch 1 (200 steps, I = 256, H =
# 64) 0.52 / 0.80; training steps 1.00-1.05 / 0.99-1.14 over the same shapes
# (from 4 rows). Cells whose products are kept apart (GRU, layer norm) keep
# the whole-sequence projection.
MIN_PACKED_INPUT_SIZE = 32
STEPWISE_MIN_BATCH = 4

# ... and batches of one row (HOISTED_ROW_MAX_BATCH) over inputs of
# HOISTED_ROW_INPUT_SIZE to 31 features into a recurrent width of
# HOISTED_ROW_MIN_WIDTH or more run the projection first too (_input_mode):
# a step then reads only W_hh (the stream config's 64 KB, not 80 KB for
# [W_ih | W_hh], where an L1 holds 48). Hoisted time / the step's, one row,
# T = 100 (benchmarks/bench_input_mode.py, Zen 5, 1 thread): training step
# (forward, backward, Adam) I = 16: H = 32 1.02, 64 0.97, 128 0.93; I = 31:
# 1.02, 0.93, 0.91; inference I = 16: 1.03, 0.94, 1.02; I = 31: 1.03, 0.90,
# 0.96. Two threads, T = 200: training 0.97 / 0.91 at I = 16, H = 64 / 128
# (a batch-1 training step runs on one core); the stream config's inference
# ~1.03 (its units team splits the projection too: medians of 71 and 73 us
# over 10 alternating processes), where each thread's half of [W_ih | W_hh]
# fits its L1 anyway. Two rows, or fewer inputs: slower (inference 1.04-1.17).
HOISTED_ROW_INPUT_SIZE = 16
HOISTED_ROW_MIN_WIDTH = 64
HOISTED_ROW_MAX_BATCH = 1

# Weight gradients of the LSTM family: below this input width, [x_t | h_{t-1}]
# is gathered into one buffer (about the size of h_seq) for one GEMM; a GEMM
# of its own for so few input columns would cost a second packing of the gate
# gradients for almost no arithmetic (ts-medium, I=8: +40 % on the weight
# gradients). From it on, two GEMMs read x and h_seq in place (no buffer).
MAX_FUSED_GRADIENT_INPUT = 32

# The forward runs as one call of the compiled scan over every sub-batch,
# layer and direction (C threads); False: the per-layer path with Python
# threads it replaced, kept as the tests' reference.
ONE_CALL_FORWARD = True

# The backward runs as one call too (_scan.BackwardPlan, kept beside the
# forward's plan: every sub-batch, layer and direction, C threads); False:
# one compiled call per layer direction on Python threads, the tests' reference.
ONE_CALL_BACKWARD = True

# Compiled training plans (and the buffers under them) kept per calling
# thread, for this many shapes of batch: a training loop whose last
# mini-batch is smaller (230 samples in batches of 32: 7 of 32, one of 6)
# alternates between two, and rebuilt the forward and backward plans twice an
# epoch with one kept (the forecast fit: 0.185 -> 0.172 s). The least
# recently used goes first. Inference keeps one (a large batch's buffers are
# freed with the next shape).
KEPT_PLANS = 2

# Inference forwards (no cache for a backward) of float32 LSTMs without layer
# norm or projection run the cell as the epilogue of each step's product
# (_fused_cell.h: the gates never reach memory); False: the two passes that
# training forwards always run, kept as the tests' reference.
FUSED_CELL_FORWARD = True

_scan = None


def _kernels():
    """The compiled scan, loaded on first use: it pulls in SciPy's BLAS
    (scipy.linalg, ~0.2 s), which `import clstm` need not pay for."""
    global _scan
    if _scan is None:
        from clstm import _scan as module
        _scan = module
    return _scan


# Whether the scan's NetworkPlan and BackwardPlan hold their threads at one
# BLAS thread themselves (_parallel.hand_over_blas_limit; None: not yet
# asked, which the first plan call that calls BLAS does, not the kernels'
# load: threadpoolctl's look at the libraries costs). Where they do, their
# calls skip blas_single_threaded; False makes every call enter it (tests).
PLANS_LIMIT_BLAS = None
_NO_LIMIT = contextlib.nullcontext()


def _plan_blas_limit(calls_blas=True):
    """The context a plan's call runs in: the Python-level BLAS limit where
    the plan calls BLAS and does not hold the limit itself."""
    global PLANS_LIMIT_BLAS
    if not calls_blas:
        return _NO_LIMIT
    if PLANS_LIMIT_BLAS is None:
        PLANS_LIMIT_BLAS = hand_over_blas_limit(_kernels())
    return _NO_LIMIT if PLANS_LIMIT_BLAS else blas_single_threaded


def _packed(weight, transposed):
    use = _kernels().HAVE_PACKED_GEMM if USE_PACKED_GEMM is None else USE_PACKED_GEMM
    if use and weight is not None and weight.dtype == np.float32:
        return _scan.pack_weight(weight, transposed)
    return None


def param_name(kind, layer, direction):
    """torch's parameter name: ``weight_ih_l0``, ``bias_hh_l1_reverse``, ..."""
    return f"{kind}_l{layer}" + ("_reverse" if direction else "")


def as_numpy(value):
    """numpy view of an array-like, torch tensors included (without importing torch)."""
    if hasattr(value, "detach") and callable(value.detach):
        value = value.detach()
    if hasattr(value, "cpu") and callable(value.cpu):
        value = value.cpu()
    if hasattr(value, "numpy") and callable(value.numpy) and not isinstance(value, np.ndarray):
        value = value.numpy()
    return np.asarray(value)


def _check_dropout(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) \
            or not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a float in [0, 1), got {value!r}")
    return float(value)


class RecurrentNetwork:
    """Base of the recurrent networks (see clstm.LSTM, clstm.GRU).

    Subclasses define the cell: ``state_names``, ``_cell_shapes(layer)`` (the
    parameter kinds of one layer and direction and their shapes),
    ``_scan_arrays(p, backward)`` (the scan's weights from one direction's
    parameters), ``_scan_config()`` (the scan's cell description: kind,
    variant, sizes), ``_gate_count()``, and ``output_size`` when h is not H wide;
    optionally ``_refresh_scan_arrays(arrays, p)`` (update what _scan_arrays
    derived, in place, after the parameters' values changed).
    """

    state_names = ("h",)
    _step_plan = None       # (class default: networks pickled before it existed)

    def __init__(self, input_size, hidden_size, num_layers=1, bidirectional=False,
                 dtype="float32", random_state=None, dropout=0.0,
                 recurrent_dropout=0.0, n_jobs=None):
        self.input_size = check_positive_int(input_size, "input_size")
        self.hidden_size = check_positive_int(hidden_size, "hidden_size")
        self.num_layers = check_positive_int(num_layers, "num_layers")
        if not isinstance(bidirectional, (bool, np.bool_)):
            raise TypeError(f"bidirectional must be a bool, got {bidirectional!r}")
        self.bidirectional = bool(bidirectional)
        self.dtype = resolve_dtype(dtype)
        self.dropout = _check_dropout(dropout, "dropout")
        self.recurrent_dropout = _check_dropout(recurrent_dropout, "recurrent_dropout")
        if n_jobs is not None:
            resolve_n_threads(n_jobs)        # refuse a bad value now, not at forward
        self.n_jobs = n_jobs
        self.training = False
        self._rng = _as_generator(random_state)
        self.params = {}
        self.grads = {}
        self._cache = None
        self._workspace = _Workspace()
        self._plan_cache = None
        self._weights_memo = None
        self._step_plan = None      # the compiled step (built by the first step)

    # -- the cell (subclass hooks) ----------------------------------------------
    @property
    def output_size(self):
        """Units of h per direction (the last axis of ``out`` is D * output_size)."""
        return self.hidden_size

    def _state_sizes(self):
        """Units of each state, in the order of state_names."""
        return {"h": self.output_size, "c": self.hidden_size}

    # -- parameters ---------------------------------------------------------------
    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    def _layer_input_size(self, layer):
        return self.input_size if layer == 0 else self.output_size * self.num_directions

    def _param_shapes(self):
        shapes = {}
        for layer in range(self.num_layers):
            for d in range(self.num_directions):
                for kind, shape in self._cell_shapes(layer).items():
                    shapes[param_name(kind, layer, d)] = shape
        return shapes

    def _init_params(self):
        """torch's initialisation: every parameter uniform on [-1/sqrt(H), 1/sqrt(H)],
        except layer-norm gains (ones) and shifts (zeros)."""
        bound = 1.0 / np.sqrt(self.hidden_size)
        for layer in range(self.num_layers):
            for d in range(self.num_directions):
                for kind, shape in self._cell_shapes(layer).items():
                    if kind.startswith("weight_ln_"):
                        value = np.ones(shape)
                    elif kind.startswith("bias_ln_"):
                        value = np.zeros(shape)
                    else:
                        value = self._rng.uniform(-bound, bound, size=shape)
                    self.params[param_name(kind, layer, d)] = value.astype(self.dtype)

    def _plan(self):
        """What every call needs and the structure fixes: the scan's cell
        configuration and each (layer, direction)'s parameter names by kind
        (computed once; the options cannot change after construction)."""
        if self._plan_cache is None:
            names = [{kind: param_name(kind, layer, d) for kind in self._cell_shapes(layer)}
                     for layer in range(self.num_layers) for d in range(self.num_directions)]
            # the scan's gradient arrays by parameter: ("grad_" + scan name, param name)
            grad_names = [[("grad_" + _SCAN_NAMES.get(kind, kind), name)
                           for kind, name in n.items() if kind not in ("bias_ih", "bias_hh")]
                          for n in names]
            cfg = self._scan_config()
            D = self.num_directions
            self._plan_cache = {"cfg": cfg, "names": names, "grad_names": grad_names,
                                # _scan's gradient targets: grad_names and the two biases
                                "target_names": [g + [("grad_" + kind, n[kind])
                                                      for kind in ("bias_ih", "bias_hh")
                                                      if kind in n]
                                                 for g, n in zip(grad_names, names)],
                                # layer directions in the order the backward runs them
                                "backward_order": [layer * D + d for layer in
                                                   reversed(range(self.num_layers))
                                                   for d in range(D)],
                                "cfg_directions": [dict(cfg, reverse=bool(d), column=d * cfg[
                                    "out_size"]) for d in range(self.num_directions)],
                                "cfg_backward": [dict(cfg, reverse=bool(d), column=d * cfg[
                                    "out_size"], accumulate_grad_x=d > 0)
                                    for d in range(self.num_directions)]}
        return self._plan_cache

    def _direction_params(self, k):
        """Parameters of layer-direction k = layer * D + d, by kind."""
        return {kind: self.params[name] for kind, name in self._plan()["names"][k].items()}

    def state_dict(self):
        """Copies of the parameters, keyed by torch names."""
        return {name: value.copy() for name, value in self.params.items()}

    def load_state_dict(self, state_dict):
        """Load parameters from a mapping of torch names to array-likes.

        Accepts numpy arrays, nested lists or torch tensors (converted
        without importing torch). Strict: every name must be present, none
        extra, each with the exact shape; values must be finite.
        """
        if not hasattr(state_dict, "keys"):
            raise TypeError(f"state_dict must be a mapping, got {type(state_dict).__name__}")
        shapes = self._param_shapes()
        missing = [k for k in shapes if k not in state_dict]
        extra = [k for k in state_dict if k not in shapes]
        if missing or extra:
            raise ValueError(
                f"state_dict does not match this network ({self!r}): missing keys "
                f"{missing}, unexpected keys {extra}")
        new = {}
        for name, shape in shapes.items():
            value = as_float_array(as_numpy(state_dict[name]), self.dtype, name)
            if value.shape != shape:
                raise ValueError(f"state_dict[{name!r}] has shape {value.shape}, expected {shape}")
            check_finite(value, name)
            # a copy: the net must not alias the caller's arrays (or torch's tensors)
            new[name] = np.array(value, order="C", copy=True)
        self.params.update(new)   # only after every entry passed
        self._cache = None
        return self

    # -- modes --------------------------------------------------------------------
    def train(self, mode=True):
        """Training mode: dropout and recurrent dropout apply."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Inference mode: no dropout."""
        return self.train(False)

    # -- generic interface (what models and persistence use) -----------------------
    # `state` is a tuple of (num_layers * D, batch, units) arrays in the order
    # of `state_names`.
    def run(self, X, state=None, lengths=None, *, keep_cache=True):
        """Run over whole sequences with the states as one tuple.

        ``keep_cache=False`` keeps no activations for a backward (and runs in
        whichever mode the network is in): what inference and no-gradient
        passes use; it is safe to call from several threads.
        Returns ``out, state``.
        """
        if keep_cache:
            self._cache = None        # its buffers are about to be reused
        out, states, cache = self._forward(X, state, lengths, self.training, keep_cache)
        if keep_cache:
            self._cache = cache
            self.grads = {}
        return out, states

    def step(self, x_t, state=None):
        """Advance the network by one timestep (streaming inference).

        Parameters
        ----------
        x_t : array-like of shape (batch, input_size)
            The inputs of this step.
        state : tuple of arrays of shape (num_layers, batch, units), optional
            The states returned by the previous call, in the order of
            ``state_names`` (zeros when omitted).

        Returns
        -------
        y_t : ndarray of shape (batch, output_size)
            The top layer's h at this step: ``forward(X)``'s ``out[:, t]``.
        state : tuple of ndarrays
            The new states, to pass to the next call. Nothing is stored on
            the network, so independent streams may share it (also from
            several threads).

        Calling ``step`` over the steps of a sequence equals ``forward`` on
        the whole sequence. Dropout never applies here; a bidirectional
        network cannot step (its reverse direction reads the future).

        Arrays of the network's dtype and exact shapes, C-contiguous (what
        ``step`` returns), take a compiled path (clstm._stream) that costs
        a few microseconds at batch 1; anything else is converted and
        validated first, with the same results and errors.

        Examples
        --------
        >>> import numpy as np, clstm
        >>> net = clstm.LSTM(3, 8, random_state=0)
        >>> X = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
        >>> state = None
        >>> for t in range(5):
        ...     y_t, state = net.step(X[:, t], state)
        >>> out, _ = net.forward(X)
        >>> bool(np.allclose(y_t, out[:, -1], atol=1e-6))
        True
        """
        plan = self._step_plan
        if plan is not None:
            result = plan.step(self.params, x_t, state)
            if result is not None:
                return result
        return self._step_general(x_t, state)

    def _step_general(self, x_t, state):
        """step() for any input: converts and validates (with the clear
        errors), prepares the compiled step and runs it on the converted
        arrays, so every call computes the same way; _step_scan where the
        parameters do not allow a plan."""
        if self.bidirectional:
            raise ValueError("step() needs a unidirectional network: the reverse direction of "
                             "a bidirectional one reads the whole sequence; use forward()")
        x = as_float_array(x_t, self.dtype, "x_t")
        if x.ndim != 2 or x.shape[1] != self.input_size or x.shape[0] == 0:
            raise ValueError(f"x_t must have shape (batch >= 1, input_size={self.input_size}), "
                             f"got {x.shape}")
        check_finite(x, "x_t")
        B, L = x.shape[0], self.num_layers
        if state is None:
            state = (None,) * len(self.state_names)
        if not isinstance(state, (tuple, list)) or len(state) != len(self.state_names):
            raise ValueError(f"state must be a tuple of {len(self.state_names)} arrays "
                             f"{self.state_names} (as returned by step), got {state!r:.80}")
        sizes = self._state_sizes()
        state = [check_state(s, (L, B, sizes[name]), self.dtype, f"state {name!r}")
                 for s, name in zip(state, self.state_names)]
        _kernels()
        self._step_plan = plan = self._new_step_plan()
        if plan is not None:
            result = plan.step(self.params, np.ascontiguousarray(x), tuple(state))
            if result is not None:
                return result
        return self._step_scan(x, state)

    def _step_scan(self, x, state):
        """One step through the scan's general entry point (_scan.forward and
        its dict of arrays), x and the states validated."""
        B, L = x.shape[0], self.num_layers
        weights, _ = self._forward_weights(mode=_input_mode(B))
        cfg = self._plan()["cfg_directions"][0]
        ws = _Buffers()
        inp = np.ascontiguousarray(x[None])                  # (1, B, I): one step
        batch_sizes = np.array([B], dtype=np.intc)
        new = [np.empty_like(s) for s in state]
        for layer in range(L):
            out = np.empty((1, B, self.output_size), dtype=self.dtype)
            arrays = {**weights[layer], **self._new_buffers(ws, layer, 0, 1, B, False),
                      "x": inp, "batch_sizes": batch_sizes, "h0": state[0][layer],
                      "c0": state[1][layer] if len(state) > 1 else None, "mask": None,
                      "h_seq": out, "work": None}
            _scan.forward(arrays, cfg)
            new[0][layer] = out[0]
            if len(new) > 1:
                new[1][layer] = arrays["c_seq"][0]
            inp = out
        return inp[0], tuple(new)

    def _new_step_plan(self):
        """The compiled step over the current parameter arrays (clstm._stream),
        or None where it does not apply (a parameter replaced by an array of
        another dtype, shape or layout: the general path handles those)."""
        from clstm import _stream
        plan = self._step_plan
        if plan is not None and plan.is_current(self.params):
            return plan
        try:
            return _stream.StepPlan(self.params, self._plan()["names"], self._plan()["cfg"],
                                    self._param_shapes(), self.dtype)
        except (TypeError, ValueError):
            return None

    def backward_state(self, grad_out, grad_state=None, grads_into=None, *,
                       retain_cache=False, grad_inputs=True):
        """Backward from the last cached run, the state gradients as one tuple
        (or None). Returns grad_X; parameter gradients go to :attr:`grads`.
        ``grad_out`` None: no gradient reaches the outputs (a loss on the
        final states only), without an array of zeros to build and check.
        ``grads_into`` (name -> array of the parameter's shape and dtype): the
        parameter gradients are added to these arrays (the caller zeroes
        them) instead of new ones, and :attr:`grads` holds them.

        A backward overwrites the gate activations the forward saved with their
        gradients (no second buffer of that size), so it may run once per
        forward; ``retain_cache=True`` works on a copy instead and leaves the
        cache for another backward (as torch's ``retain_graph``).
        ``grad_inputs=False``: the gradients of X and of the initial states
        are not assembled (for a caller that discards them; returns None and
        :attr:`grads` holds the parameters' only).

        >>> import numpy as np, clstm
        >>> net = clstm.LSTM(2, 3, random_state=0)
        >>> out, state = net.run(np.ones((4, 5, 2), np.float32))
        >>> into = {k: np.zeros_like(v) for k, v in net.params.items()}
        >>> _ = net.backward_state(np.ones_like(out), grads_into=into)
        >>> net.grads["weight_hh_l0"] is into["weight_hh_l0"]
        True
        """
        if grads_into is None:      # (a subclass's _backward may not take it: ConvLSTM)
            return self._backward(grad_out, grad_state, retain_cache=retain_cache,
                                  grad_inputs=grad_inputs)
        return self._backward(grad_out, grad_state, grads_into, retain_cache=retain_cache,
                              grad_inputs=grad_inputs)

    def clear_cache(self):
        """Drop the activations kept for backward (frees their memory)."""
        self._cache = None
        self.grads = {}

    def get_config(self):
        """Constructor arguments: ``type(net)(**net.get_config())`` builds the same network."""
        return {"input_size": self.input_size, "hidden_size": self.hidden_size,
                "num_layers": self.num_layers, "bidirectional": self.bidirectional,
                "dtype": np.dtype(self.dtype).name, "dropout": self.dropout,
                "recurrent_dropout": self.recurrent_dropout, "n_jobs": self.n_jobs}

    @property
    def rng_state(self):
        """State of the generator that draws dropout masks (settable, for resuming)."""
        return self._rng.bit_generator.state

    @rng_state.setter
    def rng_state(self, value):
        self._rng.bit_generator.state = value

    # -- forward --------------------------------------------------------------------
    def _validate_input(self, X, state, lengths):
        X = as_float_array(X, self.dtype, "X")
        if X.ndim != 3:
            raise ValueError(
                f"X must be 3-D (batch, T, input_size={self.input_size}), got "
                f"{X.ndim}-D array of shape {X.shape}")
        B, T, n_features = X.shape
        if n_features != self.input_size:
            raise ValueError(f"X has {n_features} features per step, this network expects "
                             f"input_size={self.input_size}")
        if B == 0 or T == 0:
            raise ValueError(f"X must have at least one sequence and one step, got shape {X.shape}")
        lengths = check_lengths(lengths, B, T)
        if state is None:       # (None stays None: zeros, written straight into the scan's buffers)
            return X, (None,) * len(self.state_names), lengths
        if len(state) != len(self.state_names):
            raise ValueError(f"state must be a tuple of {len(self.state_names)} arrays "
                             f"{self.state_names}, got {len(state)}")
        n_states = self.num_layers * self.num_directions
        sizes = self._state_sizes()
        # (None stays None: zeros, written straight into the scan's buffers)
        state = tuple(None if s is None else
                      check_state(s, (n_states, B, sizes[name]), self.dtype, f"{name}0")
                      for s, name in zip(state, self.state_names))
        return X, state, lengths

    def _forward(self, X, state, lengths, training, keep_cache=True):
        X, state, lengths = self._validate_input(X, state, lengths)
        B, T, _ = X.shape
        if lengths is None:
            order, sorted_lengths, full_chunks = self._full_length_order(B, T)
        else:
            # Sort by decreasing length (stable): the rows active at step t are
            # then the first batch_sizes[t], so each step is one contiguous GEMM.
            order = np.argsort(-lengths, kind="stable")
            sorted_lengths = lengths[order]
        # Dropout masks for the whole batch, drawn before any split so the
        # result does not depend on the number of threads.
        masks = self._draw_masks(T, B) if training else None

        # Independent sub-batches of contiguous (sorted) rows, taken in turn by
        # the threads: each runs every layer on its rows, so a call
        # synchronises once. With a cache (a backward may follow) the split is
        # fixed by the shape, so the gradients do not depend on n_jobs.
        _kernels()
        n_threads = resolve_n_threads(self.n_jobs, B)
        n_scans = self.num_layers * self.num_directions
        n_parts = (_fixed_parts(B, T, self.hidden_size) if keep_cache
                   else _useful_threads(n_threads, B, T, self.hidden_size, n_scans))
        if lengths is None:      # (the same split, kept: split_rows costs ~7 us)
            chunks = full_chunks.get(n_parts)
            if chunks is None:
                chunks = full_chunks[n_parts] = tuple(split_rows(B, n_parts,
                                                                 weights=sorted_lengths))
        else:
            chunks = split_rows(B, n_parts, weights=sorted_lengths)
        # one sub-batch: the threads split each step instead (NetworkPlan.run's
        # team, where the step is worth it): by units for few rows (batch 1,
        # inference), by rows for a training forward's one fixed part
        team = 1
        if n_parts == 1 and (keep_cache or B <= _scan.fused_cell_max_rows()):
            team = resolve_n_threads(self.n_jobs)
        # the fused cell runs steps of few rows (_scan.fused_cell_max_rows):
        # pack its weights only where some sub-batch has such steps
        fused_cell = not keep_cache and (lengths is not None or min(
            b1 - b0 for b0, b1 in chunks) <= _scan.fused_cell_max_rows())
        weights, values = self._forward_weights(fused_cell=fused_cell,
                                                mode=_input_mode(B))
        # Training forwards reuse the buffers their cache points to (replaced
        # anyway); inference forwards have their own, so they never disturb a
        # pending backward. Both are per calling thread: concurrent calls never share.
        ws = self._workspace if keep_cache else self._inference_workspace()
        run = self._run_one_call if ONE_CALL_FORWARD else self._run_per_layer
        parts, out, finals = run(X, state, lengths, order, sorted_lengths, masks, chunks,
                                 n_threads, weights, ws, team=team)
        if lengths is None:
            inverse = order
        else:
            inverse = np.argsort(order)
        cache = None
        if keep_cache:
            cache = {"parts": parts, "chunks": chunks, "order": order, "inverse": inverse,
                     "shape": (B, T), "params": dict(self.params), "values": values}
        return out, tuple(finals), cache

    def _full_length_order(self, B, T):
        """(order, sorted lengths, splits) of B sequences of T steps: arange(B)
        and T per row, read-only, and a dict for their split_rows by part count,
        kept for the last shape (a training loop's every batch)."""
        kept = self.__dict__.get("_full_order")
        if kept is None or kept[0] != (B, T):
            order, lengths = np.arange(B), np.full(B, T)
            order.flags.writeable = lengths.flags.writeable = False
            kept = self._full_order = ((B, T), order, lengths, {})
        return kept[1:]

    def _inference_workspace(self):
        ws = self.__dict__.get("_inference_ws")
        if ws is None:
            ws = self._inference_ws = _Workspace()
        return ws

    def _run_one_call(self, X, state, lengths, order, sorted_lengths, masks, chunks,
                      n_threads, weights, ws, team=1):
        """Every sub-batch through every layer direction in one call of the
        compiled scan (_scan.NetworkPlan: C threads, no GIL in between), which
        also writes ``out`` and the final states in the caller's row order;
        n_threads threads take the sub-batches in turn; a single sub-batch
        may split its steps across ``team`` threads instead.

        The plan (parsed buffers and weights) is kept per shape (the last
        KEPT_PLANS shapes) and reused while the weights stay the same: a call
        then only copies its inputs into the plan's buffers. Returns the
        sub-batches' caches, out, finals.
        """
        B, T, _ = X.shape
        D, L = self.num_directions, self.num_layers
        sizes = self._state_sizes()
        ragged = lengths is not None
        if not ragged:
            check_finite(X, "X")        # (ragged: within the lengths, below)
        n_steps = (tuple(int(sorted_lengths[b0]) for b0, _ in chunks) if ragged
                   else (T,) * len(chunks))
        key = (X.dtype, B, T, tuple(chunks), n_steps, ragged)
        plans = ws.chunk(0).sets.setdefault("network_plans", {})
        entry = plans.pop(key, None)
        if masks is not None or entry is None or entry[1] is not weights:
            # (whether a product calls BLAS: fixed while the weight arrays are the same)
            entry = (key, weights) + self._network_plan(X, chunks, n_steps, ragged, masks,
                                                        weights, ws) + (
                any(map(_calls_blas, weights)),)
        if masks is None:
            # (inference keeps one: a large batch's buffers go with the next shape)
            while len(plans) >= (KEPT_PLANS if ws is self._workspace else 1):
                del plans[next(iter(plans))]       # the least recently used
            plans[key] = entry
        else:           # a plan holds this call's masks: reuse only those without
            plans.clear()
        plan, parts, inputs, reads_x, calls_blas = entry[2:]
        # (an inference whose steps take the inputs reads X where it is: no time-major copy)
        x_in_place = X if reads_x and X.flags.c_contiguous else None

        for (b0, b1), n, (x, states, lens, rows, batch_sizes, outs) in zip(
                chunks, n_steps, inputs):
            if ragged:
                idx = order[b0:b1]
                rows[:] = idx
                lens[:] = sorted_lengths[b0:b1]
                np.sum(lens[None, :] > np.arange(n)[:, None], axis=1, out=batch_sizes)
                np.copyto(x, X[idx, :n].transpose(1, 0, 2))
                x[np.arange(n)[:, None] >= lens[None, :]] = 0.0   # padding never reaches a GEMM
                check_finite(x, "X")                # (values past a length may be anything)
                for h in outs:
                    h.fill(0.0)                  # rows past their length stay zero
            elif x_in_place is None:
                np.copyto(x, X[b0:b1].transpose(1, 0, 2))
            for buf, s in zip(states, state):
                if s is None:                    # (zeros: _validate_input left it None)
                    buf.fill(0.0)
                elif ragged:
                    np.take(s, idx, axis=1, out=buf)
                else:
                    np.copyto(buf, s[:, b0:b1])
        # an inference's top layer writes out itself: no backward reads its
        # time-major h, and copying that to out cost 2.5 % of ts-small's call
        in_place = not ragged and ws is not self._workspace
        shape = (B, T, D * self.output_size)
        if ragged:
            out = np.zeros(shape, dtype=self.dtype)
        elif in_place and team > 1:
            # (a units team's members write neighbouring columns of each row:
            # on one cache line only where the row starts on one)
            out = _scan.aligned_empty(shape, self.dtype)
        else:
            out = np.empty(shape, dtype=self.dtype)
        finals = [np.empty((L * D, B, sizes[name]), dtype=self.dtype)
                  for name in self.state_names]
        # (no Python-level BLAS limit where every product is on the small-GEMM
        # kernel, or where the plan holds the limit itself: _plan_blas_limit)
        with _plan_blas_limit(calls_blas):
            plan.run(out, finals, n_threads, team, x_in_place, in_place)
        return parts, out, finals

    def _network_plan(self, X, chunks, n_steps, ragged, masks, weights, ws):
        """A NetworkPlan over buffers of the workspace, the sub-batches'
        caches (laid out as the backward reads them), per sub-batch the
        buffers each call fills: (x, states, lengths, rows, batch_sizes, outs),
        and whether the plan may read a full-length X in place (NetworkPlan.run's
        x: an inference whose first layer takes X in its steps' products alone)."""
        _, T, I = X.shape
        D, L, dt = self.num_directions, self.num_layers, self.dtype
        sizes = self._state_sizes()
        # inference (no backward reads its activations): gates and c in two step slots
        ring = ws is not self._workspace
        reads_x = ring and not ragged and all(map(_stepwise_inputs, weights[:D]))
        parts, specs, inputs = [], [], []
        for k, ((b0, b1), n) in enumerate(zip(chunks, n_steps)):
            buffers, b = ws.chunk(k), b1 - b0
            x = buffers.get(("x",), (n, b, I), dt)
            states = [buffers.get(("state", name), (L * D, b, sizes[name]), dt)
                      for name in self.state_names]
            # the full-length layout: kept for the plan's life, or ragged: each
            # call's (the plan's own arrays: kept plans of other shapes must
            # not share them, as they would a workspace buffer of one shape)
            lens = np.full(b, n, np.intp)
            rows = np.arange(b0, b1, dtype=np.intp)
            batch_sizes = np.full(n, b, np.intc)
            sub_masks = None if masks is None else _slice_masks(masks, b0, b1, n)
            part, stages = self._batch_plan(x, states, batch_sizes, sub_masks, weights, buffers,
                                            ring)
            parts.append(part)
            specs.append({"stages": stages, "lengths": lens, "rows": rows,
                          "top": part["layers"][-1]["out"]})
            inputs.append((x, states, lens, rows, batch_sizes,
                           [layer["out"] for layer in part["layers"]]))
        return _kernels().NetworkPlan(specs), parts, inputs, reads_x

    def _batch_plan(self, x, state, batch_sizes, masks, weights, ws, ring=False):
        """One sub-batch's stages (x (T, b, I) time-major, rows sorted by
        decreasing length) and its cache, laid out as the backward reads it
        (``ring``: an inference's, which no backward reads: _direction_arrays)."""
        T, B, _ = x.shape
        P, D = self.output_size, self.num_directions
        cfg_fwd = self._plan()["cfg_directions"]
        layers, stages, inp = [], [], x
        for layer in range(self.num_layers):
            input_mask, rec_masks = masks[layer] if masks is not None else (None, [None] * D)
            drop = None
            if input_mask is not None:        # the scan computes inp * input_mask
                dropped = ws.get(("dropped", layer), inp.shape, self.dtype)
                drop, inp = (inp, input_mask, dropped), dropped
            out = ws.get(("out", layer), (T, B, D * P), self.dtype)
            directions = []
            for d in range(D):
                arrays = self._direction_arrays(ws, weights, layer, d, inp, batch_sizes,
                                                state, rec_masks[d], out, ring)
                stages.append((arrays, cfg_fwd[d], None if d else drop))
                directions.append(arrays)
            layers.append({"input": inp, "input_mask": input_mask, "out": out,
                           "directions": directions})
            inp = out
        return {"layers": layers, "state": state, "batch_sizes": batch_sizes}, stages

    def _run_per_layer(self, X, state, lengths, order, sorted_lengths, masks, chunks,
                       n_threads, weights, ws, team=1):
        """The reference path: one compiled call per layer direction, Python
        threads per sub-batch (what _run_one_call replaces; tests compare the
        two). `team` is unused: each step runs on one thread."""
        B, T, _ = X.shape
        P, D, L = self.output_size, self.num_directions, self.num_layers
        if lengths is None:
            x = np.array(X.transpose(1, 0, 2), order="C")   # a copy, also at B == 1
        else:
            x = np.ascontiguousarray(X[order].transpose(1, 0, 2))
            padding = np.arange(T)[:, None] >= sorted_lengths[None, :]      # (T, B)
            x[padding] = 0.0          # padding never reaches a GEMM
        check_finite(x, "X")
        # copies (fancy indexing): the backward never sees later changes the
        # caller makes to its initial states
        sizes = self._state_sizes()
        state = tuple(np.zeros((L * D, B, sizes[name]), self.dtype) if s is None
                      else np.ascontiguousarray(s[:, order])
                      for s, name in zip(state, self.state_names))
        parts = [None] * len(chunks)

        def run(k):
            b0, b1 = chunks[k]
            n_steps = int(sorted_lengths[b0])                  # longest in the chunk
            sub_masks = None if masks is None else _slice_masks(masks, b0, b1, n_steps)
            parts[k] = self._forward_batch(
                np.ascontiguousarray(x[:n_steps, b0:b1]), [s[:, b0:b1] for s in state],
                sorted_lengths[b0:b1], sub_masks, weights, ws.chunk(k))

        with blas_single_threaded:
            run_parts(n_threads, [partial(run, k) for k in range(len(chunks))])

        out = np.zeros((B, T, D * P), dtype=self.dtype)           # sorted order
        sizes = self._state_sizes()
        finals = [np.empty((L * D, B, sizes[name]), dtype=self.dtype)
                  for name in self.state_names]
        for (b0, b1), part in zip(chunks, parts):
            out_k = part["layers"][-1]["out"]
            out[b0:b1, :out_k.shape[0]] = out_k.transpose(1, 0, 2)
            for final, part_final in zip(finals, part["finals"]):
                final[:, b0:b1] = part_final
        if not np.array_equal(order, np.arange(B)):
            inverse = np.argsort(order)
            out = out[inverse]
            finals = [f[:, inverse] for f in finals]
        return parts, out, finals

    def _forward_weights(self, fused_cell=False, mode=(False, False)):
        """Per (layer, direction): the scan's weight arrays, including the
        packed forms the small-GEMM kernel reads (packed once per call, not
        per chunk), and a copy of the parameter values they were made from.
        ``mode``: as a batch in that input mode reads them (_input_mode,
        input_mode_weights). ``fused_cell`` (inference forwards only):
        with the fused cell's weights where it applies (fused_cell_weights),
        a list of its own.

        Kept while the parameters hold the same values (compared bytewise),
        so repeated inference calls pack nothing. When only their values
        changed (an optimizer step: the same arrays, updated in place), the
        new packs are copied into the kept arrays, so the lists stay the same
        objects and the compiled plans built over them (_run_one_call) stay
        valid: a training loop rebuilds no plan.
        """
        params, memo = self.params, self._weights_memo
        if memo is not None and _same_values(memo[0], params):
            values, weights = memo[0], memo[1]
        else:
            values = {k: v.copy() for k, v in params.items()}
            kept = self._kept_weights(memo, backward=False)
            if memo is not None and kept[0] is memo[1]:
                self._fused_fresh = {}         # (the fused packs: refreshed on use)
            weights = kept[0]
            self._weights_memo = (values, *kept)
        views = self.__dict__.get("_input_views")
        if views is None or views[0] is not weights:
            views = self._input_views = (weights, {})
        view = views[1].get(mode)
        if view is None:
            view = views[1][mode] = input_mode_weights(weights, mode)
        if not (fused_cell and FUSED_CELL_FORWARD):
            return view, values
        # (per input mode: its fused packs, and whether they are fresh)
        memos = self.__dict__.setdefault("_fused_memo", {})
        fresh = self.__dict__.setdefault("_fused_fresh", {})
        fused = memos.get(mode)
        if fused is None or fused[0] is not view or not fresh.get(mode):
            new = fused_cell_weights(view, self._plan()["cfg"])
            if not (fused is not None and fused[0] is view and _copy_into(fused[1], new)):
                fused = memos[mode] = (view, new)
            fresh[mode] = True
        return fused[1], values

    def _draw_masks(self, T, B):
        """Dropout masks in a fixed order: per layer, the input mask (layers
        after the first), then one recurrent mask per direction; None where
        no dropout applies (training then reuses the compiled plan as
        inference does: a plan holds its call's masks)."""
        if self.recurrent_dropout == 0 and (self.dropout == 0 or self.num_layers == 1):
            return None
        P, D = self.output_size, self.num_directions
        masks = []
        for layer in range(self.num_layers):
            input_mask = None
            if layer > 0 and self.dropout > 0:
                input_mask = self._dropout_mask((T, B, D * P), self.dropout)
            rec = [self._dropout_mask((B, P), self.recurrent_dropout)
                   if self.recurrent_dropout > 0 else None for _ in range(D)]
            masks.append((input_mask, rec))
        if all(m is None and all(r is None for r in rec) for m, rec in masks):
            return None
        return masks

    def _buffers(self, ws, layer, d, T, B, backward, rings=(False, False)):
        """The scan's activation (and, for backward, gradient) buffers of one
        layer direction, by the Layer field names of _scan.pxd (the same dict
        again while T and B stay the same: a training loop pays nothing here).
        One set per layer direction: a new shape replaces it, so a workspace
        that sees many shapes (ragged batches) keeps the memory of one, and
        of the KEPT_PLANS - 1 other plans kept over earlier sets."""
        key = ("buffers", backward, layer, d, rings)
        found = ws.sets.get(key)
        if found is None or found[0] != (T, B):
            found = ws.sets[key] = ((T, B), self._new_buffers(ws, layer, d, T, B, backward,
                                                              rings))
        return found[1]

    def _new_buffers(self, ws, layer, d, T, B, backward, rings=(False, False)):
        H, P, dt = self.hidden_size, self.output_size, self.dtype
        cfg = self._plan()["cfg"]
        G = cfg["n_gates"]
        ln_gates, ln_cell = cfg["ln_gates"], bool(cfg["variant"] & _scan.LN_CELL)
        proj = P != H
        lstm = "c" in self.state_names
        if not backward:
            # (rings: gates, c_seq of two steps, see _direction_arrays)
            key = ("fwd", layer, d, rings)
            shapes = {"gates": (min(T, 2) if rings[0] else T, B, G),
                      "hgates": (T, B, G) if ln_gates or not lstm else None,
                      "c_seq": (min(T, 2) if rings[1] else T, B, H) if lstm else None,
                      "m_seq": (T, B, H) if proj else None,
                      "ln_x": (T, B, G) if ln_gates else None,
                      "ln_stats": (T, B, 2) if ln_gates else None,
                      "chat": (T, B, H) if ln_cell else None,
                      "c_stats": (T, B) if ln_cell else None}
        else:
            # (the gate gradients overwrite the saved gates: no buffer of their own)
            key = ("bwd", layer > 0, d)     # layers after the first share widths
            n_in = self._layer_input_size(layer)
            fused = lstm and not ln_gates and n_in < MAX_FUSED_GRADIENT_INPUT
            shapes = {"grad_hgates": (T, B, G) if ln_gates else None,
                      "xh": (T, B, n_in + P) if fused else None,
                      "grad_w": (G, n_in + P) if fused else None,
                      "grad_hp": (T, B, P) if proj else None,
                      "grad_m": (B, H) if proj else None,
                      "cell_work": (2 * H,),
                      "work": (B, P)}
        return {name: None if shape is None else ws.get(key + (name,), shape, dt)
                for name, shape in shapes.items()}

    def _forward_batch(self, x, state, lengths, masks, weights, ws):
        """All layers over one sub-batch, single-threaded: x (T, b, I)
        time-major with rows sorted by decreasing length; returns its cache."""
        T, B, _ = x.shape
        P, D = self.output_size, self.num_directions
        batch_sizes = (lengths[None, :] > np.arange(T)[:, None]).sum(axis=1).astype(np.intc)
        padded = bool(batch_sizes[-1] < B)
        state = [np.ascontiguousarray(s) for s in state]
        sizes = self._state_sizes()
        finals = [np.empty((self.num_layers * D, B, sizes[name]), dtype=self.dtype)
                  for name in self.state_names]
        rows, last = np.arange(B), lengths - 1
        cfg_fwd = self._plan()["cfg_directions"]
        layers, inp = [], x
        for layer in range(self.num_layers):
            input_mask, rec_masks = masks[layer] if masks is not None else (None, [None] * D)
            if input_mask is not None:
                inp = inp * input_mask
            out = ws.get(("out", layer), (T, B, D * P), self.dtype, zero=padded)
            directions = []
            for d in range(D):
                k = layer * D + d
                arrays = self._direction_arrays(ws, weights, layer, d, inp, batch_sizes,
                                                state, rec_masks[d], out)
                _scan.forward(arrays, cfg_fwd[d])
                final = np.zeros_like(last) if d else last
                finals[0][k] = out[final, rows, d * P:(d + 1) * P]
                if len(finals) > 1:
                    finals[1][k] = arrays["c_seq"][final, rows]
                directions.append(arrays)
            layers.append({"input": inp, "input_mask": input_mask, "out": out,
                           "directions": directions})
            inp = out
        return {"layers": layers, "finals": finals, "state": state,
                "batch_sizes": batch_sizes}

    def _direction_arrays(self, ws, weights, layer, d, inp, batch_sizes, state, mask, out,
                          ring=False):
        """The scan's arrays of one layer direction's forward over a sub-batch:
        inp (T, b, n_in) time-major, out (T, b, D*P) its output buffer.
        ``ring`` (a forward no backward reads): the cell states, and the gates
        where each step's one product writes them all (packed_xh_t), held for
        two steps, not T (the scan's _c_row, _gate_row): a step's writes then
        stay in cache instead of streaming T steps of buffers to memory."""
        T, B = inp.shape[:2]
        k = layer * self.num_directions + d
        work = None if mask is None else ws.get(("work", layer, d), (B, self.output_size),
                                                  self.dtype)
        rings = (ring and _stepwise_inputs(weights[k]), ring)
        return {**weights[k], **self._buffers(ws, layer, d, T, B, False, rings),
                "x": inp, "batch_sizes": batch_sizes, "h0": state[0][k],
                "c0": state[1][k] if len(state) > 1 else None, "mask": mask,
                "h_seq": out, "work": work}

    def _dropout_mask(self, shape, p):
        keep = self._rng.random(shape) >= p
        return (keep / (1.0 - p)).astype(self.dtype)

    # -- backward -------------------------------------------------------------------
    def _checked_cache(self):
        """The last forward's cache, if the parameters are still those it ran with."""
        cache = self._cache
        if cache is None:
            raise RuntimeError("backward() needs a preceding forward() (the parameters "
                               "changed or no forward was run)")
        if cache.get("consumed"):
            raise RuntimeError("backward() was already run for this forward(): the gate "
                               "activations it saved were overwritten by their gradients "
                               "(to save memory); run forward() again before another backward()")
        if not _same_objects(cache["params"], self.params):
            raise RuntimeError("the parameters were replaced since forward(); run forward() again")
        if not _same_values(cache["values"], self.params):
            raise RuntimeError("the parameters were modified in place since forward(); "
                               "the saved activations no longer match them: run forward() again")
        return cache

    def _backward(self, grad_out, grad_state, grads_into=None, retain_cache=False,
                  grad_inputs=True):
        cache = self._checked_cache()
        B, T = cache["shape"]
        P, D, L = self.output_size, self.num_directions, self.num_layers
        order = cache["order"]
        if grad_out is None:
            # (calloc'd: untouched pages cost nothing, and the kernels only read it)
            grad_out = np.zeros((B, T, D * P), dtype=self.dtype)
        else:
            grad_out = as_float_array(grad_out, self.dtype, "grad_out")
            if grad_out.shape != (B, T, D * P):
                raise ValueError(f"grad_out has shape {grad_out.shape}, "
                                 f"expected {(B, T, D * P)}")
            check_finite(grad_out, "grad_out")
            if cache["inverse"] is not order:      # sorted by length: reorder
                grad_out = grad_out[order]
        if grad_state is None:
            grad_state = (None,) * len(self.state_names)
        if len(grad_state) != len(self.state_names):
            raise ValueError(f"the state gradient must be a tuple of {len(self.state_names)} "
                             f"arrays {self.state_names}, got {len(grad_state)}")
        sizes = self._state_sizes()
        # (None: zeros, written straight into the backward's buffers; rows
        # reordered only where the forward sorted them by length)
        grad_state = [None if g is None else
                      _sorted_rows(check_state(g, (L * D, B, sizes[name]), self.dtype,
                                               f"grad_{name}_n"), order, cache)
                      for g, name in zip(grad_state, self.state_names)]
        grad_out = np.ascontiguousarray(grad_out)  # the top layer reads it batch-first
        if grads_into is not None:
            self._check_grads_into(grads_into)
        weights = self._backward_weights(cache["values"])
        chunks = cache["chunks"]
        n_threads = resolve_n_threads(self.n_jobs, B)
        # one part: the threads split each step's rows instead (_scan.backward)
        team = n_threads if len(chunks) == 1 else 1
        # the kernels overwrite the saved gates with their gradients: from here
        # on this forward's activations serve no other backward
        cache["consumed"] = not retain_cache
        if ONE_CALL_BACKWARD and not retain_cache:
            with _plan_blas_limit():
                results = self._backward_one_call(cache, grad_out, grad_state, weights,
                                                  grads_into, n_threads, team, grad_inputs)
        else:
            with blas_single_threaded:
                results = self._backward_per_layer(cache, grad_out, grad_state, weights,
                                                   grads_into, retain_cache, n_threads, team)
        grads = dict(results[0][1])
        if not grad_inputs:
            self.grads = grads
            return None
        grad_X = np.zeros((B, T, self.input_size), dtype=self.dtype)
        grad_init = [np.empty((L * D, B, sizes[name]), dtype=self.dtype)
                     for name in self.state_names]
        for (b0, b1), (grad_x, _, g_states) in zip(chunks, results):
            grad_X[b0:b1, :grad_x.shape[0]] = grad_x.transpose(1, 0, 2)
            for full, part in zip(grad_init, g_states):
                full[:, b0:b1] = part
        inverse = cache["inverse"]
        if inverse is not order:
            grad_X = grad_X[inverse]
            grad_init = [g[:, inverse] for g in grad_init]
        for name, g in zip(self.state_names, grad_init):
            grads[f"{name}0"] = g
        self.grads = grads
        return grad_X

    def _check_grads_into(self, grads_into):
        """``grads_into`` holds a writable C-contiguous array of each parameter's
        shape and dtype (checked once per set of arrays: a training loop passes
        the same ones every step)."""
        last = self.__dict__.get("_checked_into")
        if last is not None and _same_objects(last, grads_into):
            return
        for name, value in self.params.items():
            g = grads_into.get(name)
            if g is None:
                raise ValueError(f"grads_into has no array for the parameter {name!r}")
            if not isinstance(g, np.ndarray) or g.shape != value.shape or g.dtype != value.dtype:
                raise ValueError(f"grads_into[{name!r}] must be an array of shape {value.shape} "
                                 f"and dtype {value.dtype}, got "
                                 f"{getattr(g, 'shape', type(g).__name__)} "
                                 f"{getattr(g, 'dtype', '')}".rstrip())
            if not (g.flags.c_contiguous and g.flags.writeable):
                raise ValueError(f"grads_into[{name!r}] must be a writable C-contiguous array")
        self._checked_into = dict(grads_into)

    def _backward_weights(self, values):
        """Per (layer, direction): the backward's weight arrays (packed as
        grad @ W reads them), kept while the parameters hold `values` (the
        forward memo's snapshot, so one object while they are unchanged);
        after an optimizer step they are refreshed in place, so the lists stay
        the same objects and the kept BackwardPlan stays valid."""
        memo = self.__dict__.get("_backward_memo")
        if memo is not None and memo[0] is values:
            return memo[1]
        kept = self._kept_weights(memo, backward=True)
        self._backward_memo = (values, *kept)
        return kept[0]

    def _kept_weights(self, memo, backward):
        """The scan's weight arrays for the parameters' current values, as
        ``(weights, params, repack)``: those of ``memo`` (a forward or
        backward memo, or None) updated in place where the parameters are
        the same objects (the cell's derived arrays, then every packed weight
        in one compiled call: repack_weights), else new ones."""
        params = self.params
        if memo is not None and _same_objects(memo[2], params):
            weights, repack = memo[1], memo[3]
            if repack is None:
                repack = _repack_ops(weights)
            if repack is not False and all(
                    self._refresh_scan_arrays(arrays, self._direction_params(k))
                    for k, arrays in enumerate(weights)):
                _kernels().repack_weights(repack)
                return weights, memo[2], repack
        new = [self._scan_arrays(self._direction_params(k), backward=backward)
               for k in range(self.num_layers * self.num_directions)]
        if memo is not None and _same_objects(memo[2], params) and _copy_into(memo[1], new):
            return memo[1], memo[2], memo[3]
        return new, dict(params), None

    def _refresh_scan_arrays(self, arrays, p):
        """Update, in place, what _scan_arrays derived from the parameters
        `p` (the same objects, new values) in `arrays`, except the packed
        weights (repack_weights); True if done, False where the cell cannot
        (its arrays are then made again)."""
        return False

    def _backward_per_layer(self, cache, grad_out, grad_state, weights, grads_into,
                            retain_cache, n_threads, team):
        """The reference path: one compiled call per layer direction, Python
        threads per sub-batch (what _backward_one_call replaces; tests compare
        the two). Returns per sub-batch (grad_x, grads, grad_state): grad_x
        time-major (T, b, I), grads (the first's: all of them, summed in
        sub-batch order), grad_state the initial states' gradients."""
        chunks, parts = cache["chunks"], cache["parts"]
        results = [None] * len(chunks)
        ws = self._workspace

        L, D = self.num_layers, self.num_directions
        sizes = self._state_sizes()

        def run(k):
            b0, b1 = chunks[k]
            results[k] = self._backward_batch(
                parts[k], grad_out[b0:b1],
                [np.zeros((L * D, b1 - b0, sizes[name]), self.dtype) if s is None
                 else np.ascontiguousarray(s[:, b0:b1])
                 for s, name in zip(grad_state, self.state_names)],
                weights, ws.chunk(k), grads_into if k == 0 else None, retain_cache, team)

        run_parts(n_threads, [partial(run, k) for k in range(len(chunks))])
        grads = results[0][1]
        for _, more, _ in results[1:]:    # the sub-batches' gradients, in part order
            for name, value in more.items():
                grads[name] += value
        return results

    def _backward_one_call(self, cache, grad_out, grad_state, weights, grads_into,
                           n_threads, team, grad_inputs=True):
        """The whole backward in one call of a _scan.BackwardPlan, kept with
        the forward's sub-batch caches while the weight arrays stay the same
        objects; returns what _backward_per_layer does (the same values;
        ``grad_inputs`` False: without computing grad_x, whose buffers are
        then stale)."""
        chunks, parts = cache["chunks"], cache["parts"]
        if grads_into is None:
            grads = {name: np.zeros(value.shape, value.dtype)  # (zeros_like: 3x the call)
                     for name, value in self.params.items()}
        else:
            grads = dict(grads_into)
        kept = parts[0].get("backward_plan")
        if kept is None or kept[0] is not weights:
            kept = parts[0]["backward_plan"] = self._new_backward_plan(
                parts, chunks, grad_out, grads, weights)
        _, bplan, states, grad_xs, last = kept
        for (b0, b1), bufs in zip(chunks, states):
            for buf, s in zip(bufs, grad_state):
                if s is None:
                    buf.fill(0.0)
                else:
                    np.copyto(buf, s[:, b0:b1])
        # the stages' targets, as the last call's while the arrays are the same
        # (a training loop's flat gradient buffer)
        if not _same_objects(last[0], grads):
            last[:] = dict(grads), [self._gradient_targets(k, grads)
                                    for k in self._backward_order()]
        bplan.run(grad_out, last[1], n_threads, team, grad_inputs)
        return [(grad_x, grads, bufs) for grad_x, bufs in zip(grad_xs, states)]

    def _backward_order(self):
        """Layer directions in the order the backward runs them (top layer first)."""
        return self._plan()["backward_order"]

    def _gradient_targets(self, k, grads):
        """Layer direction k's gradient arrays by _scan's target names."""
        return {scan_name: grads[name] for scan_name, name in self._plan()["target_names"][k]}

    def _new_backward_plan(self, parts, chunks, grad_out, grads, weights):
        """A BackwardPlan over the forward's sub-batch caches and buffers of
        the workspace: (weights, plan, per sub-batch its state-gradient
        buffers, per sub-batch its grad_x (T, b, I), [the gradient arrays of
        the last run, its stages' targets])."""
        plan = self._plan()
        D, G = self.num_directions, plan["cfg"]["n_gates"]
        lstm = "c" in self.state_names
        sizes = self._state_sizes()
        specs, states, grad_xs = [], [], []
        for k, ((b0, b1), part) in enumerate(zip(chunks, parts)):
            ws = self._workspace.chunk(k)
            T, b = part["layers"][0]["input"].shape[:2]
            bufs = [ws.get(("grad_state", name), (self.num_layers * D, b1 - b0, sizes[name]),
                           self.dtype) for name in self.state_names]
            own = None if k == 0 else {
                name: ws.get(("grad", name), value.shape, self.dtype)
                for name, value in self.params.items()}
            stages, targets = [], []
            g = {"grad_out": grad_out[b0:b1]}
            for layer in reversed(range(self.num_layers)):
                lc = part["layers"][layer]
                grad_in = ws.get(("grad_in", layer), lc["input"].shape, self.dtype)
                for d in range(D):
                    k_dir = layer * D + d
                    # (LSTM family: the stage's bias sum, added to both biases)
                    grad_bias = ws.get(("grad_bias", k_dir), (G,), self.dtype) if lstm else None
                    arrays = self._backward_arrays(ws, lc, layer, d, weights, g, bufs, grad_in,
                                                   grads if own is None else own, grad_bias)
                    unmask = None
                    if d == D - 1 and lc["input_mask"] is not None:
                        unmask = (grad_in, lc["input_mask"])
                    stages.append((arrays, plan["cfg_backward"][d], unmask))
                    targets.append(self._gradient_targets(k_dir, grads if own is None else own))
                g = {"grad_h_seq": grad_in}
            specs.append({"stages": stages, "row0": b0, "targets": targets})
            states.append(bufs)
            grad_xs.append(g["grad_h_seq"])
        return weights, _kernels().BackwardPlan(specs), states, grad_xs, [{}, None]

    def _backward_arrays(self, ws, lc, layer, d, weights, above, grad_state, grad_in, grads,
                         grad_bias):
        """The scan's arrays of one layer direction's backward over a
        sub-batch: its forward's (``lc``: the layer's cache), the backward's
        weights and buffers, ``above`` (what reaches its output: ``grad_out``
        or ``grad_h_seq``), the state gradients (per state, (L*D, b, units)),
        ``grad_in`` its grad_x, and its gradient targets: the parameters'
        arrays in ``grads``; the LSTM family's biases through ``grad_bias``
        (the caller adds it to both), the GRU's its own."""
        k = layer * self.num_directions + d
        T, B = lc["input"].shape[:2]
        plan = self._plan()
        forward = lc["directions"][d]
        arrays = {**forward, **weights[k], **self._buffers(ws, layer, d, T, B, backward=True),
                  **above, "grad_h": grad_state[0][k],
                  "grad_c": grad_state[1][k] if len(grad_state) > 1 else None,
                  "grad_x": grad_in, "grad_bias": grad_bias}
        if forward["mask"] is not None and arrays["xh"] is None:   # masked h_prev
            arrays["h_prev_seq"] = ws.get(("h_prev_seq", layer, d), (T, B, self.output_size),
                                          self.dtype)
        for scan_name, name in plan["grad_names"][k]:
            arrays[scan_name] = grads[name]
        if "c" not in self.state_names:          # GRU: the biases apart
            names = plan["names"][k]
            arrays["grad_bias"] = grads[names["bias_ih"]]
            arrays["grad_bias_hh"] = grads[names["bias_hh"]]
        return arrays

    def _backward_batch(self, part, grad_out, grad_state, weights, ws, grads=None,
                        retain_cache=False, team=1):
        """BPTT over one sub-batch (each step split by rows across up to
        ``team`` threads where the scan allows, else on the calling thread,
        with the same values either way): grad_out (b, T_all, D*P) its
        rows of the batch-first output gradient (read in place by the top
        layer); grad_state (per state, (L*D, b, units)) is updated in place to
        the gradients of the initial states; parameter gradients are added to
        ``grads`` (new zeros if None); ``retain_cache``: the kernels overwrite
        copies of the saved gates. Returns (grad_x, grads, grad_state), grad_x
        time-major (T, b, I)."""
        D = self.num_directions
        plan = self._plan()
        G = plan["cfg"]["n_gates"]
        if grads is None:
            grads = {name: np.zeros(value.shape, value.dtype)  # (zeros_like: 3x the call)
                     for name, value in self.params.items()}
        g = {"grad_out": grad_out}           # what reaches the layer's output
        for layer in reversed(range(self.num_layers)):
            lc = part["layers"][layer]
            grad_in = np.empty_like(lc["input"])
            for d in range(D):
                k = layer * D + d
                names = plan["names"][k]
                grad_bias = np.zeros(G, dtype=self.dtype)
                arrays = self._backward_arrays(ws, lc, layer, d, weights, g, grad_state,
                                               grad_in, grads, grad_bias)
                if retain_cache:       # (GRU: its recurrent gates become gradients too)
                    overwritten = ("gates",) if "c" in self.state_names else ("gates", "hgates")
                    arrays.update({name: lc["directions"][d][name].copy()
                                   for name in overwritten})
                _scan.backward(arrays, plan["cfg_backward"][d], team)
                if "c" in self.state_names:            # both biases saw grad_bias
                    grads[names["bias_ih"]] += grad_bias
                    grads[names["bias_hh"]] += grad_bias
            if lc["input_mask"] is not None:
                grad_in *= lc["input_mask"]
            g = {"grad_h_seq": grad_in}
        return g["grad_h_seq"], grads, grad_state

    def __getstate__(self):
        # Workspaces and the forward cache are scratch: never pickled.
        state = self.__dict__.copy()
        state["_workspace"] = None
        state["_cache"] = None
        state["_plan_cache"] = None
        state["_weights_memo"] = None
        state.pop("_backward_memo", None)
        state.pop("_checked_into", None)
        state.pop("_fused_memo", None)
        state.pop("_fused_fresh", None)
        state.pop("_input_views", None)
        state.pop("_inference_ws", None)
        state.pop("_full_order", None)
        state["_step_plan"] = None
        state["grads"] = {}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._workspace = _Workspace()

    def _repr_options(self):
        """Non-default options as ', name=value' pieces (subclasses add theirs)."""
        extra = ""
        if self.bidirectional:
            extra += ", bidirectional=True"
        if self.dropout:
            extra += f", dropout={self.dropout}"
        if self.recurrent_dropout:
            extra += f", recurrent_dropout={self.recurrent_dropout}"
        return extra

    def __repr__(self):
        return (f"{type(self).__name__}({self.input_size}, {self.hidden_size}, "
                f"num_layers={self.num_layers}{self._repr_options()}, "
                f"dtype={np.dtype(self.dtype).name!r})")


# Parameter kinds whose name in the scan (_scan.pxd Layer fields) differs.
_SCAN_NAMES = {"weight_peephole": "peephole", "weight_ln_ih": "ln_ih",
               "weight_ln_hh": "ln_hh", "weight_ln_c": "ln_c_w", "bias_ln_c": "ln_c_b"}


def scan_weight_arrays(p, fused_bias, backward, separate):
    """The scan's weight arrays from one direction's parameters `p` (kind ->
    array), with the packed forms for the small-GEMM kernel: forward packs
    transposes (x @ W.T), backward the weights themselves (grad @ W)."""
    arrays = {_SCAN_NAMES.get(kind, kind): value for kind, value in p.items()
              if kind not in ("bias_ih", "bias_hh")}
    arrays["bias"] = fused_bias
    w_ih, w_hh, w_hr = p["weight_ih"], p["weight_hh"], p.get("weight_hr")
    if backward:
        arrays["packed_ih"] = _packed(w_ih, False)
        arrays["packed_hh"] = _packed(w_hh, False)
        arrays["packed_hr"] = _packed(w_hr, False)
        return arrays
    if not separate:
        # the projection folded into each step's product (input_mode_weights)
        arrays["packed_xh_t"] = _packed(np.concatenate([w_ih, w_hh], axis=1), True)
    if separate or _hoists(w_ih.shape[1], w_hh.shape[1]):
        # (cells with separate products, at any input width, and wide inputs
        # in batches of few rows: the whole-sequence projection, which streams
        # the packed weight once for all T*B rows)
        arrays["packed_ih_t"] = _packed(w_ih, True)
        arrays["packed_hh_t"] = _packed(w_hh, True)
    arrays["packed_hr_t"] = _packed(w_hr, True)
    return arrays


def _input_mode(batch_size):
    """How a batch of this many rows takes its inputs, as input_mode_weights
    reads it: (inputs of HOISTED_ROW_INPUT_SIZE to MIN_PACKED_INPUT_SIZE - 1
    features in each step's product, wider ones in each step's product)."""
    return batch_size > HOISTED_ROW_MAX_BATCH, batch_size >= STEPWISE_MIN_BATCH


def _hoists(n_inputs, width):
    """Whether a layer of `n_inputs` inputs and recurrent width `width` runs
    the hoisted projection in some batches (_input_mode): then it keeps both
    packs of its input product."""
    return n_inputs >= MIN_PACKED_INPUT_SIZE or (
        n_inputs >= HOISTED_ROW_INPUT_SIZE and width >= HOISTED_ROW_MIN_WIDTH)


def input_mode_weights(weights, mode):
    """The forward weight arrays (scan_weight_arrays) as a forward in input
    `mode` (_input_mode of its batch) reads them: a layer direction that has
    both forms of its input product keeps only [x_t | h_{t-1}]'s
    (packed_xh_t) where the mode takes its inputs in the steps, else only the
    hoisted projection's (packed_ih_t, packed_hh_t); the scan runs whichever
    it is given. Dicts over the same arrays (in-place repacks reach them);
    `weights` itself where no direction has both."""
    both = [a.get("packed_xh_t") is not None and a.get("packed_ih_t") is not None
            for a in weights]
    if not any(both):
        return weights
    views = []
    for a, two in zip(weights, both):
        if two:
            stepwise = mode[a["weight_ih"].shape[1] >= MIN_PACKED_INPUT_SIZE]
            drop = ("packed_ih_t", "packed_hh_t") if stepwise else ("packed_xh_t",)
            a = {k: v for k, v in a.items() if k not in drop}
        views.append(a)
    return views


def _stepwise_inputs(arrays):
    """Whether a layer direction's scan arrays take the input in each step's
    one product, which writes all of that step's gates (packed_xh_t: float32,
    products not kept apart; input_mode_weights)."""
    return arrays.get("packed_xh_t") is not None


# The packed forms scan_weight_arrays makes: name -> (the weights packed, side
# by side; transposed)
_PACKS = {"packed_ih_t": (("weight_ih",), True), "packed_hh_t": (("weight_hh",), True),
          "packed_xh_t": (("weight_ih", "weight_hh"), True),
          "packed_hr_t": (("weight_hr",), True), "packed_ih": (("weight_ih",), False),
          "packed_hh": (("weight_hh",), False), "packed_hr": (("weight_hr",), False)}


def _repack_ops(weights):
    """_scan.repack_weights' ops for every packed weight of `weights` (a list
    of scan weight dicts), reading the dicts' own weight arrays; False where
    a packed weight's sources are not all C-contiguous float32 matrices."""
    ops = []
    for arrays in weights:
        for name, (sources, transposed) in _PACKS.items():
            packed = arrays.get(name)
            if packed is None:
                continue
            mats = [arrays.get(source) for source in sources]
            if not all(isinstance(m, np.ndarray) and m.ndim == 2 and m.dtype == np.float32
                       and m.flags.c_contiguous for m in mats):
                return False
            if len(mats) == 2:
                scratch = np.empty((mats[0].shape[0], mats[0].shape[1] + mats[1].shape[1]),
                                   np.float32)
                ops.append((packed, transposed, *mats, scratch))
            else:
                ops.append((packed, transposed, mats[0]))
    return ops


def _sorted_rows(state, order, cache):
    """A (L*D, B, units) state gradient with its rows in the order of the
    cached forward's (sorted by length), the array itself where it kept them."""
    return state if cache["inverse"] is order else state[:, order]


def _same_values(kept, params):
    """True if `kept` and `params` (name -> array) have the same names and
    their arrays the same bytes (_scan.same_values)."""
    if kept.keys() != params.keys():
        return False
    for name, value in params.items():       # (a loop: twice as fast as all() here)
        if not _scan.same_values(kept[name], value):
            return False
    return True


def _same_objects(kept, params):
    """True if `params` (name -> array) holds exactly the array objects of `kept`."""
    if len(kept) != len(params):
        return False
    for name, value in params.items():       # (a loop: twice as fast as all() here)
        if kept.get(name) is not value:
            return False
    return True


def _copy_into(kept, new):
    """Copy the arrays of `new` into those of `kept` (lists of name -> array
    dicts built from the same parameter objects): True if every array has its
    counterpart of the same shape and dtype (arrays that are the same object,
    the parameters themselves, are left alone), else False and nothing copied."""
    if len(kept) != len(new):
        return False
    pairs = []
    for old_arrays, new_arrays in zip(kept, new):
        if old_arrays.keys() != new_arrays.keys():
            return False
        for name, old in old_arrays.items():
            value = new_arrays[name]
            if old is value:
                continue
            if (not isinstance(old, np.ndarray) or not isinstance(value, np.ndarray)
                    or old.shape != value.shape or old.dtype != value.dtype
                    or not old.flags.writeable):
                return False
            pairs.append((old, value))
    for old, value in pairs:
        np.copyto(old, value)
    return True


def fused_cell_weights(weights, cfg):
    """The forward weight arrays of every layer direction with the fused
    cell's packed weight added (``fused_xh_t`` where the steps take the inputs, else
    ``fused_hh_t``; _fused_cell.h), for forwards that no backward follows; or
    `weights` itself where the fused cell does not apply (float64, GRU, layer
    norm, projection, BLAS products, a build without vector extensions)."""
    scan = _kernels()
    if not (scan.HAVE_FUSED_CELL and cfg["kind"] == scan.KIND_LSTM and not cfg["ln_gates"]
            and not cfg["variant"] & scan.LN_CELL):
        return weights
    fused = []
    for arrays in weights:
        thin = arrays.get("packed_xh_t") is not None
        if (arrays.get("weight_hr") is not None or arrays["weight_hh"].dtype != np.float32
                or not (thin or arrays.get("packed_hh_t") is not None)):
            return weights       # (the small-GEMM kernel switched off: USE_PACKED_GEMM)
        packed = scan.pack_fused_cell(arrays["weight_ih"], arrays["weight_hh"], arrays["bias"],
                                      arrays.get("peephole"), cfg["hidden"], thin)
        fused.append({**arrays, "fused_xh_t" if thin else "fused_hh_t": packed})
    return fused


def _last_plan_entry(ws):
    """(key, weights, plan, parts, inputs, calls_blas) of the plan that the
    last forward through workspace ws (in this thread) ran, or None."""
    plans = ws.chunk(0).sets.get("network_plans")
    return next(reversed(plans.values())) if plans else None


class _Workspace:
    """Buffers reused across calls with the same shapes (no per-batch
    reallocation in a training loop), one set per sub-batch and per calling
    thread, so concurrent callers never share them."""

    def __init__(self):
        self._local = threading.local()

    def chunk(self, k):
        """The buffers of sub-batch k (resolved in the calling thread, used
        by whichever pool thread runs that sub-batch)."""
        chunks = self._local.__dict__.setdefault("chunks", {})
        if k not in chunks:
            chunks[k] = _Buffers()
        return chunks[k]


class _Buffers:
    """Named arrays reused while their shape and dtype stay the same (and
    `sets`: dicts of them, built once per shape by the network)."""

    def __init__(self):
        self._arrays = {}
        self.sets = {}

    def get(self, key, shape, dtype, zero=False):
        store = self._arrays
        arr = store.get(key)
        if arr is None or arr.shape != shape or arr.dtype != dtype:
            # (on a cache line: a units team's members write neighbouring
            # columns of the same rows)
            arr = _kernels().aligned_empty(shape, dtype)
            if zero:
                arr.fill(0)
            store[key] = arr
        elif zero:
            arr.fill(0)
        return arr


def _useful_threads(n_threads, batch_size, n_steps, hidden_size, n_scans=1):
    """Threads worth using for an inference batch: each needs
    MIN_ROWS_PER_THREAD rows of its own, and MIN_WORK_PER_C_THREAD of work to
    pay for starting it (n_scans: layer directions, all run by one thread on
    its rows)."""
    if n_threads <= 1:
        return 1
    work = batch_size * n_steps * hidden_size * hidden_size * n_scans  # ~ recurrent FLOPs / 8
    if work < MIN_WORK_PER_C_THREAD:
        return 1
    return max(1, min(n_threads, batch_size // max(1, MIN_ROWS_PER_THREAD),
                      work // max(1, MIN_WORK_PER_C_THREAD)))


def _fixed_parts(batch_size, n_steps, hidden_size):
    """Sub-batches of a forward that keeps a cache: fixed by the shape alone
    (clstm._parallel.fixed_part_count), each with enough work for a thread
    (FIXED_PART_MIN_WORK)."""
    work = batch_size * n_steps * hidden_size * hidden_size
    return fixed_part_count(batch_size, work // max(1, FIXED_PART_MIN_WORK))


def _calls_blas(arrays):
    """Whether a forward scan over these weight arrays (scan_weight_arrays)
    calls BLAS: only where a product has no packed small-GEMM weight."""
    get = arrays.get
    if get("packed_xh_t") is None and (get("packed_ih_t") is None
                                       or get("packed_hh_t") is None):
        return True
    return get("weight_hr") is not None and get("packed_hr_t") is None


def _slice_masks(masks, b0, b1, n_steps):
    """The dropout masks of sorted rows [b0, b1), trimmed to n_steps."""
    return [(None if inp is None else np.ascontiguousarray(inp[:n_steps, b0:b1]),
             [None if m is None else np.ascontiguousarray(m[b0:b1]) for m in rec])
            for inp, rec in masks]


def _as_generator(random_state):
    if random_state is None or isinstance(random_state, (numbers.Integral, np.integer)):
        return np.random.default_rng(random_state)
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(np.iinfo(np.int32).max))
    raise TypeError(f"random_state must be None, an int, a numpy Generator or RandomState, "
                    f"got {type(random_state).__name__}")
