"""Pure-NumPy reference LSTM: the test oracle for the compiled kernels.

Written for clarity, not speed: batch-first, one timestep at a time, exact
libm activations, variable lengths handled per sequence by masking. It shares
no code with the kernels, so agreement between the two is evidence.

Semantics (those of torch.nn.LSTM with packed sequences):
    i, f, g, o = split(x_t @ W_ih.T + b_ih + h_{t-1} @ W_hh.T + b_hh, 4)
    i, f, o = sigmoid(i, f, o); g = tanh(g)
    c_t = f * c_{t-1} + i * g;  h_t = o * tanh(c_t)
A sequence of length L runs steps 0..L-1 (the reverse direction L-1..0);
its output past L is zero and its final state is the one at its last step.
"""

import numpy as np

__all__ = ["reference_layer_forward", "reference_layer_backward",
           "reference_lstm_forward", "reference_lstm_backward"]


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _steps(n_steps, reverse):
    return range(n_steps - 1, -1, -1) if reverse else range(n_steps)


def reference_layer_forward(x, weight_ih, weight_hh, bias_ih, bias_hh, h0, c0,
                            lengths=None, reverse=False):
    """One direction of one layer.

    x (B, T, I), h0/c0 (B, H), lengths (B,) or None.
    Returns out (B, T, H), (h_n, c_n) (B, H), and a cache for the backward.
    """
    B, T, _ = x.shape
    H = weight_hh.shape[1]
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    h, c = h0.copy(), c0.copy()
    out = np.zeros((B, T, H), dtype=x.dtype)
    cache = {"x": x, "h_prev": {}, "c_prev": {}, "gates": {}, "c": {},
             "active": {}, "lengths": lengths, "reverse": reverse,
             "weight_ih": weight_ih, "weight_hh": weight_hh}
    # The reverse direction of a sequence starts at its own last step: run
    # it over the sequence reversed within its length.
    for t in _steps(T, reverse):
        active = t < lengths                       # (B,) rows taking this step
        if reverse:
            # a sequence enters the reverse scan at t = L - 1 from (h0, c0)
            starting = t == lengths - 1
            h = np.where(starting[:, None], h0, h)
            c = np.where(starting[:, None], c0, c)
        z = x[:, t] @ weight_ih.T + bias_ih + h @ weight_hh.T + bias_hh
        i, f, g, o = np.split(z, 4, axis=1)
        i, f, g, o = _sigmoid(i), _sigmoid(f), np.tanh(g), _sigmoid(o)
        c_new = f * c + i * g
        h_new = o * np.tanh(c_new)
        cache["h_prev"][t], cache["c_prev"][t] = h, c
        cache["gates"][t] = (i, f, g, o)
        cache["c"][t] = c_new
        cache["active"][t] = active
        h = np.where(active[:, None], h_new, h)
        c = np.where(active[:, None], c_new, c)
        out[:, t] = np.where(active[:, None], h_new, 0.0)
    return out, (h, c), cache


