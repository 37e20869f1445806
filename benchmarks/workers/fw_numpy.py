"""Pure-NumPy peer: a batched LSTM (hoisted input projection, one recurrent GEMM
per step, whole-sequence weight-gradient GEMMs), Dense(1) head, MSE, Adam.

This is the "what plain NumPy gets you" baseline, written the way a careful
NumPy user would; it shares no code with clstm's kernels, and its agreement with
clstm is an independent check (clstm's own oracle, ``clstm._reference``, is a
deliberately unbatched per-sequence implementation and too slow to time).
"""

import numpy as np

from adam import Adam


def setup(n_threads):
    pass


def version():
    return f"numpy {np.__version__}"


def _sigmoid(x):
    return 0.5 * np.tanh(0.5 * x) + 0.5


def layer_forward(x, w_ih, w_hh, b):
    """x (T, B, I) -> hs (T, B, H), gates (T, B, 4H) activated, cs (T, B, H)."""
    T, B, _ = x.shape
    H = w_hh.shape[1]
    gates = (x.reshape(T * B, -1) @ w_ih.T).reshape(T, B, 4 * H)
    gates += b
    hs = np.empty((T, B, H), dtype=x.dtype)
    cs = np.empty((T, B, H), dtype=x.dtype)
    h = np.zeros((B, H), dtype=x.dtype)
    c = np.zeros((B, H), dtype=x.dtype)
    w_hh_t = np.ascontiguousarray(w_hh.T)
    for t in range(T):
        z = gates[t]
        z += h @ w_hh_t
        z[:, :2 * H] = _sigmoid(z[:, :2 * H])
        z[:, 2 * H:3 * H] = np.tanh(z[:, 2 * H:3 * H])
        z[:, 3 * H:] = _sigmoid(z[:, 3 * H:])
        i, f, g, o = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
        c = f * c + i * g
        h = o * np.tanh(c)
        hs[t] = h
        cs[t] = c
    return hs, gates, cs


def layer_backward(x, w_ih, w_hh, hs, gates, cs, dhs, dh_last):
    """BPTT of one layer; dhs (T, B, H) upstream grads of hs (may be None)."""
    T, B, _ = x.shape
    H = w_hh.shape[1]
    dG = np.empty_like(gates)
    dh = dh_last.copy()
    dc = np.zeros_like(dh)
    for t in range(T - 1, -1, -1):
        if dhs is not None:
            dh += dhs[t]
        z = gates[t]
        i, f, g, o = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
        tc = np.tanh(cs[t])
        c_prev = cs[t - 1] if t > 0 else np.zeros_like(dc)
        dc += dh * o * (1.0 - tc * tc)
        d = dG[t]
        d[:, :H] = dc * g * i * (1.0 - i)
        d[:, H:2 * H] = dc * c_prev * f * (1.0 - f)
        d[:, 2 * H:3 * H] = dc * i * (1.0 - g * g)
        d[:, 3 * H:] = dh * tc * o * (1.0 - o)
        dc *= f
        dh = d @ w_hh
    dG2 = dG.reshape(T * B, 4 * H)
    grad_w_ih = dG2.T @ x.reshape(T * B, -1)
    h_prev = np.concatenate([np.zeros((1, B, H), dtype=x.dtype), hs[:-1]]).reshape(T * B, H)
    grad_w_hh = dG2.T @ h_prev
    grad_b = dG2.sum(axis=0)
    grad_x = (dG2 @ w_ih).reshape(x.shape)
    return grad_x, grad_w_ih, grad_w_hh, grad_b


class Runner:
    def __init__(self, cfg, params, data, n_threads):
        self.cfg = cfg
        self.p = {k: v.copy() for k, v in params.items()}
        self.p["head_w"] = data["head_w"].copy()
        self.p["head_b"] = data["head_b"].copy()
        self.X = np.ascontiguousarray(data["X"])
        self.y = data["y"]
        self._adam = None

    def params(self):
        return self.p

    def _forward(self):
        p = self.p
        inp = np.ascontiguousarray(self.X.transpose(1, 0, 2))
        caches = []
        for k in range(self.cfg.L):
            w_ih, w_hh = p[f"weight_ih_l{k}"], p[f"weight_hh_l{k}"]
            hs, gates, cs = layer_forward(inp, w_ih, w_hh, p[f"bias_ih_l{k}"] + p[f"bias_hh_l{k}"])
            caches.append((inp, hs, gates, cs))
            inp = hs
        return inp, caches

    def infer(self):
        hs, _ = self._forward()
        return np.ascontiguousarray(hs.transpose(1, 0, 2))

    def loss_and_grads(self):
        p = self.p
        hs, caches = self._forward()
        last = hs[-1]
        pred = last @ p["head_w"].T + p["head_b"]
        diff = pred - self.y
        loss = float(np.mean(diff * diff))
        d_pred = (2.0 / diff.size) * diff
        grads = {"head_w": d_pred.T @ last, "head_b": d_pred.sum(axis=0)}
        dh_last = d_pred @ p["head_w"]
        dhs = None
        for k in reversed(range(self.cfg.L)):
            inp, hs_k, gates, cs = caches[k]
            gx, gwi, gwh, gb = layer_backward(inp, p[f"weight_ih_l{k}"], p[f"weight_hh_l{k}"],
                                              hs_k, gates, cs, dhs, dh_last)
            grads[f"weight_ih_l{k}"], grads[f"weight_hh_l{k}"] = gwi, gwh
            grads[f"bias_ih_l{k}"] = gb
            grads[f"bias_hh_l{k}"] = gb
            dhs, dh_last = gx, np.zeros_like(dh_last)
        return loss, grads

    def train_step(self):
        loss, grads = self.loss_and_grads()
        if self._adam is None:
            self._adam = Adam(self.p)
        self._adam.step(grads)
        return loss
