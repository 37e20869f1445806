"""Pure-NumPy reference recurrent networks: the test oracle for the compiled kernels.

Written for clarity, not speed: batch-first, one timestep at a time, exact
libm activations, hand-written backpropagation through time. It shares no
code with the kernels, so agreement between the two is evidence.

Layout of this module (the same shape as the kernels', none of their code):
  cells  -- one function per cell kind for one step forward and one for its
            backward: the whole of a cell's math
  scan   -- one direction of one layer over time, for any cell
  stack  -- layers x directions over a state_dict with clstm's names

Cells (x = x_t; h, c = the states before the step; sigma = logistic):

LSTM, with any combination of four options, read off the parameters present
(gate blocks i, f, g, o; coupled gates: i, g, o)::

    a = x @ W_ih.T + b_ih + h @ W_hh.T + b_hh
        layer_norm: ln(x @ W_ih.T) * w_ln_ih + b_ih + ln(h @ W_hh.T) * w_ln_hh + b_hh
    i = sigma(a_i [+ p_i * c]);  f = sigma(a_f [+ p_f * c])   coupled gates: f = 1 - i
    g = tanh(a_g);  c_t = f * c + i * g
    o = sigma(a_o [+ p_o * c_t])                               (peepholes in brackets)
    m = o * tanh(c_t)      layer_norm: o * tanh(ln(c_t) * w_ln_c + b_ln_c)
    h_t = m @ W_hr.T       (proj_size > 0; otherwise h_t = m)

where ln(v) = (v - mean(v)) / sqrt(var(v) + 1e-5) over the last axis (all G
gate entries of a row for the two products, the H entries of c_t), var biased.
c_t is carried to the next step unnormalised.

GRU (torch.nn.GRU; gate blocks r, z, n)::

    r = sigma(x W_ir^T + b_ir + h W_hr^T + b_hr)
    z = sigma(x W_iz^T + b_iz + h W_hz^T + b_hz)
    n = tanh(x W_in^T + b_in + r * (h W_hn^T + b_hn))
    h_t = (1 - z) * n + z * h

Ragged batches (packed-sequence semantics, as torch): a sequence of length L
runs steps 0..L-1 (the reverse direction L-1..0, starting from the initial
state at its own last step); its output past L is zero and its final state is
the one at its last step. The scan runs each step on the rows still running,
so nothing in the padding of X is ever read.
"""

import re
from collections import namedtuple

import numpy as np

__all__ = ["CELLS", "lstm_step_forward", "lstm_step_backward", "gru_step_forward",
           "gru_step_backward", "reference_scan_forward", "reference_scan_backward",
           "reference_network_forward", "reference_network_backward",
           "reference_lstm_forward", "reference_lstm_backward",
           "reference_gru_forward", "reference_gru_backward", "reference_convlstm_forward",
           "reference_convlstm_backward"]

LN_EPS = 1e-5


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _layer_norm(v):
    """ln(v) over the last axis; returns (ln(v), 1 / sqrt(var(v) + eps))."""
    centred = v - v.mean(axis=-1, keepdims=True)
    inv_std = 1.0 / np.sqrt((centred ** 2).mean(axis=-1, keepdims=True) + LN_EPS)
    return centred * inv_std, inv_std


def _layer_norm_backward(grad_y, y, inv_std):
    """grad_v of y = ln(v): inv_std * (grad_y - mean(grad_y) - y * mean(grad_y * y))."""
    return inv_std * (grad_y - grad_y.mean(axis=-1, keepdims=True)
                      - y * (grad_y * y).mean(axis=-1, keepdims=True))


# =====================================================================================
# LSTM cell (plain, peephole, coupled gates, projection, layer norm)
# =====================================================================================
# `p` holds one layer-direction's parameters under their short names
# (weight_ih, weight_hh, bias_ih, bias_hh, and where present weight_hr,
# weight_peephole, weight_ln_ih, weight_ln_hh, weight_ln_c, bias_ln_c).

