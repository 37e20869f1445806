"""clstm.LSTM: a stacked, optionally bidirectional LSTM network (no training loop).

The LSTM family on the shared scan (clstm._rnn, clstm._scan): torch.nn.LSTM
(with its projection, LSTMP) plus peepholes, coupled input-forget gates and
layer normalisation, in any combination. The cell's math is in
_cell_rows.h; this module declares its parameters and how they reach the scan.
"""

import numbers

import numpy as np

from clstm._rnn import RecurrentNetwork, _kernels, scan_weight_arrays

__all__ = ["LSTM"]


class LSTM(RecurrentNetwork):
    """Multi-layer LSTM with the semantics and parameter layout of ``torch.nn.LSTM``.

    Parameters
    ----------
    input_size : int
        Number of features of each timestep of ``X``.
    hidden_size : int
        Number of cell units ``H`` of every layer and direction.
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
        batch shape and the cores available; -1 uses all cores. Outputs and
        gradients are bit-identical for every value (a forward that keeps a
        cache splits the batch by its shape alone; README, "Threads").
    proj_size : int, default=0
        If > 0, an LSTM with projection (LSTMP, Sak et al. 2014) exactly as
        ``torch.nn.LSTM(proj_size=...)``: ``h_t = W_hr (o * tanh(c_t))`` has
        ``proj_size`` units (``weight_hr_l{k}`` of shape (proj_size, H)); the
        recurrent weights and the next layer read it. Must be < hidden_size.
    peephole : bool, default=False
        Peephole connections (Gers & Schmidhuber 2000): ``weight_peephole_l{k}``
        of shape (3H,), blocks (i, f, o); i and f add ``p * c_{t-1}`` to their
        pre-activation, o adds ``p * c_t``. With coupled gates: (2H,), blocks (i, o).
    coupled_gates : bool, default=False
        Coupled input-forget gate (CIFG; Greff et al. 2017): ``f = 1 - i``, no
        forget-gate parameters: gate blocks (i, g, o), weights of 3H rows.
    layer_norm : bool, default=False
        Layer normalisation (Ba et al. 2016): ``a = ln(x W_ih^T) * weight_ln_ih +
        bias_ih + ln(h W_hh^T) * weight_ln_hh + bias_hh`` (each product
        normalised over its G = 4H (CIFG: 3H) entries), and ``m_t = o *
        tanh(ln(c_t) * weight_ln_c + bias_ln_c)`` (c_t normalised over its H
        entries; the unnormalised c_t is carried). ``ln(v) = (v - mean(v)) /
        sqrt(var(v) + 1e-5)``. Gains start at 1, ``bias_ln_c`` at 0.

    Attributes
    ----------
    params : dict
        The parameters by torch name (``weight_ih_l0``, ``bias_hh_l1_reverse``, ...).
    grads : dict
        After :meth:`backward`: the gradient of every parameter (same keys and
        shapes as :meth:`state_dict`) and of the initial states ``"h0"``, ``"c0"``.
    training : bool
        Dropout applies only when True (see :meth:`train`, :meth:`eval`).
    """

    state_names = ("h", "c")

    def __init__(self, input_size, hidden_size, num_layers=1, bidirectional=False,
                 dtype="float32", random_state=None, dropout=0.0,
                 recurrent_dropout=0.0, n_jobs=None, proj_size=0, peephole=False,
                 coupled_gates=False, layer_norm=False):
        super().__init__(input_size, hidden_size, num_layers=num_layers,
                         bidirectional=bidirectional, dtype=dtype,
                         random_state=random_state, dropout=dropout,
                         recurrent_dropout=recurrent_dropout, n_jobs=n_jobs)
        if isinstance(proj_size, (bool, np.bool_)) or \
                not isinstance(proj_size, (numbers.Integral, np.integer)):
            raise TypeError(f"proj_size must be a non-negative int, got {proj_size!r}")
        if not 0 <= proj_size < self.hidden_size:
            raise ValueError(f"proj_size must be in [0, hidden_size={self.hidden_size}) "
                             f"(0: no projection), got {proj_size}")
        self.proj_size = int(proj_size)
        for name, flag in (("peephole", peephole), ("coupled_gates", coupled_gates),
                           ("layer_norm", layer_norm)):
            if not isinstance(flag, (bool, np.bool_)):
                raise TypeError(f"{name} must be a bool, got {flag!r}")
        self.peephole = bool(peephole)
        self.coupled_gates = bool(coupled_gates)
        self.layer_norm = bool(layer_norm)
        self._init_params()

    # -- the cell -----------------------------------------------------------------
    @property
    def output_size(self):
        """Units of h per direction: proj_size if > 0, else hidden_size."""
        return self.proj_size or self.hidden_size

    def _gate_count(self):
        return (3 if self.coupled_gates else 4) * self.hidden_size

    def _cell_shapes(self, layer):
        H, P, G = self.hidden_size, self.output_size, self._gate_count()
        shapes = {"weight_ih": (G, self._layer_input_size(layer)), "weight_hh": (G, P),
                  "bias_ih": (G,), "bias_hh": (G,)}
        if self.proj_size:
            shapes["weight_hr"] = (P, H)
        if self.peephole:
            shapes["weight_peephole"] = ((2 if self.coupled_gates else 3) * H,)
        if self.layer_norm:
            shapes.update(weight_ln_ih=(G,), weight_ln_hh=(G,), weight_ln_c=(H,),
                          bias_ln_c=(H,))
        return shapes

    def _scan_config(self):
        scan = _kernels()
        variant = ((scan.PEEPHOLE if self.peephole else 0)
                   | (scan.COUPLED if self.coupled_gates else 0)
                   | (scan.LN_CELL if self.layer_norm else 0))
        return {"kind": scan.KIND_LSTM, "variant": variant, "ln_gates": self.layer_norm,
                "hidden": self.hidden_size, "out_size": self.output_size,
                "n_gates": self._gate_count()}

    def _scan_arrays(self, p, backward):
        return scan_weight_arrays(p, p["bias_ih"] + p["bias_hh"], backward,
                                  separate=self.layer_norm)

    def _refresh_scan_arrays(self, arrays, p):
        np.add(p["bias_ih"], p["bias_hh"], out=arrays["bias"])
        return True

    # -- public API -----------------------------------------------------------------
    def forward(self, X, h0=None, c0=None, lengths=None):
        """Run the network over whole sequences.

        Parameters
        ----------
        X : array-like of shape (batch, T, input_size)
            Batch-first sequences. Values past a sequence's length are ignored.
        h0 : array-like of shape (num_layers * D, batch, output_size), optional
        c0 : array-like of shape (num_layers * D, batch, hidden_size), optional
            Initial states (zeros when omitted); D = 2 if bidirectional.
        lengths : array-like of int, shape (batch,), optional
            Length of each sequence, in [1, T]. The output past a length is
            zero, ``h_n``/``c_n`` are the states at each sequence's own last
            step, and the reverse direction starts there (packed semantics).

        Returns
        -------
        out : ndarray of shape (batch, T, D * output_size)
        (h_n, c_n) : ndarrays of shape (num_layers * D, batch, output_size / hidden_size)
        """
        return self.run(X, (h0, c0), lengths)

    __call__ = forward

    def backward(self, grad_out, grad_h_n=None, grad_c_n=None, *, retain_cache=False):
        """Backpropagate through time from the last :meth:`forward`.

        Parameters
        ----------
        grad_out : array-like of shape (batch, T, D * output_size), or None
            Gradient of the loss with respect to ``out`` (None: zero, for a
            loss on the final states only).
        grad_h_n, grad_c_n : array-like, shapes of ``h_n``, ``c_n``, optional
            Gradients with respect to ``h_n`` and ``c_n`` (zero when omitted).
        retain_cache : bool, default=False
            The backward overwrites the gate activations saved by the forward
            with their gradients (it needs no second buffer of that size), so
            a second ``backward`` for the same forward raises. With True it
            works on a copy and keeps them (as torch's ``retain_graph``).

        Returns
        -------
        grad_X : ndarray of shape (batch, T, input_size)
            Gradient with respect to ``X`` (zero past each sequence's length).
            Parameter gradients are stored in :attr:`grads`.
        """
        return self.backward_state(grad_out, (grad_h_n, grad_c_n), retain_cache=retain_cache)

    def get_config(self):
        config = super().get_config()
        config.update(proj_size=self.proj_size, peephole=self.peephole,
                      coupled_gates=self.coupled_gates, layer_norm=self.layer_norm)
        return config

    def _repr_options(self):
        extra = super()._repr_options()
        for name in ("proj_size", "peephole", "coupled_gates", "layer_norm"):
            if getattr(self, name):
                extra += f", {name}={getattr(self, name)!r}"
        return extra