def reference_layer_backward(grad_out, grad_h_n, grad_c_n, cache):
    """Backward of reference_layer_forward.

    Returns grad_x, grad_h0, grad_c0 and a dict with grad_weight_ih,
    grad_weight_hh, grad_bias (the same for bias_ih and bias_hh).
    """
    x, lengths, reverse = cache["x"], cache["lengths"], cache["reverse"]
    weight_ih, weight_hh = cache["weight_ih"], cache["weight_hh"]
    B, T, _ = x.shape
    grad_x = np.zeros_like(x)
    grad_w_ih = np.zeros_like(weight_ih)
    grad_w_hh = np.zeros_like(weight_hh)
    grad_b = np.zeros(weight_ih.shape[0], dtype=x.dtype)
    grad_h0 = np.zeros_like(grad_h_n)
    grad_c0 = np.zeros_like(grad_c_n)
    dh, dc = grad_h_n.copy(), grad_c_n.copy()
    for t in reversed(list(_steps(T, reverse))):
        active = cache["active"][t][:, None]
        i, f, g, o = cache["gates"][t]
        c_prev, c = cache["c_prev"][t], cache["c"][t]
        tc = np.tanh(c)
        dh_t = np.where(active, grad_out[:, t] + dh, 0.0)
        dc_t = np.where(active, dc + dh_t * o * (1 - tc ** 2), 0.0)
        dz = np.concatenate([dc_t * g * i * (1 - i),
                             dc_t * c_prev * f * (1 - f),
                             dc_t * i * (1 - g ** 2),
                             dh_t * tc * o * (1 - o)], axis=1)
        grad_x[:, t] = dz @ weight_ih
        grad_w_ih += dz.T @ x[:, t]
        grad_w_hh += dz.T @ cache["h_prev"][t]
        grad_b += dz.sum(axis=0)
        dh_prev = dz @ weight_hh
        dc_prev = dc_t * f
        dh = np.where(active, dh_prev, dh)
        dc = np.where(active, dc_prev, dc)
        if reverse:
            # the sequence entered the reverse scan here: its state came from h0
            starting = (t == lengths - 1)[:, None]
            grad_h0 = np.where(starting, dh, grad_h0)
            grad_c0 = np.where(starting, dc, grad_c0)
    if not reverse:
        grad_h0, grad_c0 = dh, dc
    grads = {"weight_ih": grad_w_ih, "weight_hh": grad_w_hh, "bias": grad_b}
    return grad_x, grad_h0, grad_c0, grads


def _names(layer, direction):
    sfx = f"_l{layer}" + ("_reverse" if direction else "")
    return {k: k + sfx for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}


def reference_lstm_forward(params, X, h0=None, c0=None, lengths=None,
                           num_layers=1, bidirectional=False):
    """Stacked (and bidirectional) LSTM on torch-named params, batch-first.

    Returns out (B, T, D*H), (h_n, c_n) (num_layers*D, B, H), and a cache.
    """
    D = 2 if bidirectional else 1
    B, T, _ = X.shape
    H = params["weight_hh_l0"].shape[1]
    if h0 is None:
        h0 = np.zeros((num_layers * D, B, H), dtype=X.dtype)
    if c0 is None:
        c0 = np.zeros((num_layers * D, B, H), dtype=X.dtype)
    h_n, c_n, caches, inp = [], [], [], X
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            n = _names(layer, d)
            k = layer * D + d
            out, (h, c), cache = reference_layer_forward(
                inp, params[n["weight_ih"]], params[n["weight_hh"]],
                params[n["bias_ih"]], params[n["bias_hh"]], h0[k], c0[k],
                lengths=lengths, reverse=bool(d))
            outs.append(out)
            h_n.append(h)
            c_n.append(c)
            caches.append(cache)
        inp = np.concatenate(outs, axis=2)
    cache = {"caches": caches, "num_layers": num_layers, "D": D, "H": H}
    return inp, (np.stack(h_n), np.stack(c_n)), cache


def reference_lstm_backward(grad_out, grad_h_n, grad_c_n, cache):
    """Backward of reference_lstm_forward: (grad_X, grads) with torch names
    plus "h0" and "c0"."""
    num_layers, D, H = cache["num_layers"], cache["D"], cache["H"]
    grads = {}
    grad_h0 = np.zeros_like(grad_h_n)
    grad_c0 = np.zeros_like(grad_c_n)
    g = grad_out
    for layer in reversed(range(num_layers)):
        grad_in = None
        for d in range(D):
            k = layer * D + d
            gx, gh0, gc0, gw = reference_layer_backward(
                g[:, :, d * H:(d + 1) * H], grad_h_n[k], grad_c_n[k],
                cache["caches"][k])
            grad_in = gx if grad_in is None else grad_in + gx
            grad_h0[k], grad_c0[k] = gh0, gc0
            n = _names(layer, d)
            grads[n["weight_ih"]] = gw["weight_ih"]
            grads[n["weight_hh"]] = gw["weight_hh"]
            grads[n["bias_ih"]] = gw["bias"]
            grads[n["bias_hh"]] = gw["bias"].copy()
        g = grad_in
    grads["h0"], grads["c0"] = grad_h0, grad_c0
    return g, grads