def _lstm_blocks(p):
    """Gate block names (i, f, g, o, or i, g, o with coupled gates) and H, from the shapes."""
    H = p["weight_hr"].shape[1] if "weight_hr" in p else p["weight_hh"].shape[1]
    n_blocks = p["weight_ih"].shape[0] // H
    if n_blocks * H != p["weight_ih"].shape[0] or n_blocks not in (3, 4):
        raise ValueError(f"weight_ih has {p['weight_ih'].shape[0]} rows for H = {H}")
    return (("i", "f", "g", "o") if n_blocks == 4 else ("i", "g", "o")), H


def _lstm_peepholes(p, blocks):
    """Peephole vectors by gate: (i, f, o), or (i, o) with coupled gates; {} without."""
    if "weight_peephole" not in p:
        return {}
    gates = [b for b in blocks if b != "g"]
    return dict(zip(gates, np.split(p["weight_peephole"], len(gates))))


def _lstm_state_sizes(p):
    """(P, H): units of h (the output size) and of c."""
    _, H = _lstm_blocks(p)
    return p["weight_hh"].shape[1], H


def lstm_step_forward(p, x, state):
    """One LSTM step on x (B, I), state (h, c); returns (h_t, c_t) and what backward needs."""
    h_prev, c_prev = state
    blocks, _ = _lstm_blocks(p)
    peep = _lstm_peepholes(p, blocks)
    s = {"x": x, "h_prev": h_prev, "c_prev": c_prev}
    if "weight_ln_ih" in p:
        s["ln_x"], s["inv_std_x"] = _layer_norm(x @ p["weight_ih"].T)
        s["ln_h"], s["inv_std_h"] = _layer_norm(h_prev @ p["weight_hh"].T)
        a = (s["ln_x"] * p["weight_ln_ih"] + p["bias_ih"]
             + s["ln_h"] * p["weight_ln_hh"] + p["bias_hh"])
    else:
        a = x @ p["weight_ih"].T + p["bias_ih"] + h_prev @ p["weight_hh"].T + p["bias_hh"]
    a = dict(zip(blocks, np.split(a, len(blocks), axis=1)))
    if peep:
        a["i"] = a["i"] + peep["i"] * c_prev
    i = _sigmoid(a["i"])
    if "f" in a:
        if peep:
            a["f"] = a["f"] + peep["f"] * c_prev
        f = _sigmoid(a["f"])
    else:
        f = 1.0 - i                                    # coupled input-forget gate
    g = np.tanh(a["g"])
    c = f * c_prev + i * g
    if peep:
        a["o"] = a["o"] + peep["o"] * c                # the output gate sees the new c
    o = _sigmoid(a["o"])
    if "weight_ln_c" in p:
        s["ln_c"], s["inv_std_c"] = _layer_norm(c)
        tanh_c = np.tanh(s["ln_c"] * p["weight_ln_c"] + p["bias_ln_c"])
    else:
        tanh_c = np.tanh(c)
    m = o * tanh_c
    h = m @ p["weight_hr"].T if "weight_hr" in p else m
    s.update(i=i, f=f, g=g, o=o, c=c, tanh_c=tanh_c, m=m)
    return (h, c), s


