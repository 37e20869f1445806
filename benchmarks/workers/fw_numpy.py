"""Pure-NumPy peer: a batched LSTM (hoisted input projection, one recurrent GEMM
per step, whole-sequence weight-gradient GEMMs), Dense(1) head, MSE, Adam.
The same for the peephole / coupled-gate (CIFG) LSTM variants and for a GRU
(torch.nn.GRU semantics); not for projection or layer normalisation.

This is the "what plain NumPy gets you" baseline, written the way a careful
NumPy user would; it shares no code with clstm's kernels, and its agreement with
clstm is an independent check (clstm's own oracle, ``clstm._reference``, is a
deliberately unbatched per-sequence implementation and too slow to time).
"""

import numpy as np

from adam import Adam
from common import CELLS


def setup(n_threads):
    pass


def version():
    return f"numpy {np.__version__}"


def supports(cell):
    if cell.proj or cell.layer_norm:
        raise NotImplementedError(f"the NumPy peer has no {cell.title}")


def _sigmoid(x):
    return 0.5 * np.tanh(0.5 * x) + 0.5


def _blocks(H, coupled):
    """Column slices of the gate blocks i, f, g, o (torch order; coupled: i, g, o, f None)."""
    if coupled:
        return slice(0, H), None, slice(H, 2 * H), slice(2 * H, 3 * H)
    return slice(0, H), slice(H, 2 * H), slice(2 * H, 3 * H), slice(3 * H, 4 * H)


def _peepholes(peep, H, coupled):
    """p_i, p_f, p_o of a peephole vector (blocks i, f, o; coupled: i, o and p_f None)."""
    if peep is None:
        return None, None, None
    if coupled:
        return peep[:H], None, peep[H:]
    return peep[:H], peep[H:2 * H], peep[2 * H:]


def layer_forward(x, w_ih, w_hh, b, peep=None, coupled=False):
    """x (T, B, I) -> hs (T, B, H), gates (T, B, G) activated, cs (T, B, H)."""
    T, B, _ = x.shape
    G, H = w_hh.shape
    si, sf, sg, so = _blocks(H, coupled)
    s_sig = slice(0, H if coupled else 2 * H)          # i (and f): sigmoid before c_t
    p_i, p_f, p_o = _peepholes(peep, H, coupled)
    gates = (x.reshape(T * B, -1) @ w_ih.T).reshape(T, B, G)
    gates += b
    hs = np.empty((T, B, H), dtype=x.dtype)
    cs = np.empty((T, B, H), dtype=x.dtype)
    h = np.zeros((B, H), dtype=x.dtype)
    c = np.zeros((B, H), dtype=x.dtype)
    w_hh_t = np.ascontiguousarray(w_hh.T)
    for t in range(T):
        z = gates[t]
        z += h @ w_hh_t
        if peep is not None:
            z[:, si] += p_i * c
            if not coupled:
                z[:, sf] += p_f * c
        z[:, s_sig] = _sigmoid(z[:, s_sig])
        z[:, sg] = np.tanh(z[:, sg])
        i, g = z[:, si], z[:, sg]
        f = 1.0 - i if coupled else z[:, sf]
        c = f * c + i * g
        if peep is not None:
            z[:, so] += p_o * c
        z[:, so] = _sigmoid(z[:, so])
        h = z[:, so] * np.tanh(c)
        hs[t] = h
        cs[t] = c
    return hs, gates, cs


