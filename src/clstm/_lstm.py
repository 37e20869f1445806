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

from clstm._parallel import (
    MIN_ROWS_PER_THREAD,
    blas_single_threaded,
    resolve_n_threads,
    run_tasks,
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

__all__ = ["LSTM"]

_PARAM_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")

# float32 recurrent products use clstm's own small-GEMM kernel on weights
# packed once per call (_packed_gemm.h); float64 and compilers without vector
# extensions use BLAS. Tests flip this to compare the two paths.
USE_PACKED_GEMM = None      # None: wherever the build has the kernel


def _kernels():
    """The compiled layer kernels, loaded on first use: they pull in SciPy's
    BLAS (scipy.linalg, ~0.2 s), which `import clstm` need not pay for."""
    global _layer
    if _layer is None:
        from clstm import _layer as module
        _layer = module
    return _layer


_layer = None


# A sub-batch must carry at least this much work (B*T*H^2, about an eighth
# of the recurrent FLOPs) for a thread to pay for its wake-up and hand-off:
# ~0.2 ms of work on one core.
MIN_WORK_PER_THREAD = 2_500_000

# From this many inputs per step the input projection runs as one GEMM over
# all steps (small-GEMM kernel); below, that GEMM is too thin (store-bound),
# and each step computes [x_t | h_{t-1}] @ [W_ih | W_hh]^T in one product.
MIN_PACKED_INPUT_SIZE = 32


def _packed(weight, transposed):
    use = _kernels().HAVE_PACKED_GEMM if USE_PACKED_GEMM is None else USE_PACKED_GEMM
    if use and weight.dtype == np.float32:
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
        H, D, L = self.hidden_size, self.num_directions, self.num_layers
        if lengths is None:
            order = np.arange(B)
            sorted_lengths = np.full(B, T)
            x = np.array(X.transpose(1, 0, 2), order="C")   # a copy, also at B == 1
        else:
            # Sort by decreasing length (stable): the rows active at step t are
            # then the first batch_sizes[t], so each step is one contiguous GEMM.
            order = np.argsort(-lengths, kind="stable")
            sorted_lengths = lengths[order]
            x = np.ascontiguousarray(X[order].transpose(1, 0, 2))
            padding = np.arange(T)[:, None] >= sorted_lengths[None, :]      # (T, B)
            x[padding] = 0.0          # padding never reaches a GEMM
        check_finite(x, "X")
        # copies (fancy indexing): the backward never sees later changes the
        # caller makes to its h0 / c0
        h0 = np.ascontiguousarray(h0[:, order])
        c0 = np.ascontiguousarray(c0[:, order])
        # Dropout masks for the whole batch, drawn before any split so the
        # result does not depend on the number of threads.
        masks = self._draw_masks(T, B) if training else None

        # Independent sub-batches of contiguous (sorted) rows, one per thread:
        # each runs every layer on its rows, so a call synchronises once.
        _kernels()
        n_threads = resolve_n_threads(self.n_jobs, B)
        chunks = split_rows(B, _useful_threads(n_threads, B, T, H), weights=sorted_lengths)
        weights = self._layer_weights()
        # Training forwards reuse buffers (their cache is replaced anyway);
        # inference forwards allocate, so concurrent calls never share.
        ws = self._workspace if keep_cache else _Workspace()
        parts = [None] * len(chunks)

        def run(k):
            b0, b1 = chunks[k]
            n_steps = int(sorted_lengths[b0])                  # longest in the chunk
            sub_masks = None if masks is None else _slice_masks(masks, b0, b1, n_steps)
            parts[k] = self._forward_batch(
                np.ascontiguousarray(x[:n_steps, b0:b1]), h0[:, b0:b1], c0[:, b0:b1],
                sorted_lengths[b0:b1], sub_masks, weights, ws.chunk(k))

        with blas_single_threaded:
            run_tasks([partial(run, k) for k in range(len(chunks))])

        out = np.zeros((B, T, D * H), dtype=self.dtype)           # sorted order
        h_n = np.empty((L * D, B, H), dtype=self.dtype)
        c_n = np.empty_like(h_n)
        for (b0, b1), part in zip(chunks, parts):
            out_k = part["layers"][-1]["out"]
            out[b0:b1, :out_k.shape[0]] = out_k.transpose(1, 0, 2)
            h_n[:, b0:b1], c_n[:, b0:b1] = part["h_n"], part["c_n"]
        if lengths is None:
            inverse = order
        else:
            inverse = np.argsort(order)
            out, h_n, c_n = out[inverse], h_n[:, inverse], c_n[:, inverse]
        cache = None
        if keep_cache:
            cache = {"parts": parts, "chunks": chunks, "order": order, "inverse": inverse,
                     "shape": (B, T), "params": dict(self.params)}
        return out, (h_n, c_n), cache

    def _layer_weights(self):
        """Per (layer, direction): the parameters, the fused bias and the packed
        forms the small-GEMM kernel reads (packed once per call, not per chunk)."""
        weights = []
        for layer in range(self.num_layers):
            for d in range(self.num_directions):
                p = {k: self.params[_param_name(k, layer, d)] for k in _PARAM_KINDS}
                p["bias"] = p["bias_ih"] + p["bias_hh"]
                p["packed_hh_t"] = p["packed_ih_t"] = p["packed_xh_t"] = None
                if p["weight_ih"].shape[1] >= MIN_PACKED_INPUT_SIZE:
                    p["packed_ih_t"] = _packed(p["weight_ih"], True)
                    p["packed_hh_t"] = _packed(p["weight_hh"], True)
                else:
                    # thin inputs: fold the projection into each step's product
                    p["packed_xh_t"] = _packed(
                        np.concatenate([p["weight_ih"], p["weight_hh"]], axis=1), True)
                weights.append(p)
        return weights

    def _draw_masks(self, T, B):
        """Dropout masks in a fixed order: per layer, the input mask (layers
        after the first), then one recurrent mask per direction."""
        H, D = self.hidden_size, self.num_directions
        masks = []
        for layer in range(self.num_layers):
            input_mask = None
            if layer > 0 and self.dropout > 0:
                input_mask = self._dropout_mask((T, B, D * H), self.dropout)
            rec = [self._dropout_mask((B, H), self.recurrent_dropout)
                   if self.recurrent_dropout > 0 else None for _ in range(D)]
            masks.append((input_mask, rec))
        return masks

    def _forward_batch(self, x, h0, c0, lengths, masks, weights, ws):
        """All layers over one sub-batch, single-threaded: x (T, b, I)
        time-major with rows sorted by decreasing length; returns its cache."""
        T, B, _ = x.shape
        H, D = self.hidden_size, self.num_directions
        batch_sizes = (lengths[None, :] > np.arange(T)[:, None]).sum(axis=1).astype(np.intc)
        padded = bool(batch_sizes[-1] < B)
        h0 = np.ascontiguousarray(h0)
        c0 = np.ascontiguousarray(c0)
        h_n = np.empty((self.num_layers * D, B, H), dtype=self.dtype)
        c_n = np.empty_like(h_n)
        rows, last = np.arange(B), lengths - 1
        layers, inp = [], x
        for layer in range(self.num_layers):
            input_mask, rec_masks = masks[layer] if masks is not None else (None, [None] * D)
            if input_mask is not None:
                inp = inp * input_mask
            out = ws.get(("out", layer), (T, B, D * H), self.dtype, zero=padded)
            directions = []
            for d in range(D):
                k = layer * D + d
                p = weights[k]
                gates = ws.get(("gates", layer, d), (T, B, 4 * H), self.dtype)
                c_seq = ws.get(("c_seq", layer, d), (T, B, H), self.dtype)
                work = None if rec_masks[d] is None else ws.get(("work", layer, d), (B, H),
                                                                 self.dtype)
                if p["packed_xh_t"] is None:
                    _layer.input_projection(inp, p["weight_ih"], gates, p["packed_ih_t"])
                _layer.recurrence_forward(p["weight_hh"], p["bias"], h0[k], c0[k], batch_sizes,
                                          bool(d), gates, c_seq, out, d * H, rec_masks[d],
                                          work, p["packed_hh_t"], inp, p["packed_xh_t"])
                final = np.zeros_like(last) if d else last
                h_n[k] = out[final, rows, d * H:(d + 1) * H]
                c_n[k] = c_seq[final, rows]
                directions.append({"gates": gates, "c_seq": c_seq, "mask": rec_masks[d]})
            layers.append({"input": inp, "input_mask": input_mask, "out": out,
                           "directions": directions})
            inp = out
        return {"layers": layers, "h_n": h_n, "c_n": c_n, "h0": h0, "c0": c0,
                "batch_sizes": batch_sizes}

    # -- generic interface (what models and persistence use) -------------------
    # The same methods on every recurrent network, whatever its states:
    # `state` is a tuple of (num_layers * D, batch, H) arrays in the order of
    # `state_names` (("h", "c") here; ("h",) for a GRU).
    state_names = ("h", "c")

    @property
    def output_size(self):
        """Units of h per direction (the last axis of ``out`` is D * output_size)."""
        return self.hidden_size

    def run(self, X, state=None, lengths=None, *, keep_cache=True):
        """forward() with the states as one tuple.

        ``keep_cache=False`` runs without keeping activations for a backward
        (and in whichever mode the network is in): what inference and
        no-gradient passes use; it is safe to call from several threads.
        Returns ``out, state``.
        """
        h0, c0 = (None, None) if state is None else state
        if keep_cache:
            out, (h_n, c_n) = self.forward(X, h0, c0, lengths)
        else:
            out, (h_n, c_n), _ = self._forward(X, h0, c0, lengths, self.training,
                                               keep_cache=False)
        return out, (h_n, c_n)

    def backward_state(self, grad_out, grad_state=None):
        """backward() with the state gradients as one tuple (or None)."""
        grad_h_n, grad_c_n = (None, None) if grad_state is None else grad_state
        return self.backward(grad_out, grad_h_n, grad_c_n)

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
        H, D, L = self.hidden_size, self.num_directions, self.num_layers
        order = cache["order"]
        state_shape = (L * D, B, H)
        grad_out = as_float_array(grad_out, self.dtype, "grad_out")
        if grad_out.shape != (B, T, D * H):
            raise ValueError(f"grad_out has shape {grad_out.shape}, expected {(B, T, D * H)}")
        check_finite(grad_out, "grad_out")
        grad_h = check_state(grad_h_n, state_shape, self.dtype, "grad_h_n")[:, order]
        grad_c = check_state(grad_c_n, state_shape, self.dtype, "grad_c_n")[:, order]
        if cache["inverse"] is not order:          # sorted by length: reorder
            grad_out = grad_out[order]
        packed = [{kind: _packed(self.params[_param_name(kind, layer, d)], False)
                   for kind in ("weight_hh", "weight_ih")}
                  for layer in range(L) for d in range(D)]
        chunks, parts = cache["chunks"], cache["parts"]
        results = [None] * len(chunks)
        ws = self._workspace

        def run(k):
            b0, b1 = chunks[k]
            n_steps = parts[k]["layers"][0]["input"].shape[0]
            g = np.ascontiguousarray(grad_out[b0:b1, :n_steps].transpose(1, 0, 2))
            results[k] = self._backward_batch(
                parts[k], g, np.ascontiguousarray(grad_h[:, b0:b1]),
                np.ascontiguousarray(grad_c[:, b0:b1]), packed, ws.chunk(k))

        with blas_single_threaded:
            run_tasks([partial(run, k) for k in range(len(chunks))])

        grads = results[0][1]
        for _, more, _, _ in results[1:]:           # sum the sub-batches' gradients
            for name, value in more.items():
                grads[name] += value
        grad_X = np.zeros((B, T, self.input_size), dtype=self.dtype)
        grad_h0 = np.empty(state_shape, dtype=self.dtype)
        grad_c0 = np.empty_like(grad_h0)
        for (b0, b1), (grad_x, _, gh0, gc0) in zip(chunks, results):
            grad_X[b0:b1, :grad_x.shape[0]] = grad_x.transpose(1, 0, 2)
            grad_h0[:, b0:b1], grad_c0[:, b0:b1] = gh0, gc0
        inverse = cache["inverse"]
        if inverse is not order:
            grad_X, grad_h0, grad_c0 = grad_X[inverse], grad_h0[:, inverse], grad_c0[:, inverse]
        grads["h0"], grads["c0"] = grad_h0, grad_c0
        self.grads = grads
        return grad_X

    def _backward_batch(self, part, g, grad_h, grad_c, packed, ws):
        """BPTT over one sub-batch, single-threaded: g (T, b, D*H) time-major;
        grad_h / grad_c (L*D, b, H) are updated in place to the gradients of
        h0 / c0. Returns (grad_x, grads, grad_h, grad_c)."""
        H, D = self.hidden_size, self.num_directions
        T, B = g.shape[:2]
        grads = {name: np.zeros_like(value) for name, value in self.params.items()}
        batch_sizes = part["batch_sizes"]
        for layer in reversed(range(self.num_layers)):
            lc = part["layers"][layer]
            inp = lc["input"]
            grad_in = np.empty_like(inp)
            for d in range(D):
                k = layer * D + d
                names = {kind: _param_name(kind, layer, d) for kind in _PARAM_KINDS}
                dc = lc["directions"][d]
                grad_gates = ws.get(("grad_gates", d), (T, B, 4 * H), self.dtype)
                # [x_t | h_{t-1}] side by side: one GEMM for both weight gradients
                n_in = inp.shape[2]
                # (layers after the first all share one input width)
                xh = ws.get(("xh", layer > 0, d), (T, B, n_in + H), self.dtype)
                xh[:, :, :n_in] = inp
                grad_w = ws.get(("grad_w", layer > 0, d), (4 * H, n_in + H), self.dtype)
                _layer.recurrence_backward(
                    self.params[names["weight_hh"]], part["h0"][k], part["c0"][k],
                    batch_sizes, bool(d), dc["gates"], dc["c_seq"], lc["out"], g, d * H,
                    grad_h[k], grad_c[k], grad_gates, xh, dc["mask"], packed[k]["weight_hh"])
                grad_bias = grads[names["bias_ih"]]
                _layer.parameter_gradients(
                    xh, self.params[names["weight_ih"]], grad_gates, grad_in,
                    d > 0, grads[names["weight_ih"]], grads[names["weight_hh"]], grad_bias,
                    grad_w, packed[k]["weight_ih"])
                grads[names["bias_hh"]] += grad_bias
            if lc["input_mask"] is not None:
                grad_in *= lc["input_mask"]
            g = grad_in
        return g, grads, grad_h, grad_c

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
    """Named arrays reused while their shape and dtype stay the same."""

    def __init__(self):
        self._arrays = {}

    def get(self, key, shape, dtype, zero=False):
        store = self._arrays
        arr = store.get(key)
        if arr is None or arr.shape != shape or arr.dtype != dtype:
            arr = np.zeros(shape, dtype=dtype) if zero else np.empty(shape, dtype=dtype)
            store[key] = arr
        elif zero:
            arr.fill(0)
        return arr


def _useful_threads(n_threads, batch_size, n_steps, hidden_size):
    """Threads worth using for a batch: each needs MIN_ROWS_PER_THREAD rows
    of its own, and a call must carry enough work to pay for waking them."""
    if n_threads <= 1:
        return 1
    work = batch_size * n_steps * hidden_size * hidden_size   # ~ recurrent FLOPs / 8
    if work < MIN_WORK_PER_THREAD:
        return 1
    return max(1, min(n_threads, batch_size // max(1, MIN_ROWS_PER_THREAD),
                      work // max(1, MIN_WORK_PER_THREAD)))


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