def lstm_step_backward(p, s, grad_state):
    """Backward of lstm_step_forward: (grad_h_t, grad_c_t) -> grad_x, (grad_h, grad_c), grads."""
    grad_h, grad_c = grad_state
    blocks, _ = _lstm_blocks(p)
    peep = _lstm_peepholes(p, blocks)
    i, f, g, o, c, c_prev = s["i"], s["f"], s["g"], s["o"], s["c"], s["c_prev"]
    grads = {}
    if "weight_hr" in p:
        grads["weight_hr"] = grad_h.T @ s["m"]
        grad_m = grad_h @ p["weight_hr"]
    else:
        grad_m = grad_h
    grad_o = grad_m * s["tanh_c"]
    grad_u = grad_m * o * (1.0 - s["tanh_c"] ** 2)     # u: the argument of tanh
    if "weight_ln_c" in p:
        grads["weight_ln_c"] = (grad_u * s["ln_c"]).sum(axis=0)
        grads["bias_ln_c"] = grad_u.sum(axis=0)
        grad_c = grad_c + _layer_norm_backward(grad_u * p["weight_ln_c"], s["ln_c"],
                                               s["inv_std_c"])
    else:
        grad_c = grad_c + grad_u
    grad_a = {"o": grad_o * o * (1.0 - o)}
    if peep:
        grad_c = grad_c + grad_a["o"] * peep["o"]
    grad_i = grad_c * g
    grad_f = grad_c * c_prev
    grad_c_prev = grad_c * f
    if "f" in blocks:
        grad_a["f"] = grad_f * f * (1.0 - f)
    else:
        grad_i = grad_i - grad_f                       # f = 1 - i
    grad_a["i"] = grad_i * i * (1.0 - i)
    grad_a["g"] = grad_c * i * (1.0 - g ** 2)
    if peep:
        seen = {"i": c_prev, "f": c_prev, "o": c}      # what each peephole multiplies
        grads["weight_peephole"] = np.concatenate(
            [(grad_a[gate] * seen[gate]).sum(axis=0) for gate in peep])
        grad_c_prev = grad_c_prev + grad_a["i"] * peep["i"]
        if "f" in peep:
            grad_c_prev = grad_c_prev + grad_a["f"] * peep["f"]
    grad_a = np.concatenate([grad_a[b] for b in blocks], axis=1)
    grads["bias_ih"] = grad_a.sum(axis=0)
    grads["bias_hh"] = grad_a.sum(axis=0)
    if "weight_ln_ih" in p:
        grads["weight_ln_ih"] = (grad_a * s["ln_x"]).sum(axis=0)
        grads["weight_ln_hh"] = (grad_a * s["ln_h"]).sum(axis=0)
        grad_ax = _layer_norm_backward(grad_a * p["weight_ln_ih"], s["ln_x"], s["inv_std_x"])
        grad_ah = _layer_norm_backward(grad_a * p["weight_ln_hh"], s["ln_h"], s["inv_std_h"])
    else:
        grad_ax = grad_ah = grad_a
    grads["weight_ih"] = grad_ax.T @ s["x"]
    grads["weight_hh"] = grad_ah.T @ s["h_prev"]
    grad_x = grad_ax @ p["weight_ih"]
    grad_h_prev = grad_ah @ p["weight_hh"]
    return grad_x, (grad_h_prev, grad_c_prev), grads


# =====================================================================================
# GRU cell (torch.nn.GRU: gate blocks r, z, n; r multiplies h @ W_hn.T + b_hn)
# =====================================================================================

def gru_step_forward(p, x, state):
    """One GRU step on x (B, I), state (h,); returns (h_t,) and what backward needs."""
    (h_prev,) = state
    a_x = x @ p["weight_ih"].T + p["bias_ih"]
    a_h = h_prev @ p["weight_hh"].T + p["bias_hh"]
    ax_r, ax_z, ax_n = np.split(a_x, 3, axis=1)
    ah_r, ah_z, ah_n = np.split(a_h, 3, axis=1)
    r = _sigmoid(ax_r + ah_r)
    z = _sigmoid(ax_z + ah_z)
    n = np.tanh(ax_n + r * ah_n)
    h = (1.0 - z) * n + z * h_prev
    return (h,), {"x": x, "h_prev": h_prev, "r": r, "z": z, "n": n, "ah_n": ah_n}


def gru_step_backward(p, s, grad_state):
    """Backward of gru_step_forward: (grad_h_t,) -> grad_x, (grad_h,), grads."""
    (grad_h,) = grad_state
    r, z, n, h_prev = s["r"], s["z"], s["n"], s["h_prev"]
    grad_an = grad_h * (1.0 - z) * (1.0 - n ** 2)      # d/d(argument of tanh)
    grad_ar = grad_an * s["ah_n"] * r * (1.0 - r)
    grad_az = grad_h * (h_prev - n) * z * (1.0 - z)
    grad_ax = np.concatenate([grad_ar, grad_az, grad_an], axis=1)
    grad_ah = np.concatenate([grad_ar, grad_az, grad_an * r], axis=1)
    grads = {"weight_ih": grad_ax.T @ s["x"], "weight_hh": grad_ah.T @ h_prev,
             "bias_ih": grad_ax.sum(axis=0), "bias_hh": grad_ah.sum(axis=0)}
    grad_x = grad_ax @ p["weight_ih"]
    grad_h_prev = grad_h * z + grad_ah @ p["weight_hh"]
    return grad_x, (grad_h_prev,), grads