def layer_backward(x, w_ih, w_hh, hs, gates, cs, dhs, dh_last, peep=None, coupled=False):
    """BPTT of one layer; dhs (T, B, H) upstream grads of hs (may be None).
    Returns grad_x, grad_w_ih, grad_w_hh, grad_b, grad_peep (None without peepholes)."""
    T, B, _ = x.shape
    H = w_hh.shape[1]
    si, sf, sg, so = _blocks(H, coupled)
    p_i, p_f, p_o = _peepholes(peep, H, coupled)
    dG = np.empty_like(gates)
    dh = dh_last.copy()
    dc = np.zeros_like(dh)
    for t in range(T - 1, -1, -1):
        if dhs is not None:
            dh += dhs[t]
        z = gates[t]
        i, g, o = z[:, si], z[:, sg], z[:, so]
        f = 1.0 - i if coupled else z[:, sf]
        tc = np.tanh(cs[t])
        c_prev = cs[t - 1] if t > 0 else np.zeros_like(dc)
        d = dG[t]
        d[:, so] = dh * tc * o * (1.0 - o)
        dc += dh * o * (1.0 - tc * tc)
        if peep is not None:
            dc += d[:, so] * p_o
        if coupled:                                    # f = 1 - i
            d[:, si] = dc * (g - c_prev) * i * (1.0 - i)
        else:
            d[:, si] = dc * g * i * (1.0 - i)
            d[:, sf] = dc * c_prev * f * (1.0 - f)
        d[:, sg] = dc * i * (1.0 - g * g)
        dc *= f
        if peep is not None:
            dc += d[:, si] * p_i
            if not coupled:
                dc += d[:, sf] * p_f
        dh = d @ w_hh
    dG2 = dG.reshape(T * B, -1)
    grad_w_ih = dG2.T @ x.reshape(T * B, -1)
    h_prev = np.concatenate([np.zeros((1, B, H), dtype=x.dtype), hs[:-1]]).reshape(T * B, H)
    grad_w_hh = dG2.T @ h_prev
    grad_b = dG2.sum(axis=0)
    grad_x = (dG2 @ w_ih).reshape(x.shape)
    grad_peep = None
    if peep is not None:
        c_prev = np.concatenate([np.zeros((1, B, H), dtype=x.dtype), cs[:-1]])
        sums = [np.einsum("tbh,tbh->h", dG[..., si], c_prev)]
        if not coupled:
            sums.append(np.einsum("tbh,tbh->h", dG[..., sf], c_prev))
        sums.append(np.einsum("tbh,tbh->h", dG[..., so], cs))
        grad_peep = np.concatenate(sums)
    return grad_x, grad_w_ih, grad_w_hh, grad_b, grad_peep


def gru_layer_forward(x, w_ih, w_hh, b_ih, b_hh):
    """torch.nn.GRU, one layer: x (T, B, I) -> hs (T, B, H), acts (T, B, 3H) = r, z, n
    activated, ghn (T, B, H) = W_hn h + b_hn (the term the reset gate multiplies)."""
    T, B, _ = x.shape
    H = w_hh.shape[1]
    gx = (x.reshape(T * B, -1) @ w_ih.T).reshape(T, B, 3 * H)
    gx += b_ih
    acts = np.empty_like(gx)
    ghn = np.empty((T, B, H), dtype=x.dtype)
    hs = np.empty((T, B, H), dtype=x.dtype)
    h = np.zeros((B, H), dtype=x.dtype)
    w_hh_t = np.ascontiguousarray(w_hh.T)
    for t in range(T):
        gh = h @ w_hh_t
        gh += b_hh
        a = acts[t]
        a[:, :2 * H] = _sigmoid(gx[t, :, :2 * H] + gh[:, :2 * H])
        ghn[t] = gh[:, 2 * H:]
        a[:, 2 * H:] = np.tanh(gx[t, :, 2 * H:] + a[:, :H] * ghn[t])
        z, n = a[:, H:2 * H], a[:, 2 * H:]
        h = n + z * (h - n)                                # (1 - z) n + z h
        hs[t] = h
    return hs, acts, ghn


