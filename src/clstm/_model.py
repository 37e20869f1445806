"""The trainable model under the estimators: clstm.LSTM + a Dense output head.

The head reads either the last hidden state of every sequence (for a
bidirectional network the concatenation of the forward direction's state at
the sequence's own last step and the reverse direction's state at t = 0, i.e.
the top layer's ``h_n``) or, with ``return_sequences=True``, the output at
every step. Loss and gradient of a mini-batch, with optional truncated BPTT,
are computed here; the estimator only batches, updates and bookkeeps.
"""

import numpy as np

from clstm._losses import LOSSES
from clstm._lstm import LSTM

__all__ = ["SequenceModel"]

_HEAD_WEIGHT = "head.weight"
_HEAD_BIAS = "head.bias"


class SequenceModel:
    """LSTM network + Dense head + loss.

    Parameters
    ----------
    input_size, hidden_size, num_layers, bidirectional, dropout,
    recurrent_dropout, dtype, n_jobs : as :class:`clstm.LSTM`.
    n_outputs : int
        Width of the head.
    loss : {"squared_error", "log_loss", "softmax"}
    return_sequences : bool
        Head on every step instead of on the last state.
    rng : numpy RandomState
        Seeds the network (one int drawn) and the head (Glorot uniform, as
        Keras' Dense; zero bias).
    """

    def __init__(self, input_size, hidden_size, num_layers, bidirectional, dropout,
                 recurrent_dropout, dtype, n_jobs, n_outputs, loss, return_sequences, rng):
        self.lstm = LSTM(input_size, hidden_size, num_layers=num_layers,
                         bidirectional=bidirectional, dtype=dtype,
                         random_state=int(rng.randint(np.iinfo(np.int32).max)),
                         dropout=dropout, recurrent_dropout=recurrent_dropout, n_jobs=n_jobs)
        fan_in = hidden_size * self.lstm.num_directions
        limit = np.sqrt(6.0 / (fan_in + n_outputs))
        self.head_weight = rng.uniform(-limit, limit, (fan_in, n_outputs)).astype(dtype)
        self.head_bias = np.zeros(n_outputs, dtype=dtype)
        self.loss = loss
        self.return_sequences = bool(return_sequences)

    # -- parameters ---------------------------------------------------------
    @property
    def dtype(self):
        return self.lstm.dtype

    @property
    def params(self):
        """Live dict name -> array of every trainable parameter (updated in place)."""
        params = {f"lstm.{k}": v for k, v in self.lstm.params.items()}
        params[_HEAD_WEIGHT] = self.head_weight
        params[_HEAD_BIAS] = self.head_bias
        return params

    def weight_names(self):
        """Parameters under the L2 penalty: weight matrices, not biases (as scikit-learn's MLP)."""
        return [k for k in self.params if k.startswith("lstm.weight_") or k == _HEAD_WEIGHT]

    def snapshot(self):
        return {k: v.copy() for k, v in self.params.items()}

    def restore(self, snapshot):
        """Copy a snapshot back into the live arrays (their identity is kept)."""
        for k, v in self.params.items():
            v[...] = snapshot[k]
        self.lstm._cache = None

    def all_finite(self):
        return all(np.isfinite(v).all() for v in self.params.values())

    # -- forward ------------------------------------------------------------
    def _features(self, out, h_n):
        if self.return_sequences:
            return out
        D = self.lstm.num_directions
        return np.concatenate(list(h_n[-D:]), axis=-1) if D > 1 else h_n[-1]

    def predict_raw(self, X, lengths):
        """Head outputs (B, n_outputs) or (B, T, n_outputs), inference mode, no cache kept."""
        out, (h_n, _), _ = self.lstm._forward(X, None, None, _ragged_only(lengths, X.shape[1]),
                                              False)
        feats = self._features(out, h_n)
        return feats @ self.head_weight + self.head_bias

    # -- loss and gradient --------------------------------------------------
    def loss_and_grad(self, X, lengths, Y, W, alpha=0.0, tbptt_steps=None, need_grad=True):
        """Mini-batch loss (weighted mean + alpha/2 * ||weights||^2) and gradients.

        X (B, T, F), lengths (B,), Y targets and W entry weights: (B, ...) for
        sequence-to-one, (B, T, ...) per step (W = 0 past each length).
        ``tbptt_steps`` k splits time into chunks of k steps that carry the
        state forward, detached (no gradient crosses a chunk boundary).
        """
        lstm = self.lstm
        loss_fn = LOSSES[self.loss]
        B, T, _ = X.shape
        norm = float(np.sum(W, dtype=np.float64))
        k = T if tbptt_steps is None else min(int(tbptt_steps), T)
        state_shape = (lstm.num_layers * lstm.num_directions, B, lstm.hidden_size)
        h = np.zeros(state_shape, dtype=self.dtype)
        c = np.zeros(state_shape, dtype=self.dtype)
        grads = {name: np.zeros_like(v) for name, v in self.params.items()} if need_grad else None
        loss = 0.0
        D = lstm.num_directions
        for start in range(0, T, k):
            stop = min(start + k, T)
            active = np.flatnonzero(lengths > start)
            whole = active.size == B
            len_c = np.minimum(lengths[active] - start, stop - start)
            Xc = X[:, start:stop] if whole else X[active, start:stop]
            h0 = None if start == 0 else (h if whole else h[:, active])
            c0 = None if start == 0 else (c if whole else c[:, active])
            if self.return_sequences:
                rows = slice(None) if whole else active
                Yc, Wc = Y[rows, start:stop], W[rows, start:stop]
            else:
                # only sequences whose last step lies in this chunk see the loss
                ends = np.flatnonzero(lengths[active] <= stop)
                Yc, Wc = Y[active[ends]], W[active[ends]]
            len_arg = _ragged_only(len_c, stop - start)
            if need_grad:
                out, (h_n, c_n) = lstm.forward(Xc, h0, c0, len_arg)
            else:
                out, (h_n, c_n), _ = lstm._forward(Xc, h0, c0, len_arg, lstm.training)
            if whole:
                h, c = h_n, c_n
            else:
                h[:, active], c[:, active] = h_n, c_n
            if self.return_sequences:
                feats = out
            else:
                if ends.size == 0:
                    continue
                feats = self._features(out, h_n)[ends]
            Z = feats @ self.head_weight + self.head_bias
            chunk_loss, grad_Z = loss_fn(Z, Yc, Wc, norm)
            loss += chunk_loss
            if not need_grad:
                continue
            n_out = Z.shape[-1]
            grads[_HEAD_WEIGHT] += feats.reshape(-1, feats.shape[-1]).T @ grad_Z.reshape(-1, n_out)
            grads[_HEAD_BIAS] += grad_Z.reshape(-1, n_out).sum(axis=0)
            grad_feats = grad_Z @ self.head_weight.T
            if self.return_sequences:
                lstm.backward(grad_feats)
            else:
                grad_h_n = np.zeros_like(h_n)
                H = lstm.hidden_size
                for d in range(D):
                    grad_h_n[-D + d, ends] = grad_feats[:, d * H:(d + 1) * H]
                lstm.backward(np.zeros_like(out), grad_h_n=grad_h_n)
            for name, g in lstm.grads.items():
                if name not in ("h0", "c0"):
                    grads[f"lstm.{name}"] += g
        if alpha:
            params = self.params
            for name in self.weight_names():
                w = params[name]
                loss += 0.5 * alpha * float(np.sum(np.square(w, dtype=np.float64)))
                if need_grad:
                    grads[name] += w.dtype.type(alpha) * w
        lstm._cache = None     # free the activations of the last chunk
        return loss, grads


def _ragged_only(lengths, n_steps):
    """None when every sequence fills all n_steps: the network then skips
    sorting and padding (same result, less work)."""
    if lengths is None or np.all(np.asarray(lengths) == n_steps):
        return None
    return lengths