# A cell kind: its states (the first is h, the step's output), their widths
# for given parameters, and its two step functions.
Cell = namedtuple("Cell", "state_names state_sizes step_forward step_backward")

CELLS = {
    "lstm": Cell(("h", "c"), _lstm_state_sizes, lstm_step_forward, lstm_step_backward),
    "gru": Cell(("h",), lambda p: (p["weight_hh"].shape[1],), gru_step_forward,
                gru_step_backward),
}


# =====================================================================================
# Scan: one direction of one layer over time, any cell
# =====================================================================================

def _time_steps(n_steps, reverse):
    return range(n_steps - 1, -1, -1) if reverse else range(n_steps)


def reference_scan_forward(cell, p, x, state0, lengths=None, reverse=False):
    """Run `cell` (a CELLS key) over x (B, T, I) from state0 (a tuple of (B, units)).

    Returns out (B, T, P) (zero past each length), the final states (each
    sequence's at its own last step) and a cache for reference_scan_backward.
    """
    cell = CELLS[cell] if isinstance(cell, str) else cell
    B, T, _ = x.shape
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    state = [np.array(s, copy=True) for s in state0]
    out = np.zeros((B, T, state[0].shape[1]), dtype=np.result_type(x, state[0]))
    steps = []
    # a row is untouched until its first step, so in the reverse direction a
    # sequence of length L starts at t = L - 1 from its initial state
    for t in _time_steps(T, reverse):
        rows = np.flatnonzero(t < lengths)
        if rows.size == 0:
            continue
        new, saved = cell.step_forward(p, x[rows, t], tuple(s[rows] for s in state))
        for s, value in zip(state, new):
            s[rows] = value
        out[rows, t] = new[0]
        steps.append((t, rows, saved))
    cache = {"cell": cell, "p": p, "x_shape": x.shape, "dtype": out.dtype, "steps": steps}
    return out, tuple(state), cache


def reference_scan_backward(grad_out, grad_state_n, cache):
    """Backward of reference_scan_forward.

    grad_out (B, T, P), grad_state_n a tuple like the final states. Returns
    grad_x, the gradients of the initial states (a tuple) and of every
    parameter (dict, the keys of `p`).
    """
    cell, p = cache["cell"], cache["p"]
    grad_x = np.zeros(cache["x_shape"], dtype=cache["dtype"])
    grad_state = [np.array(g, copy=True) for g in grad_state_n]
    grads = {k: np.zeros_like(v) for k, v in p.items()}
    for t, rows, saved in reversed(cache["steps"]):
        grad_new = [g[rows] for g in grad_state]
        grad_new[0] = grad_new[0] + grad_out[rows, t]      # h_t is also the step's output
        gx, grad_prev, step_grads = cell.step_backward(p, saved, tuple(grad_new))
        grad_x[rows, t] = gx
        for g, value in zip(grad_state, grad_prev):
            g[rows] = value
        for k, v in step_grads.items():
            grads[k] += v
    return grad_x, tuple(grad_state), grads


# =====================================================================================
# Stack: layers x directions, on a state_dict with clstm's names
# =====================================================================================

_PARAM_NAME = re.compile(r"^(?P<kind>.+)_l(?P<layer>\d+)(?P<reverse>_reverse)?$")


def _split_params(params):
    """{(layer, direction): {kind: array}} from names like weight_ih_l1_reverse."""
    layers = {}
    for name, value in params.items():
        match = _PARAM_NAME.match(name)
        if match is None:
            raise ValueError(f"not a recurrent parameter name: {name!r}")
        key = (int(match["layer"]), 1 if match["reverse"] else 0)
        layers.setdefault(key, {})[match["kind"]] = np.asarray(value)
    num_layers = 1 + max(layer for layer, _ in layers)
    D = 1 + max(d for _, d in layers)
    if set(layers) != {(k, d) for k in range(num_layers) for d in range(D)}:
        raise ValueError(f"incomplete parameters: layers/directions {sorted(layers)}")
    return layers, num_layers, D