def gru_layer_backward(x, w_ih, w_hh, hs, acts, ghn, dhs, dh_last):
    """BPTT of one GRU layer: grad_x, grad_w_ih, grad_w_hh, grad_b_ih, grad_b_hh."""
    T, B, _ = x.shape
    H = w_hh.shape[1]
    dGx = np.empty_like(acts)          # grads of the input pre-activations (r, z, n)
    dGh = np.empty_like(acts)          # grads of W_hh h + b_hh (r, z, n)
    dh = dh_last.copy()
    for t in range(T - 1, -1, -1):
        if dhs is not None:
            dh += dhs[t]
        a = acts[t]
        r, z, n = a[:, :H], a[:, H:2 * H], a[:, 2 * H:]
        h_prev = hs[t - 1] if t > 0 else np.zeros_like(dh)
        dx, dr = dGx[t], dGh[t]
        dx[:, 2 * H:] = dh * (1.0 - z) * (1.0 - n * n)
        dr[:, 2 * H:] = dx[:, 2 * H:] * r
        dx[:, H:2 * H] = dh * (h_prev - n) * z * (1.0 - z)
        dx[:, :H] = dx[:, 2 * H:] * ghn[t] * r * (1.0 - r)
        dr[:, :2 * H] = dx[:, :2 * H]
        dh = dh * z + dr @ w_hh
    dGx2, dGh2 = dGx.reshape(T * B, -1), dGh.reshape(T * B, -1)
    h_prev = np.concatenate([np.zeros((1, B, H), dtype=x.dtype), hs[:-1]]).reshape(T * B, H)
    return ((dGx2 @ w_ih).reshape(x.shape), dGx2.T @ x.reshape(T * B, -1), dGh2.T @ h_prev,
            dGx2.sum(axis=0), dGh2.sum(axis=0))


def _lstm_layer(cell, p, k, x):
    hs, gates, cs = layer_forward(x, p[f"weight_ih_l{k}"], p[f"weight_hh_l{k}"],
                                  p[f"bias_ih_l{k}"] + p[f"bias_hh_l{k}"],
                                  p.get(f"weight_peephole_l{k}"), cell.coupled_gates)
    return hs, (gates, cs)


def _lstm_layer_grads(cell, p, k, x, hs, cache, dhs, dh_last):
    gx, gwi, gwh, gb, gp = layer_backward(x, p[f"weight_ih_l{k}"], p[f"weight_hh_l{k}"], hs, *cache,
                                          dhs, dh_last, p.get(f"weight_peephole_l{k}"),
                                          cell.coupled_gates)
    grads = {f"weight_ih_l{k}": gwi, f"weight_hh_l{k}": gwh, f"bias_ih_l{k}": gb, f"bias_hh_l{k}": gb}
    if gp is not None:
        grads[f"weight_peephole_l{k}"] = gp
    return gx, grads


def _gru_layer(cell, p, k, x):
    hs, acts, ghn = gru_layer_forward(x, *(p[f"{n}_l{k}"] for n in _GRU_NAMES))
    return hs, (acts, ghn)


def _gru_layer_grads(cell, p, k, x, hs, cache, dhs, dh_last):
    gx, *grads = gru_layer_backward(x, p[f"weight_ih_l{k}"], p[f"weight_hh_l{k}"], hs, *cache,
                                    dhs, dh_last)
    return gx, {f"{n}_l{k}": g for n, g in zip(_GRU_NAMES, grads)}


_GRU_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
#: cell kind -> (layer forward, layer backward)
_LAYERS = {"lstm": (_lstm_layer, _lstm_layer_grads), "gru": (_gru_layer, _gru_layer_grads)}


class Runner:
    def __init__(self, cfg, params, data, n_threads, cell=CELLS["lstm"]):
        self.cfg, self.cell = cfg, cell
        self._layer, self._layer_grads = _LAYERS[cell.kind]
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
            hs, cache = self._layer(self.cell, p, k, inp)
            caches.append((inp, hs, cache))
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
            gx, layer_grads = self._layer_grads(self.cell, p, k, *caches[k], dhs, dh_last)
            grads.update(layer_grads)
            dhs, dh_last = gx, np.zeros_like(dh_last)
        return loss, grads

    def train_step(self):
        loss, grads = self.loss_and_grads()
        if self._adam is None:
            self._adam = Adam(self.p)
        self._adam.step(grads)
        return loss
