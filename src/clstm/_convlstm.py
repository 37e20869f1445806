"""clstm.ConvLSTM: a stacked convolutional LSTM over 1-D or 2-D maps (Shi et al. 2015).

A ConvLSTM step is an LSTM step whose two products are convolutions. With
'same' padding and stride 1, im2col turns a convolution of a (B, *spatial, C)
map into a GEMM whose rows are the B * prod(spatial) pixels, so the scan
(clstm._scan) runs the LSTM cell unchanged on pixel rows with hidden size =
filters: the input convolution of all steps is one im2col (here) and one
GEMM (the scan's input projection); the recurrent convolution is an im2col
of h_{t-1} and one GEMM per step (in the scan); the backward col2ims.

Rows are batch-major (all pixels of a sequence contiguous), so the sequences
still running at a step, sorted by decreasing length, stay a prefix of rows.
This module declares the parameters (Keras's layout) and drives the layers;
validation, sub-batches for threads, workspaces and parameter handling come
from RecurrentNetwork.
"""

import numbers
from functools import partial

import numpy as np

from clstm._parallel import (
    blas_single_threaded,
    fixed_part_count,
    resolve_n_threads,
    run_parts,
    split_rows,
)
from clstm._rnn import (
    MIN_WORK_PER_THREAD,
    RecurrentNetwork,
    _kernels,
    _packed,
    _Workspace,
    as_numpy,
)
from clstm._validation import (
    as_float_array,
    check_finite,
    check_lengths,
    check_positive_int,
)

__all__ = ["ConvLSTM"]