def _name(kind, layer, direction):
    return f"{kind}_l{layer}" + ("_reverse" if direction else "")


def reference_network_forward(params, X, state=None, lengths=None, *, cell="lstm"):
    """Stacked (and, with `_reverse` parameters, bidirectional) network, batch-first.

    params: a state_dict with the contract's names (layers and directions are
    read off them; the LSTM options off the parameters present). state: a
    tuple in the cell's state order (("h", "c") or ("h",)), entries
    (num_layers * D, B, units) or None for zeros. Returns out (B, T, D * P),
    the final states (a tuple like `state`) and a cache.
    """
    kind = CELLS[cell]
    layers, num_layers, D = _split_params(params)
    B = X.shape[0]
    sizes = kind.state_sizes(layers[0, 0])
    state = (None,) * len(sizes) if state is None else tuple(state)
    state = tuple(np.zeros((num_layers * D, B, n), dtype=X.dtype) if s is None else np.asarray(s)
                  for s, n in zip(state, sizes))
    finals, caches, inp = [[] for _ in sizes], [], X
    for layer in range(num_layers):
        outs = []
        for d in range(D):
            k = layer * D + d
            out, final, scan_cache = reference_scan_forward(
                kind, layers[layer, d], inp, tuple(s[k] for s in state), lengths,
                reverse=bool(d))
            outs.append(out)
            for f, value in zip(finals, final):
                f.append(value)
            caches.append(scan_cache)
        inp = np.concatenate(outs, axis=2)
    cache = {"cell": cell, "caches": caches, "num_layers": num_layers, "D": D,
             "P": sizes[0], "state_shapes": tuple(s.shape for s in state)}
    return inp, tuple(np.stack(f) for f in finals), cache


def reference_network_backward(grad_out, grad_state=None, cache=None):
    """Backward of reference_network_forward: (grad_X, grads).

    grad_state: a tuple like the final states (entries None for zeros) or
    None. grads has the parameter names plus "h0" (and "c0" for the LSTM).
    """
    kind = CELLS[cache["cell"]]
    num_layers, D, P = cache["num_layers"], cache["D"], cache["P"]
    shapes = cache["state_shapes"]
    grad_state = (None,) * len(shapes) if grad_state is None else tuple(grad_state)
    grad_state = tuple(np.zeros(shape, dtype=grad_out.dtype) if g is None else np.asarray(g)
                       for g, shape in zip(grad_state, shapes))
    grad_init = [np.zeros_like(g) for g in grad_state]
    grads, g_out = {}, grad_out
    for layer in reversed(range(num_layers)):
        grad_in = 0.0
        for d in range(D):
            k = layer * D + d
            gx, g0, g_params = reference_scan_backward(
                g_out[:, :, d * P:(d + 1) * P], tuple(g[k] for g in grad_state),
                cache["caches"][k])
            grad_in = grad_in + gx
            for gi, value in zip(grad_init, g0):
                gi[k] = value
            grads.update({_name(short, layer, d): v for short, v in g_params.items()})
        g_out = grad_in
    grads.update({name + "0": g for name, g in zip(kind.state_names, grad_init)})
    return g_out, grads


# -- the LSTM and GRU with the networks' signatures -----------------------------------

def reference_lstm_forward(params, X, h0=None, c0=None, lengths=None,
                           num_layers=None, bidirectional=None):
    """LSTM (any variant) on clstm/torch-named params: out, (h_n, c_n), cache.

    num_layers / bidirectional, if given, are checked against the names.
    """
    out, (h_n, c_n), cache = reference_network_forward(params, X, (h0, c0), lengths,
                                                       cell="lstm")
    if num_layers is not None and num_layers != cache["num_layers"]:
        raise ValueError(f"params have {cache['num_layers']} layers, not {num_layers}")
    if bidirectional is not None and (2 if bidirectional else 1) != cache["D"]:
        raise ValueError(f"params have {cache['D']} directions")
    return out, (h_n, c_n), cache


