"""clstm.GRU: a stacked, optionally bidirectional GRU network (no training loop).

torch.nn.GRU's cell (Cho et al. 2014; gates r, z, n, the reset gate applied
to W_hn h + b_hn) on the shared scan (clstm._rnn, clstm._scan). The cell's
math is in _cell_rows.h; this module declares its parameters and how they
reach the scan.
"""

import numpy as np

from clstm._rnn import RecurrentNetwork, _kernels, scan_weight_arrays

__all__ = ["GRU"]


class GRU(RecurrentNetwork):
    """Multi-layer GRU with the semantics and parameter layout of ``torch.nn.GRU``.

    ``r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)``,
    ``z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)``,
    ``n = tanh(W_in x + b_in + r * (W_hn h + b_hn))``, ``h' = (1 - z) * n + z * h``.
    Parameters ``weight_ih_l{k}`` (3H, input), ``weight_hh_l{k}`` (3H, H),
    ``bias_ih_l{k}``, ``bias_hh_l{k}`` (3H,), gate blocks (r, z, n).

    The constructor arguments are those of :class:`clstm.LSTM` without the
    LSTM-only options; ``recurrent_dropout`` masks ``h_{t-1}`` in the
    recurrent product only (the update ``z * h`` carries the unmasked state).

    Attributes
    ----------
    grads : dict
        After :meth:`backward`: the gradient of every parameter and of ``"h0"``.
    """

    state_names = ("h",)

    def __init__(self, input_size, hidden_size, num_layers=1, bidirectional=False,
                 dtype="float32", random_state=None, dropout=0.0,
                 recurrent_dropout=0.0, n_jobs=None):
        super().__init__(input_size, hidden_size, num_layers=num_layers,
                         bidirectional=bidirectional, dtype=dtype,
                         random_state=random_state, dropout=dropout,
                         recurrent_dropout=recurrent_dropout, n_jobs=n_jobs)
        self._init_params()

    # -- the cell -----------------------------------------------------------------
    def _gate_count(self):
        return 3 * self.hidden_size

    def _cell_shapes(self, layer):
        G, H = self._gate_count(), self.hidden_size
        return {"weight_ih": (G, self._layer_input_size(layer)), "weight_hh": (G, H),
                "bias_ih": (G,), "bias_hh": (G,)}

    def _scan_config(self):
        scan = _kernels()
        return {"kind": scan.KIND_GRU, "variant": 0, "ln_gates": False,
                "hidden": self.hidden_size, "out_size": self.hidden_size,
                "n_gates": self._gate_count()}

    def _scan_arrays(self, p, backward):
        arrays = scan_weight_arrays(p, np.empty_like(p["bias_ih"]), backward, separate=True)
        arrays["bias_hn"] = np.empty_like(p["bias_hh"][2 * self.hidden_size:])
        self._refresh_scan_arrays(arrays, p)
        return arrays

    def _refresh_scan_arrays(self, arrays, p):
        # r and z see b_ih + b_hh; n sees b_in, and b_hn inside r * (W_hn h + b_hn)
        H2 = 2 * self.hidden_size
        b_ih, b_hh, bias = p["bias_ih"], p["bias_hh"], arrays["bias"]
        np.add(b_ih[:H2], b_hh[:H2], out=bias[:H2])
        bias[H2:] = b_ih[H2:]
        np.copyto(arrays["bias_hn"], b_hh[H2:])
        return True

    # -- public API -----------------------------------------------------------------
    def forward(self, X, h0=None, lengths=None):
        """Run the network over whole sequences.

        Parameters
        ----------
        X : array-like of shape (batch, T, input_size)
        h0 : array-like of shape (num_layers * D, batch, hidden_size), optional
            Initial state (zeros when omitted).
        lengths : array-like of int, shape (batch,), optional
            Length of each sequence (packed-sequence semantics, as clstm.LSTM).

        Returns
        -------
        out : ndarray of shape (batch, T, D * hidden_size)
        h_n : ndarray of shape (num_layers * D, batch, hidden_size)
        """
        out, (h_n,) = self.run(X, (h0,), lengths)
        return out, h_n

    __call__ = forward

    def backward(self, grad_out, grad_h_n=None, *, retain_cache=False):
        """Backpropagate through time from the last :meth:`forward`; returns
        grad_X, parameter gradients (and ``"h0"``) in :attr:`grads`. Once per
        forward unless ``retain_cache=True`` (see :meth:`clstm.LSTM.backward`)."""
        return self.backward_state(grad_out, (grad_h_n,), retain_cache=retain_cache)
