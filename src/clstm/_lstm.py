"""clstm.LSTM: a stacked, optionally bidirectional LSTM network (no training loop).

The model owns the parameters (torch.nn.LSTM names, shapes and gate order)
and the workspaces, validates input, lays sequences out time-major and sorted
by decreasing length (so the active rows of every step are a prefix), then
calls one compiled kernel per layer and direction.
"""

import numbers
import threading
from functools import partial

import numpy as np

from clstm import _layer
from clstm._parallel import blas_single_threaded, resolve_n_threads, run_tasks, split_rows
from clstm._validation import (
    as_float_array,
    check_finite,
    check_lengths,
    check_positive_int,
    check_state,
    resolve_dtype,
)

__all__ = ["LSTM"]

_PARAM_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")

# float32 recurrent products use clstm's own small-GEMM kernel on weights
# packed once per call (_packed_gemm.h); float64 and compilers without vector
# extensions use BLAS. Tests flip this to compare the two paths.
USE_PACKED_GEMM = _layer.HAVE_PACKED_GEMM


# Below this many inputs per step the projection GEMM is too thin for the
# small-GEMM kernel (it becomes store-bound) and BLAS is as fast or faster.
MIN_PACKED_INPUT_SIZE = 32


def _packed(weight, transposed):
    if USE_PACKED_GEMM and weight.dtype == np.float32:
        return _layer.pack_weight(weight, transposed)
    return None


def _param_name(kind, layer, direction):
    return f"{kind}_l{layer}" + ("_reverse" if direction else "")


def _as_numpy(value):
    """numpy view of an array-like, torch tensors included (without importing torch)."""
    if hasattr(value, "detach") and callable(value.detach):
        value = value.detach()
    if hasattr(value, "cpu") and callable(value.cpu):
        value = value.cpu()
    if hasattr(value, "numpy") and callable(value.numpy) and not isinstance(value, np.ndarray):
        value = value.numpy()
    return np.asarray(value)