def reference_lstm_backward(grad_out, grad_h_n, grad_c_n, cache):
    """Backward of reference_lstm_forward: (grad_X, grads) with "h0" and "c0"."""
    return reference_network_backward(grad_out, (grad_h_n, grad_c_n), cache)


def reference_gru_forward(params, X, h0=None, lengths=None):
    """GRU on torch.nn.GRU-named params: out, h_n, cache."""
    out, (h_n,), cache = reference_network_forward(params, X, (h0,), lengths, cell="gru")
    return out, h_n, cache


def reference_gru_backward(grad_out, grad_h_n, cache):
    """Backward of reference_gru_forward: (grad_X, grads) with "h0"."""
    return reference_network_backward(grad_out, (grad_h_n,), cache)


# --- ConvLSTM -------------------------------------------------------------------
# Keras's ConvLSTM2D / ConvLSTM1D ('same' padding, stride 1, channels last):
#
#     a = conv(x_t, kernel) + conv(h, recurrent_kernel) + bias     (blocks i, f, c, o)
#     c_t = sigma(a_f) * c + sigma(a_i) * tanh(a_c);  h_t = sigma(a_o) * tanh(c_t)
#
# conv(x, k)[..., n] = sum over taps d and channels c of x_padded[p + d, c] * k[d, c, n],
# written tap by tap over an explicitly zero-padded map (no im2col), one
# sequence at a time over its own length (so padding steps are never read).