class ConvLSTM(RecurrentNetwork):
    """Multi-layer convolutional LSTM, with Keras's ``ConvLSTM2D``/``ConvLSTM1D`` semantics and weights.

    For each step, with ``*`` a 'same'-padded, stride-1 convolution over the
    spatial axes and gate blocks (i, f, c, o) along the last axis of the
    kernels::

        a = x_t * kernel + h_{t-1} * recurrent_kernel + bias
        i, f, o = sigmoid(a_i), sigmoid(a_f), sigmoid(a_o);  g = tanh(a_c)
        c_t = f c_{t-1} + i g;  h_t = o tanh(c_t)

    (Keras's defaults: ``activation="tanh"``, ``recurrent_activation="sigmoid"``,
    ``padding="same"``, ``strides=1``, ``dilation_rate=1``, channels last.)

    Parameters
    ----------
    in_channels : int
        Channels ``C`` of the input maps (the last axis of ``X``).
    filters : int
        Channels ``F`` of h and c (Keras's ``filters``).
    kernel_size : int or tuple of int
        Odd kernel size per spatial axis, the same for both convolutions
        (an int: the same on every axis). Even sizes are refused (Keras pads
        them asymmetrically).
    num_layers : int, default=1
        Stacked layers; layer ``k > 0`` reads the h maps of layer ``k - 1``.
    spatial_dims : {1, 2}, default=2
        Spatial axes of the maps: 2 for ``(B, T, height, width, C)``
        (``ConvLSTM2D``), 1 for ``(B, T, width, C)`` (``ConvLSTM1D``).
    dtype : {"float32", "float64"}, default="float32"
    random_state : int, numpy Generator/RandomState or None, default=None
        Seeds the initialisation (Keras's: Glorot-uniform ``kernel``,
        orthogonal ``recurrent_kernel``, zero ``bias``) and the dropout masks.
    dropout : float, default=0.0
        In training mode, dropout on the h maps between stacked layers
        (a fresh mask per element).
    n_jobs : int or None, default=None
        Threads for one forward/backward (independent sequences in parallel);
        outputs and gradients are bit-identical for every value.
    unit_forget_bias : bool, default=True
        Initialise the forget-gate block of ``bias`` to 1 (Keras's default).
    peephole : bool, default=False
        Refused if True: Shi et al.'s peepholes are per-pixel Hadamard weights
        (so they fix the map size), and Keras's ConvLSTM has none.
    bidirectional : bool, default=False
        Refused if True: not implemented for ConvLSTM.

    Attributes
    ----------
    params : dict
        Per layer ``k``: ``kernel_l{k}`` of shape (*kernel_size, C_k, 4F),
        ``recurrent_kernel_l{k}`` of shape (*kernel_size, F, 4F) and
        ``bias_l{k}`` of shape (4F,), gate blocks (i, f, c, o) along the last
        axis; ``C_0 = in_channels``, ``C_k = filters`` for ``k > 0``. These are
        exactly the weights of a Keras ``ConvLSTM2D``/``ConvLSTM1D`` layer
        (``layer.get_weights()`` order: kernel, recurrent_kernel, bias).
    grads : dict
        After :meth:`backward`: the gradient of every parameter, and of the
        initial states ``"h0"``, ``"c0"``.

    Examples
    --------
    >>> import numpy as np
    >>> import clstm
    >>> net = clstm.ConvLSTM(in_channels=1, filters=4, kernel_size=3, random_state=0)
    >>> X = np.random.default_rng(0).standard_normal((2, 5, 8, 8, 1))   # (B, T, H, W, C)
    >>> out, (h_n, c_n) = net.forward(X)
    >>> out.shape, h_n.shape
    ((2, 5, 8, 8, 4), (1, 2, 8, 8, 4))
    >>> grad_X = net.backward(np.ones_like(out))
    >>> grad_X.shape, net.grads["kernel_l0"].shape
    ((2, 5, 8, 8, 1), (3, 3, 1, 16))
    """

    state_names = ("h", "c")

    def __init__(self, in_channels, filters, kernel_size, num_layers=1, spatial_dims=2,
                 dtype="float32", random_state=None, dropout=0.0, n_jobs=None,
                 unit_forget_bias=True, peephole=False, bidirectional=False):
        if not isinstance(bidirectional, (bool, np.bool_)) or bidirectional:
            raise ValueError(f"ConvLSTM is unidirectional: bidirectional must be False, "
                             f"got {bidirectional!r}")
        if not isinstance(peephole, (bool, np.bool_)) or peephole:
            raise ValueError(
                f"ConvLSTM has no peepholes (peephole must be False, got {peephole!r}): "
                "Shi et al.'s are per-pixel weights that fix the map size, and Keras's "
                "ConvLSTM2D has none")
        # (named here: the base class would call them input_size and hidden_size)
        check_positive_int(in_channels, "in_channels")
        check_positive_int(filters, "filters")
        super().__init__(in_channels, filters, num_layers=num_layers, dtype=dtype,
                         random_state=random_state, dropout=dropout, n_jobs=n_jobs)
        if spatial_dims not in (1, 2) or isinstance(spatial_dims, (bool, np.bool_)):
            raise ValueError(f"spatial_dims must be 1 or 2, got {spatial_dims!r}")
        self.spatial_dims = int(spatial_dims)
        self.kernel_size = _check_kernel_size(kernel_size, self.spatial_dims)
        if not isinstance(unit_forget_bias, (bool, np.bool_)):
            raise TypeError(f"unit_forget_bias must be a bool, got {unit_forget_bias!r}")
        self.unit_forget_bias = bool(unit_forget_bias)
        self._init_params()

    @property
    def in_channels(self):
        return self.input_size

    @property
    def filters(self):
        return self.hidden_size

    # -- the cell -----------------------------------------------------------------
    def _gate_count(self):
        return 4 * self.hidden_size

    def _cell_shapes(self, layer):
        C, F = self._layer_input_size(layer), self.hidden_size
        return {"kernel": self.kernel_size + (C, 4 * F),
                "recurrent_kernel": self.kernel_size + (F, 4 * F), "bias": (4 * F,)}

    def _init_params(self):
        """Keras's initialisers: Glorot-uniform kernel (fans over the receptive
        field), orthogonal recurrent kernel (as a (k*F, 4F) matrix), zero bias
        with the forget block at 1 if unit_forget_bias."""
        F, taps = self.hidden_size, int(np.prod(self.kernel_size))
        for layer in range(self.num_layers):
            shapes = self._cell_shapes(layer)
            C = shapes["kernel"][-2]
            limit = np.sqrt(6.0 / (taps * C + taps * 4 * F))
            kernel = self._rng.uniform(-limit, limit, size=shapes["kernel"])
            recurrent = _orthogonal(self._rng, taps * F, 4 * F).reshape(
                shapes["recurrent_kernel"])
            bias = np.zeros(4 * F)
            if self.unit_forget_bias:
                bias[F:2 * F] = 1.0
            for kind, value in (("kernel", kernel), ("recurrent_kernel", recurrent),
                                ("bias", bias)):
                # C order: a transposed orthogonal factor (taps * F < 4F, e.g. 1-D
                # kernels of 3) would otherwise keep Fortran order, and the in-place
                # edit check (same_values) compares C-contiguous arrays only
                self.params[f"{kind}_l{layer}"] = np.ascontiguousarray(value, dtype=self.dtype)

    def _scan_config(self):
        scan = _kernels()
        return {"kind": scan.KIND_LSTM, "variant": 0, "ln_gates": False,
                "hidden": self.hidden_size, "out_size": self.hidden_size,
                "n_gates": self._gate_count()}

    def _kernel_matrices(self, p):
        """W_ih (4F, k*C) and W_hh (4F, k*F): the kernels as matrices on im2col
        columns (column (tap, channel)), transposed (views of the kernels)."""
        G = self._gate_count()
        return p["kernel"].reshape(-1, G).T, p["recurrent_kernel"].reshape(-1, G).T

    def _scan_arrays(self, p, backward):
        """The scan's weights: the kernel matrices (C-contiguous copies) and the bias."""
        w_ih, w_hh = (np.ascontiguousarray(w) for w in self._kernel_matrices(p))
        arrays = {"weight_ih": w_ih, "weight_hh": w_hh, "bias": p["bias"]}
        if backward:
            arrays.update(packed_ih=_packed(w_ih, False), packed_hh=_packed(w_hh, False))
        else:
            arrays.update(packed_ih_t=_packed(w_ih, True), packed_hh_t=_packed(w_hh, True))
        return arrays

    def _refresh_scan_arrays(self, arrays, p):
        if arrays["bias"] is not p["bias"]:
            return False
        for name, w in zip(("weight_ih", "weight_hh"), self._kernel_matrices(p)):
            np.copyto(arrays[name], w)
        return True

    # -- public API -----------------------------------------------------------------
    def forward(self, X, h0=None, c0=None, lengths=None):
        """Run the network over whole sequences of maps.

        Parameters
        ----------
        X : array-like of shape (batch, T, *spatial, in_channels)
            Batch-first sequences of maps, channels last (Keras's layout);
            ``spatial`` is (height, width) or (width,).
        h0, c0 : array-like of shape (num_layers, batch, *spatial, filters), optional
            Initial states (zeros when omitted).
        lengths : array-like of int, shape (batch,), optional
            Length of each sequence, in [1, T]. Steps past a length are never
            read; the output there is zero and ``h_n``/``c_n`` are the states
            at each sequence's own last step.

        Returns
        -------
        out : ndarray of shape (batch, T, *spatial, filters)
            The top layer's h maps at every step (``return_sequences=True``).
        (h_n, c_n) : ndarrays of shape (num_layers, batch, *spatial, filters)
            The final states of every layer (``h_n[-1]`` is Keras's output
            with ``return_sequences=False``).
        """
        return self.run(X, (h0, c0), lengths)

    __call__ = forward

    def backward(self, grad_out, grad_h_n=None, grad_c_n=None, *, retain_cache=False):
        """Backpropagate through time from the last :meth:`forward`.

        Parameters
        ----------
        grad_out : array-like of shape (batch, T, *spatial, filters), or None
            (None: zero, for a loss on the final states only)
        grad_h_n, grad_c_n : array-like of shape (num_layers, batch, *spatial, filters), optional

        Returns
        -------
        grad_X : ndarray of shape (batch, T, *spatial, in_channels)
            Zero past each sequence's length. Parameter gradients (and
            ``"h0"``, ``"c0"``) are stored in :attr:`grads`.

        Once per forward unless ``retain_cache=True`` (see :meth:`clstm.LSTM.backward`).
        """
        return self.backward_state(grad_out, (grad_h_n, grad_c_n), retain_cache=retain_cache)

    def step(self, x_t, state=None):
        """Advance by one timestep: x_t (batch, *spatial, in_channels), state
        ``(h, c)`` as returned by the previous call (zeros when omitted).
        Returns ``(h_t, (h, c))``; equals :meth:`forward` step by step."""
        x = as_float_array(x_t, self.dtype, "x_t")
        if x.ndim != self.spatial_dims + 2:
            raise ValueError(f"x_t must be {self.spatial_dims + 2}-D (batch, *spatial, "
                             f"channels), got shape {x.shape}")
        if state is None:
            state = (None, None)
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise ValueError(f"state must be a tuple (h, c) as returned by step, got "
                             f"{state!r:.80}")
        out, states, _ = self._forward(x[:, None], tuple(state), None, False, keep_cache=False)
        return out[:, 0], states

    def get_config(self):
        """Constructor arguments: ``ConvLSTM(**net.get_config())`` builds the same network."""
        return {"in_channels": self.in_channels, "filters": self.filters,
                "kernel_size": self.kernel_size, "num_layers": self.num_layers,
                "spatial_dims": self.spatial_dims, "dtype": np.dtype(self.dtype).name,
                "dropout": self.dropout, "n_jobs": self.n_jobs,
                "unit_forget_bias": self.unit_forget_bias}

    def __repr__(self):
        extra = f", dropout={self.dropout}" if self.dropout else ""
        return (f"ConvLSTM({self.in_channels}, {self.filters}, kernel_size="
                f"{self.kernel_size}, num_layers={self.num_layers}{extra}, "
                f"dtype={np.dtype(self.dtype).name!r})")

    # -- forward --------------------------------------------------------------------
    def _geometry(self, spatial):
        """(map_h, map_w, ker_h, ker_w) of the scan: 1-D maps are 1 x width."""
        if self.spatial_dims == 1:
            return (1, spatial[0], 1, self.kernel_size[0])
        return tuple(spatial) + self.kernel_size

    def _check_maps(self, value, shape, name):
        """A state (or state gradient) of exactly `shape`, as (L, B, S * F); zeros if None."""
        if value is None:
            return np.zeros((shape[0], shape[1], int(np.prod(shape[2:]))), dtype=self.dtype)
        arr = as_float_array(as_numpy(value), self.dtype, name)
        if arr.shape != shape:
            raise ValueError(f"{name} must have shape (num_layers, batch, *spatial, filters) = "
                             f"{shape}, got {arr.shape}")
        check_finite(arr, name)
        return np.ascontiguousarray(arr).reshape(shape[0], shape[1], -1)

    def _validate_input(self, X, state, lengths):
        X = as_float_array(as_numpy(X), self.dtype, "X")
        layout = "(batch, T, height, width, channels)" if self.spatial_dims == 2 else \
            "(batch, T, width, channels)"
        if X.ndim != self.spatial_dims + 3:
            raise ValueError(f"X must be {self.spatial_dims + 3}-D {layout} for this "
                             f"ConvLSTM (spatial_dims={self.spatial_dims}), got a "
                             f"{X.ndim}-D array of shape {X.shape}")
        if X.shape[-1] != self.in_channels:
            raise ValueError(f"X has {X.shape[-1]} channels (last axis), this network "
                             f"expects in_channels={self.in_channels}")
        if min(X.shape[:-1]) == 0:
            raise ValueError(f"X must have at least one sequence, step and pixel, got "
                             f"shape {X.shape}")
        B, T = X.shape[:2]
        lengths = check_lengths(lengths, B, T)
        state_shape = (self.num_layers, B) + X.shape[2:-1] + (self.filters,)
        if state is None:
            state = (None, None)
        if not isinstance(state, (tuple, list)) or len(state) != 2:
            raise ValueError(f"state must be a tuple (h0, c0), got {state!r:.80}")
        state = tuple(self._check_maps(s, state_shape, f"{name}0")
                      for s, name in zip(state, self.state_names))
        return X, state, lengths

    def _forward(self, X, state, lengths, training, keep_cache=True):
        X, state, lengths = self._validate_input(X, state, lengths)
        B, T = X.shape[:2]
        spatial = X.shape[2:-1]
        S, F, L = int(np.prod(spatial)), self.filters, self.num_layers
        if lengths is None:
            order = np.arange(B)
            sorted_lengths = np.full(B, T)
            x = np.array(X.reshape(B, T, S, -1).transpose(1, 0, 2, 3), order="C")
        else:
            # sorted by decreasing length: the sequences active at step t are a
            # prefix, and so are their pixel rows
            order = np.argsort(-lengths, kind="stable")
            sorted_lengths = lengths[order]
            x = np.ascontiguousarray(X[order].reshape(B, T, S, -1).transpose(1, 0, 2, 3))
            x[np.arange(T)[:, None] >= sorted_lengths[None, :]] = 0.0
        check_finite(x, "X")
        state = tuple(np.ascontiguousarray(s[:, order]) for s in state)
        masks = None
        if training and self.dropout > 0 and L > 1:      # drawn before any split
            masks = [None] + [self._dropout_mask((T, B, S, F), self.dropout)
                              for _ in range(1, L)]

        _kernels()
        geometry = self._geometry(spatial)
        n_threads = resolve_n_threads(self.n_jobs, B)
        work = B * T * S * int(np.prod(self.kernel_size)) * F * F    # ~ recurrent FLOPs / 8
        # with a cache (a backward may follow): parts fixed by the shape, so the
        # gradients do not depend on n_jobs (see clstm._parallel); whole sequences,
        # about ROWS_PER_FIXED_PART pixel rows or more each
        if keep_cache:
            n_parts = min(B, fixed_part_count(B * S, work // max(1, MIN_WORK_PER_THREAD)))
        else:
            n_parts = _useful_threads(n_threads, B, work)
        chunks = split_rows(B, n_parts, weights=sorted_lengths)
        weights, values = self._forward_weights()
        ws = self._workspace if keep_cache else _Workspace()
        parts = [None] * len(chunks)

        def run(k):
            b0, b1 = chunks[k]
            n_steps = int(sorted_lengths[b0])
            sub_masks = None if masks is None else [
                None if m is None else np.ascontiguousarray(m[:n_steps, b0:b1]) for m in masks]
            parts[k] = self._forward_batch(
                np.ascontiguousarray(x[:n_steps, b0:b1]), [s[:, b0:b1] for s in state],
                sorted_lengths[b0:b1], sub_masks, weights, ws.chunk(k), geometry)

        with blas_single_threaded:
            run_parts(n_threads, [partial(run, k) for k in range(len(chunks))])

        out = np.zeros((B, T, S, F), dtype=self.dtype)
        finals = [np.empty((L, B, S, F), dtype=self.dtype) for _ in self.state_names]
        for (b0, b1), part in zip(chunks, parts):
            out_k = part["layers"][-1]["out"]
            out[b0:b1, :out_k.shape[0]] = out_k.reshape(-1, b1 - b0, S, F).transpose(1, 0, 2, 3)
            for final, part_final in zip(finals, part["finals"]):
                final[:, b0:b1] = part_final.reshape(L, b1 - b0, S, F)
        inverse = order
        if lengths is not None:
            inverse = np.argsort(order)
            out = out[inverse]
            finals = [f[:, inverse] for f in finals]
        out = out.reshape((B, T) + spatial + (F,))
        finals = tuple(f.reshape((L, B) + spatial + (F,)) for f in finals)
        cache = None
        if keep_cache:
            cache = {"parts": parts, "chunks": chunks, "order": order, "inverse": inverse,
                     "shape": (B, T), "spatial": spatial, "geometry": geometry,
                     "params": dict(self.params), "values": values}
        return out, finals, cache

    def _forward_batch(self, x, state, lengths, masks, weights, ws, geometry):
        """All layers over one sub-batch: x (T, b, S, C) time-major, sequences
        sorted by decreasing length; the scan sees b * S pixel rows."""
        T, b, S = x.shape[:3]
        rows, F = b * S, self.filters
        batch_sizes = ((lengths[None, :] > np.arange(T)[:, None]).sum(axis=1) * S).astype(np.intc)
        padded = bool(batch_sizes[-1] < rows)
        state = [np.ascontiguousarray(s).reshape(self.num_layers, rows, F) for s in state]
        finals = [np.empty((self.num_layers, rows, F), dtype=self.dtype)
                  for _ in self.state_names]
        last = np.repeat(lengths - 1, S)
        pixel_rows = np.arange(rows)
        cfg = dict(self._plan()["cfg"], reverse=False, column=0, conv=geometry)
        layers, inp = [], x.reshape(T, rows, -1)
        for layer in range(self.num_layers):
            input_mask = None if masks is None else masks[layer]
            if input_mask is not None:
                input_mask = input_mask.reshape(T, rows, F)
                inp = inp * input_mask
            cols = self._columns(ws, layer, inp, geometry)
            out = ws.get(("out", layer), (T, rows, F), self.dtype, zero=padded)
            arrays = {**weights[layer], **self._conv_buffers(ws, layer, T, rows, cols.shape[2],
                                                             backward=False),
                      "x": cols, "batch_sizes": batch_sizes, "h0": state[0][layer],
                      "c0": state[1][layer], "mask": None, "h_seq": out, "work": None}
            _kernels().forward(arrays, cfg)
            finals[0][layer] = out[last, pixel_rows]
            finals[1][layer] = arrays["c_seq"][last, pixel_rows]
            layers.append({"cols": cols, "n_channels": inp.shape[2], "input_mask": input_mask,
                           "out": out, "arrays": arrays})
            inp = out
        return {"layers": layers, "finals": finals, "batch_sizes": batch_sizes}

    def _columns(self, ws, layer, inp, geometry):
        """im2col of every step's maps at once: (T, rows, C) -> (T, rows, k*C)."""
        T, rows, C = inp.shape
        cols = ws.get(("cols", layer), (T, rows, int(np.prod(self.kernel_size)) * C),
                      self.dtype)
        _kernels().conv_columns(np.ascontiguousarray(inp).reshape(T * rows, C), geometry[:2],
                                geometry[2:], out=cols.reshape(T * rows, -1))
        return cols

    def _conv_buffers(self, ws, layer, T, rows, n_cols, backward):
        """The scan's activation / gradient buffers of one layer (Layer field names)."""
        F, dt = self.filters, self.dtype
        G, R = 4 * F, int(np.prod(self.kernel_size)) * F
        if not backward:
            shapes = {"gates": (T, rows, G), "c_seq": (T, rows, F), "h_cols": (rows, R)}
            key = ("fwd", layer)
        else:
            # (the gate gradients overwrite the saved gates: no buffer of their own)
            shapes = {"cell_work": (2 * F,), "work": (rows, F), "h_cols": (rows, R)}
            key = ("bwd", layer > 0)
        return {name: ws.get(key + (name,), shape, dt) for name, shape in shapes.items()}

    # -- backward -------------------------------------------------------------------
    def _backward(self, grad_out, grad_state, retain_cache=False, grad_inputs=True):
        cache = self._checked_cache()
        (B, T), spatial = cache["shape"], cache["spatial"]
        S, F, L = int(np.prod(spatial)), self.filters, self.num_layers
        order = cache["order"]
        expected = (B, T) + spatial + (F,)
        if grad_out is None:          # no gradient reaches the outputs
            grad_out = np.zeros(expected, dtype=self.dtype)
        else:
            grad_out = as_float_array(as_numpy(grad_out), self.dtype, "grad_out")
            if grad_out.shape != expected:
                raise ValueError(f"grad_out has shape {grad_out.shape}, expected {expected}")
            check_finite(grad_out, "grad_out")
        if grad_state is None:
            grad_state = (None, None)
        if len(grad_state) != 2:
            raise ValueError(f"the state gradient must be a tuple (grad_h_n, grad_c_n), got "
                             f"{len(grad_state)} entries")
        state_shape = (L, B) + spatial + (F,)
        grad_state = [self._check_maps(g, state_shape, f"grad_{name}_n")[:, order]
                      for g, name in zip(grad_state, self.state_names)]
        grad_out = grad_out.reshape(B, T, S, F)
        if cache["inverse"] is not order:
            grad_out = grad_out[order]
        weights = [self._scan_arrays(self._direction_params(k), backward=True)
                   for k in range(L)]
        chunks, parts = cache["chunks"], cache["parts"]
        results = [None] * len(chunks)
        ws = self._workspace

        def run(k):
            b0, b1 = chunks[k]
            n_steps = parts[k]["layers"][0]["cols"].shape[0]
            g = np.ascontiguousarray(grad_out[b0:b1, :n_steps].transpose(1, 0, 2, 3))
            results[k] = self._backward_batch(
                parts[k], g.reshape(n_steps, -1, F),
                [np.ascontiguousarray(s[:, b0:b1]).reshape(L, -1, F) for s in grad_state],
                weights, ws.chunk(k), cache["geometry"], retain_cache)

        cache["consumed"] = not retain_cache      # the kernels overwrite the saved gates
        with blas_single_threaded:
            run_parts(resolve_n_threads(self.n_jobs, B),
                      [partial(run, k) for k in range(len(chunks))])

        grads = results[0][1]
        for _, more, _ in results[1:]:        # in part order (bit-identical for any n_jobs)
            for name, value in more.items():
                grads[name] += value
        if not grad_inputs:
            self.grads = grads
            return None
        C = self.in_channels
        grad_X = np.zeros((B, T, S, C), dtype=self.dtype)
        grad_init = [np.empty((L, B, S, F), dtype=self.dtype) for _ in self.state_names]
        for (b0, b1), (grad_x, _, g_states) in zip(chunks, results):
            grad_X[b0:b1, :grad_x.shape[0]] = grad_x.reshape(
                -1, b1 - b0, S, C).transpose(1, 0, 2, 3)
            for full, part in zip(grad_init, g_states):
                full[:, b0:b1] = part.reshape(L, b1 - b0, S, F)
        inverse = cache["inverse"]
        if inverse is not order:
            grad_X = grad_X[inverse]
            grad_init = [g[:, inverse] for g in grad_init]
        for name, g in zip(self.state_names, grad_init):
            grads[f"{name}0"] = g.reshape((L, B) + spatial + (F,))
        self.grads = grads
        return grad_X.reshape((B, T) + spatial + (C,))

    def _backward_batch(self, part, g, grad_state, weights, ws, geometry, retain_cache=False):
        """BPTT over one sub-batch: g (T, rows, F); grad_state (per state,
        (L, rows, F)) becomes the gradients of the initial states in place;
        retain_cache: the kernels overwrite a copy of the saved gates.
        Returns (grad_x (T, rows, C), grads, grad_state)."""
        T, rows, F = g.shape
        G = 4 * F
        cfg = dict(self._plan()["cfg"], reverse=False, column=0, conv=geometry,
                   accumulate_grad_x=False)
        grads = {name: np.zeros(value.shape, value.dtype) for name, value in self.params.items()}
        for layer in reversed(range(self.num_layers)):
            lc = part["layers"][layer]
            cols, n_channels = lc["cols"], lc["n_channels"]
            n_cols = cols.shape[2]
            grad_cols = np.empty_like(cols)
            grad_w_ih = np.zeros((G, n_cols), dtype=self.dtype)
            grad_w_hh = np.zeros((G, weights[layer]["weight_hh"].shape[1]), dtype=self.dtype)
            arrays = {**lc["arrays"], **weights[layer],
                      **self._conv_buffers(ws, layer, T, rows, n_cols, backward=True),
                      "grad_h_seq": g, "grad_h": grad_state[0][layer],
                      "grad_c": grad_state[1][layer], "grad_x": grad_cols,
                      "grad_bias": grads[f"bias_l{layer}"], "grad_weight_ih": grad_w_ih,
                      "grad_weight_hh": grad_w_hh}
            if retain_cache:
                arrays["gates"] = arrays["gates"].copy()
            _kernels().backward(arrays, cfg)
            grads[f"kernel_l{layer}"] += grad_w_ih.T.reshape(self.params[f"kernel_l{layer}"].shape)
            grads[f"recurrent_kernel_l{layer}"] += grad_w_hh.T.reshape(
                self.params[f"recurrent_kernel_l{layer}"].shape)
            # col2im: each column's gradient back to the pixel its tap read
            grad_in = _kernels().conv_columns_adjoint(
                grad_cols.reshape(T * rows, n_cols), geometry[:2], geometry[2:],
                n_channels).reshape(T, rows, n_channels)
            if lc["input_mask"] is not None:
                grad_in *= lc["input_mask"]
            g = grad_in
        return g, grads, grad_state


def _check_kernel_size(kernel_size, spatial_dims):
    """A tuple of `spatial_dims` odd positive ints (an int: on every axis)."""
    if isinstance(kernel_size, (numbers.Integral, np.integer)) and \
            not isinstance(kernel_size, (bool, np.bool_)):
        kernel_size = (int(kernel_size),) * spatial_dims
    if not isinstance(kernel_size, (tuple, list)) or len(kernel_size) != spatial_dims or \
            not all(isinstance(k, (numbers.Integral, np.integer))
                    and not isinstance(k, (bool, np.bool_)) for k in kernel_size):
        raise ValueError(f"kernel_size must be an int or a tuple of {spatial_dims} ints "
                         f"(one per spatial axis), got {kernel_size!r}")
    kernel_size = tuple(int(k) for k in kernel_size)
    if any(k < 1 or k % 2 == 0 for k in kernel_size):
        raise ValueError(f"kernel_size must be odd and positive on every axis ('same' "
                         f"padding of an even kernel is asymmetric; not supported), got "
                         f"{kernel_size}")
    return kernel_size


def _orthogonal(rng, n_rows, n_cols):
    """A (n_rows, n_cols) matrix with orthonormal rows or columns (Keras's
    Orthogonal initialiser: QR of a Gaussian matrix, signs fixed by diag(R))."""
    a = rng.standard_normal((max(n_rows, n_cols), min(n_rows, n_cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    return q if n_rows >= n_cols else q.T


def _useful_threads(n_threads, batch_size, work):
    """Threads worth using: at least a sequence (a whole set of maps) each,
    and enough work (~ recurrent FLOPs / 8) to pay for waking them (see clstm._rnn)."""
    if n_threads <= 1 or work < MIN_WORK_PER_THREAD:
        return 1
    return int(max(1, min(n_threads, batch_size, work // MIN_WORK_PER_THREAD)))