class LSTM:
    """Multi-layer LSTM with the semantics and parameter layout of ``torch.nn.LSTM``.

    Parameters
    ----------
    input_size : int
        Number of features of each timestep of ``X``.
    hidden_size : int
        Number of hidden units ``H`` of every layer and direction.
    num_layers : int, default=1
        Number of stacked layers; layer ``k > 0`` reads the output of ``k - 1``.
    bidirectional : bool, default=False
        Add a reverse-time direction to every layer; outputs are concatenated
        ``[forward | reverse]`` along the last axis.
    dtype : {"float32", "float64"}, default="float32"
        Precision of parameters and computation. Inputs are cast to it.
    random_state : int, numpy Generator/RandomState or None, default=None
        Seeds the initialisation (uniform on ``[-1/sqrt(H), 1/sqrt(H)]``, as
        PyTorch) and the dropout masks.
    dropout : float, default=0.0
        In training mode, dropout on the outputs of every layer but the last
        (inverted dropout, a fresh mask per element, as ``torch.nn.LSTM``).
    recurrent_dropout : float, default=0.0
        In training mode, dropout on ``h_{t-1}`` in the recurrent product,
        with one mask per sequence and layer held over all timesteps
        (variational dropout, Gal & Ghahramani 2016; Keras semantics).
    n_jobs : int or None, default=None
        Threads for one forward/backward. None picks automatically from the
        batch shape and the cores available; -1 uses all cores.

    Attributes
    ----------
    grads : dict
        After :meth:`backward`: the gradient of every parameter (same keys and
        shapes as :meth:`state_dict`) and of the initial states ``"h0"``, ``"c0"``.
    training : bool
        Dropout applies only when True (see :meth:`train`, :meth:`eval`).
    """

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
        for name, p in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout)):
            if not isinstance(p, numbers.Real) or not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be a float in [0, 1), got {p!r}")
        self.dropout = float(dropout)
        self.recurrent_dropout = float(recurrent_dropout)
        self.n_jobs = n_jobs
        self.training = False
        self._rng = _as_generator(random_state)
        self.params = {}
        self._init_params()
        self.grads = {}
        self._cache = None
        self._workspace = _Workspace()

    # -- parameters ---------------------------------------------------------
    @property
    def num_directions(self):
        return 2 if self.bidirectional else 1

    def _layer_input_size(self, layer):
        return self.input_size if layer == 0 else self.hidden_size * self.num_directions

    def _param_shapes(self):
        H = self.hidden_size
        shapes = {}
        for layer in range(self.num_layers):
            for d in range(self.num_directions):
                shapes[_param_name("weight_ih", layer, d)] = (4 * H, self._layer_input_size(layer))
                shapes[_param_name("weight_hh", layer, d)] = (4 * H, H)
                shapes[_param_name("bias_ih", layer, d)] = (4 * H,)
                shapes[_param_name("bias_hh", layer, d)] = (4 * H,)
        return shapes

    def _init_params(self):
        bound = 1.0 / np.sqrt(self.hidden_size)
        for name, shape in self._param_shapes().items():
            self.params[name] = self._rng.uniform(-bound, bound, size=shape).astype(self.dtype)

    def state_dict(self):
        """Copies of the parameters, keyed by torch.nn.LSTM names."""
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
                f"state_dict does not match this LSTM (num_layers={self.num_layers}, "
                f"bidirectional={self.bidirectional}): missing keys {missing}, "
                f"unexpected keys {extra}")
        new = {}
        for name, shape in shapes.items():
            value = as_float_array(_as_numpy(state_dict[name]), self.dtype, name)
            if value.shape != shape:
                raise ValueError(f"state_dict[{name!r}] has shape {value.shape}, expected {shape}")
            check_finite(value, name)
            # a copy: the net must not alias the caller's arrays (or torch's tensors)
            new[name] = np.array(value, order="C", copy=True)
        self.params.update(new)   # only after every entry passed
        self._cache = None
        return self

    # -- modes -----------------------------------------------------------------
    def train(self, mode=True):
        """Training mode: dropout and recurrent dropout apply."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Inference mode: no dropout."""
        return self.train(False)

    # -- forward ---------------------------------------------------------------
    def forward(self, X, h0=None, c0=None, lengths=None):
        """Run the network over whole sequences.

        Parameters
        ----------
        X : array-like of shape (batch, T, input_size)
            Batch-first sequences. Values past a sequence's length are ignored.
        h0, c0 : array-like of shape (num_layers * D, batch, H), optional
            Initial states (zeros when omitted); D = 2 if bidirectional.
        lengths : array-like of int, shape (batch,), optional
            Length of each sequence, in [1, T]. The output past a length is
            zero, ``h_n``/``c_n`` are the states at each sequence's own last
            step, and the reverse direction starts there (packed semantics).

        Returns
        -------
        out : ndarray of shape (batch, T, D * H)
        (h_n, c_n) : ndarrays of shape (num_layers * D, batch, H)
        """
        self._cache = None        # its buffers are about to be reused
        out, states, cache = self._forward(X, h0, c0, lengths, self.training)
        self._cache = cache
        self.grads = {}
        return out, states

    __call__ = forward

    def _validate_input(self, X, h0, c0, lengths):
        X = as_float_array(X, self.dtype, "X")
        if X.ndim != 3:
            raise ValueError(
                f"X must be 3-D (batch, T, input_size={self.input_size}), got "
                f"{X.ndim}-D array of shape {X.shape}")
        B, T, n_features = X.shape
        if n_features != self.input_size:
            raise ValueError(f"X has {n_features} features per step, this LSTM expects "
                             f"input_size={self.input_size}")
        if B == 0 or T == 0:
            raise ValueError(f"X must have at least one sequence and one step, got shape {X.shape}")
        lengths = check_lengths(lengths, B, T)
        shape = (self.num_layers * self.num_directions, B, self.hidden_size)
        h0 = check_state(h0, shape, self.dtype, "h0")
        c0 = check_state(c0, shape, self.dtype, "c0")
        return X, h0, c0, lengths

    def _forward(self, X, h0, c0, lengths, training, keep_cache=True):
        X, h0, c0, lengths = self._validate_input(X, h0, c0, lengths)
        B, T, _ = X.shape
        H, D = self.hidden_size, self.num_directions
        if lengths is None:
            order = np.arange(B)
            sorted_lengths = np.full(B, T)
            batch_sizes = np.full(T, B, dtype=np.intc)
            padded = False
            # np.array copies even where the transpose is already contiguous
            # (B == 1): the cache must not alias the caller's X.
            x = np.array(X.transpose(1, 0, 2), order="C")
        else:
            # Sort by decreasing length (stable): the rows active at step t are
            # then the first batch_sizes[t], so each step is one contiguous GEMM.
            order = np.argsort(-lengths, kind="stable")
            sorted_lengths = lengths[order]
            batch_sizes = (sorted_lengths[None, :] > np.arange(T)[:, None]).sum(axis=1).astype(np.intc)
            padding = np.arange(T)[:, None] >= sorted_lengths[None, :]      # (T, B)
            padded = bool(padding.any())
            x = np.ascontiguousarray(X[order].transpose(1, 0, 2))
            if padded:
                x[padding] = 0.0          # padding never reaches a GEMM
        check_finite(x, "X")
        # copies (fancy indexing), so the backward never sees later changes
        # the caller makes to its h0 / c0
        h0 = np.ascontiguousarray(h0[:, order])
        c0 = np.ascontiguousarray(c0[:, order])

        n_threads = resolve_n_threads(self.n_jobs, B)
        batch_chunks = split_rows(B, n_threads, weights=sorted_lengths)
        flat_chunks = split_rows(T * B, n_threads)
        # Training forwards reuse one set of buffers (their cache is replaced
        # anyway); inference forwards allocate, so concurrent calls never share.
        ws = self._workspace if keep_cache else _Workspace()
        h_n = np.empty((self.num_layers * D, B, H), dtype=self.dtype)
        c_n = np.empty_like(h_n)
        rows = np.arange(B)
        last = sorted_lengths - 1
        layers = []
        inp = x
        with blas_single_threaded:
            for layer in range(self.num_layers):
                input_mask = None
                if layer > 0 and training and self.dropout > 0:
                    input_mask = self._dropout_mask(inp.shape, self.dropout)
                    inp = inp * input_mask
                out = ws.get(("out", layer), (T, B, D * H), self.dtype, zero=padded)
                dirs = []
                for d in range(D):
                    p = {k: self.params[_param_name(k, layer, d)] for k in _PARAM_KINDS}
                    rec_mask = work = None
                    if training and self.recurrent_dropout > 0:
                        rec_mask = self._dropout_mask((B, H), self.recurrent_dropout)
                        work = ws.get(("work", layer, d), (B, H), self.dtype)
                    dirs.append({
                        "p": p, "bias": p["bias_ih"] + p["bias_hh"], "mask": rec_mask,
                        "work": work, "packed_t": _packed(p["weight_hh"], True),
                        "packed_ih_t": (_packed(p["weight_ih"], True)
                                        if inp.shape[2] >= MIN_PACKED_INPUT_SIZE else None),
                        "gates": ws.get(("gates", layer, d), (T, B, 4 * H), self.dtype),
                        "c_seq": ws.get(("c_seq", layer, d), (T, B, H), self.dtype)})
                run_tasks([
                    partial(_layer.input_projection, inp, dc["p"]["weight_ih"], dc["bias"],
                            dc["gates"], r0, r1, dc["packed_ih_t"])
                    for dc in dirs for r0, r1 in flat_chunks])
                run_tasks([
                    partial(_layer.recurrence_forward, dc["p"]["weight_hh"], h0[layer * D + d],
                            c0[layer * D + d], batch_sizes, bool(d), dc["gates"], dc["c_seq"],
                            out, d * H, b0, b1, dc["mask"], dc["work"], dc["packed_t"])
                    for d, dc in enumerate(dirs) for b0, b1 in batch_chunks])
                for d, dc in enumerate(dirs):
                    k = layer * D + d
                    final = np.zeros_like(last) if d else last
                    h_n[k] = out[final, rows, d * H:(d + 1) * H]
                    c_n[k] = dc["c_seq"][final, rows]
                layers.append({"input": inp, "input_mask": input_mask, "out": out,
                               "directions": [{k: dc[k] for k in ("gates", "c_seq", "mask")}
                                              for dc in dirs]})
                inp = out

        if lengths is None:
            inverse = order
            result = np.array(inp.transpose(1, 0, 2), order="C")   # never a workspace view
        else:
            inverse = np.argsort(order)
            result = np.ascontiguousarray(inp.transpose(1, 0, 2)[inverse])
        cache = None
        if keep_cache:
            cache = {"layers": layers, "order": order, "inverse": inverse,
                     "batch_sizes": batch_sizes, "h0": h0, "c0": c0,
                     "shape": (B, T), "params": dict(self.params),
                     "batch_chunks": batch_chunks, "flat_chunks": flat_chunks}
        if lengths is not None:
            h_n, c_n = h_n[:, inverse], c_n[:, inverse]
        return result, (h_n, c_n), cache

    def _dropout_mask(self, shape, p):
        keep = self._rng.random(shape) >= p
        return (keep / (1.0 - p)).astype(self.dtype)

    # -- backward --------------------------------------------------------------
    def backward(self, grad_out, grad_h_n=None, grad_c_n=None):
        """Backpropagate through time from the last :meth:`forward`.

        Parameters
        ----------
        grad_out : array-like of shape (batch, T, D * H)
            Gradient of the loss with respect to ``out``.
        grad_h_n, grad_c_n : array-like of shape (num_layers * D, batch, H), optional
            Gradients with respect to ``h_n`` and ``c_n`` (zero when omitted).

        Returns
        -------
        grad_X : ndarray of shape (batch, T, input_size)
            Gradient with respect to ``X`` (zero past each sequence's length).
            Parameter gradients are stored in :attr:`grads`.
        """
        cache = self._cache
        if cache is None:
            raise RuntimeError("backward() needs a preceding forward() (the parameters "
                               "changed or no forward was run)")
        if any(cache["params"][k] is not v for k, v in self.params.items()):
            raise RuntimeError("the parameters were replaced since forward(); run forward() again")
        B, T = cache["shape"]
        H, D = self.hidden_size, self.num_directions
        order = cache["order"]
        state_shape = (self.num_layers * D, B, H)
        grad_out = as_float_array(grad_out, self.dtype, "grad_out")
        if grad_out.shape != (B, T, D * H):
            raise ValueError(f"grad_out has shape {grad_out.shape}, expected {(B, T, D * H)}")
        check_finite(grad_out, "grad_out")
        grad_h = check_state(grad_h_n, state_shape, self.dtype, "grad_h_n")[:, order]
        grad_c = check_state(grad_c_n, state_shape, self.dtype, "grad_c_n")[:, order]
        grad_h = np.ascontiguousarray(grad_h)
        grad_c = np.ascontiguousarray(grad_c)

        g = np.ascontiguousarray(grad_out[order].transpose(1, 0, 2))
        grads = {name: np.zeros_like(value) for name, value in self.params.items()}
        bias_grads = {}
        batch_sizes = cache["batch_sizes"]
        batch_chunks, flat_chunks = cache["batch_chunks"], cache["flat_chunks"]
        n_parts = len(flat_chunks)
        gate_chunks = split_rows(4 * H, n_parts)
        ws = self._workspace
        with blas_single_threaded:
            for layer in reversed(range(self.num_layers)):
                lc = cache["layers"][layer]
                inp = lc["input"]
                grad_in = np.empty_like(inp)
                dirs = []
                for d in range(D):
                    names = {kind: _param_name(kind, layer, d) for kind in _PARAM_KINDS}
                    bias_grads[(layer, d)] = np.zeros(4 * H, dtype=self.dtype)
                    dirs.append({
                        "names": names, **lc["directions"][d],
                        "packed": _packed(self.params[names["weight_hh"]], False),
                        "grad_gates": ws.get(("grad_gates", d), (T, B, 4 * H), self.dtype),
                        "h_prev_seq": ws.get(("h_prev_seq", d), (T, B, H), self.dtype)})
                run_tasks([
                    partial(_layer.recurrence_backward,
                            self.params[dc["names"]["weight_hh"]], cache["h0"][layer * D + d],
                            cache["c0"][layer * D + d], batch_sizes, bool(d), dc["gates"],
                            dc["c_seq"], lc["out"], g, d * H, grad_h[layer * D + d],
                            grad_c[layer * D + d], dc["grad_gates"], dc["h_prev_seq"],
                            b0, b1, dc["mask"], dc["packed"])
                    for d, dc in enumerate(dirs) for b0, b1 in batch_chunks])

                def gradient_task(part, layer=layer, dirs=dirs, inp=inp, grad_in=grad_in):
                    g0, g1 = gate_chunks[part] if part < len(gate_chunks) else (0, 0)
                    r0, r1 = flat_chunks[part]
                    for d, dc in enumerate(dirs):   # d=1 adds to d=0's grad_in rows
                        _layer.parameter_gradients(
                            inp, self.params[dc["names"]["weight_ih"]], dc["grad_gates"],
                            dc["h_prev_seq"], grad_in, d > 0,
                            grads[dc["names"]["weight_ih"]], grads[dc["names"]["weight_hh"]],
                            bias_grads[(layer, d)], g0, g1, r0, r1)

                run_tasks([partial(gradient_task, part) for part in range(n_parts)])
                for d, dc in enumerate(dirs):
                    grads[dc["names"]["bias_ih"]] += bias_grads[(layer, d)]
                    grads[dc["names"]["bias_hh"]] += bias_grads[(layer, d)]
                if lc["input_mask"] is not None:
                    grad_in *= lc["input_mask"]
                g = grad_in
        inverse = cache["inverse"]
        grads["h0"] = np.ascontiguousarray(grad_h[:, inverse])
        grads["c0"] = np.ascontiguousarray(grad_c[:, inverse])
        self.grads = grads
        return np.ascontiguousarray(g.transpose(1, 0, 2)[inverse])

    def __getstate__(self):
        # Workspaces and the forward cache are scratch: never pickled.
        state = self.__dict__.copy()
        state["_workspace"] = None
        state["_cache"] = None
        state["grads"] = {}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._workspace = _Workspace()

    def __repr__(self):
        extra = ""
        if self.bidirectional:
            extra += ", bidirectional=True"
        if self.dropout:
            extra += f", dropout={self.dropout}"
        if self.recurrent_dropout:
            extra += f", recurrent_dropout={self.recurrent_dropout}"
        return (f"LSTM({self.input_size}, {self.hidden_size}, num_layers={self.num_layers}"
                f"{extra}, dtype={np.dtype(self.dtype).name!r})")


class _Workspace:
    """Buffers reused across calls with the same shapes (no per-batch
    reallocation in a training loop). Not shared between threads."""

    def __init__(self):
        self._local = threading.local()

    def get(self, key, shape, dtype, zero=False):
        store = self._local.__dict__.setdefault("arrays", {})
        arr = store.get(key)
        if arr is None or arr.shape != shape or arr.dtype != dtype:
            arr = np.zeros(shape, dtype=dtype) if zero else np.empty(shape, dtype=dtype)
            store[key] = arr
        elif zero:
            arr.fill(0)
        return arr

    def clear(self):
        self._local.__dict__.pop("arrays", None)


def _as_generator(random_state):
    if random_state is None or isinstance(random_state, (numbers.Integral, np.integer)):
        return np.random.default_rng(random_state)
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(np.iinfo(np.int32).max))
    raise TypeError(f"random_state must be None, an int, a numpy Generator or RandomState, "
                    f"got {type(random_state).__name__}")