def _conv_same(x, kernel):
    """'same', stride-1 convolution (cross-correlation) of x (*spatial, C) with
    kernel (*taps, C, N) -> (*spatial, N), odd taps."""
    spatial, taps = x.shape[:-1], kernel.shape[:-2]
    padded = np.pad(x, [(k // 2, k // 2) for k in taps] + [(0, 0)])
    out = np.zeros(spatial + kernel.shape[-1:])
    for tap in np.ndindex(*taps):
        window = padded[tuple(slice(d, d + s) for d, s in zip(tap, spatial))]
        out += np.einsum("...c,cn->...n", window, kernel[tap])
    return out


def _conv_same_backward(grad_out, x, kernel):
    """Gradients of _conv_same with respect to x and kernel."""
    spatial, taps = x.shape[:-1], kernel.shape[:-2]
    pads = [(k // 2, k // 2) for k in taps] + [(0, 0)]
    padded = np.pad(x, pads)
    grad_padded = np.zeros_like(padded)
    grad_kernel = np.zeros_like(kernel)
    pixels = list(range(len(spatial)))
    for tap in np.ndindex(*taps):
        where = tuple(slice(d, d + s) for d, s in zip(tap, spatial))
        # sum over pixels of window[p, c] * grad_out[p, n]
        grad_kernel[tap] = np.tensordot(padded[where], grad_out, axes=(pixels, pixels))
        grad_padded[where] += np.einsum("...n,cn->...c", grad_out, kernel[tap])
    unpad = tuple(slice(k // 2, k // 2 + s) for k, s in zip(taps, spatial))
    return grad_padded[unpad], grad_kernel


def reference_convlstm_forward(params, X, h0=None, c0=None, lengths=None):
    """ConvLSTM over X (B, T, *spatial, C) with clstm.ConvLSTM's parameter names
    (``kernel_l{k}``, ``recurrent_kernel_l{k}``, ``bias_l{k}``).

    Returns ``out (B, T, *spatial, F), (h_n, c_n), cache`` with states of shape
    (num_layers, B, *spatial, F); out is zero past each length.
    """
    X = np.asarray(X, dtype=np.float64)
    n_layers = len([k for k in params if k.startswith("kernel_l")])
    F = params["bias_l0"].shape[0] // 4
    B, T = X.shape[:2]
    state_shape = (n_layers, B) + X.shape[2:-1] + (F,)
    h0 = np.zeros(state_shape) if h0 is None else np.asarray(h0, np.float64)
    c0 = np.zeros(state_shape) if c0 is None else np.asarray(c0, np.float64)
    lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    out = np.zeros((B, T) + X.shape[2:-1] + (F,))
    h_n, c_n = np.zeros(state_shape), np.zeros(state_shape)
    steps = []          # steps[b][layer][t]: what the backward needs
    for b in range(B):
        inp = X[b, :lengths[b]]
        per_layer = []
        for layer in range(n_layers):
            h, c = h0[layer, b], c0[layer, b]
            saved, hs = [], []
            for x in inp:
                a = (_conv_same(x, p[f"kernel_l{layer}"])
                     + _conv_same(h, p[f"recurrent_kernel_l{layer}"]) + p[f"bias_l{layer}"])
                i, f, o = (_sigmoid(a[..., k * F:(k + 1) * F]) for k in (0, 1, 3))
                g = np.tanh(a[..., 2 * F:3 * F])
                c_new = f * c + i * g
                h_new = o * np.tanh(c_new)
                saved.append({"x": x, "h": h, "c": c, "i": i, "f": f, "g": g, "o": o,
                              "c_new": c_new})
                h, c = h_new, c_new
                hs.append(h)
            per_layer.append(saved)
            h_n[layer, b], c_n[layer, b] = h, c
            inp = np.array(hs)
        out[b, :lengths[b]] = inp
        steps.append(per_layer)
    cache = {"steps": steps, "params": p, "lengths": lengths, "shape": X.shape,
             "n_layers": n_layers, "F": F}
    return out, (h_n, c_n), cache


def reference_convlstm_backward(grad_out, grad_h_n=None, grad_c_n=None, cache=None):
    """BPTT of reference_convlstm_forward: returns ``grad_X, grads`` with grads
    keyed like the parameters plus ``"h0"``, ``"c0"``."""
    p, steps, lengths, F = cache["params"], cache["steps"], cache["lengths"], cache["F"]
    n_layers = cache["n_layers"]
    B = cache["shape"][0]
    grad_out = np.asarray(grad_out, np.float64)
    state_shape = (n_layers,) + grad_out.shape[:1] + grad_out.shape[2:]
    grad_h_n = np.zeros(state_shape) if grad_h_n is None else np.asarray(grad_h_n, np.float64)
    grad_c_n = np.zeros(state_shape) if grad_c_n is None else np.asarray(grad_c_n, np.float64)
    grads = {k: np.zeros_like(v) for k, v in p.items()}
    grads["h0"], grads["c0"] = np.zeros(state_shape), np.zeros(state_shape)
    grad_X = np.zeros(cache["shape"])
    for b in range(B):
        grad_seq = grad_out[b, :lengths[b]].copy()          # reaching the top layer's h
        for layer in reversed(range(n_layers)):
            kernel, rec = p[f"kernel_l{layer}"], p[f"recurrent_kernel_l{layer}"]
            dh, dc = grad_h_n[layer, b].copy(), grad_c_n[layer, b].copy()
            grad_inp = np.zeros(grad_seq.shape[:-1] + (kernel.shape[-2],))
            for t in reversed(range(len(steps[b][layer]))):
                s = steps[b][layer][t]
                dh = dh + grad_seq[t]
                tanh_c = np.tanh(s["c_new"])
                do = dh * tanh_c
                dc = dc + dh * s["o"] * (1.0 - tanh_c ** 2)
                di, df, dg = dc * s["g"], dc * s["c"], dc * s["i"]
                da = np.concatenate([di * s["i"] * (1 - s["i"]), df * s["f"] * (1 - s["f"]),
                                     dg * (1 - s["g"] ** 2), do * s["o"] * (1 - s["o"])],
                                    axis=-1)
                grads[f"bias_l{layer}"] += da.reshape(-1, 4 * F).sum(axis=0)
                gx, gk = _conv_same_backward(da, s["x"], kernel)
                gh, gr = _conv_same_backward(da, s["h"], rec)
                grads[f"kernel_l{layer}"] += gk
                grads[f"recurrent_kernel_l{layer}"] += gr
                grad_inp[t] = gx
                dh, dc = gh, dc * s["f"]
            grads["h0"][layer, b], grads["c0"][layer, b] = dh, dc
            grad_seq = grad_inp
        grad_X[b, :lengths[b]] = grad_seq
    return grad_X, grads
