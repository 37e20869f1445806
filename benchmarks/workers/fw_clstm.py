"""clstm worker: clstm.LSTM kernels plus a plain-NumPy Dense(1) head and MSE, and Adam.

The Adam step is clstm's own (``clstm.optimizers.Adam``, one compiled pass per parameter),
as every framework's worker runs its own optimizer (torch.optim.Adam, Keras's Adam); builds
of clstm before that module (compare_trees.py against an older tree) use the NumPy Adam
that the numpy worker runs.

The cells: ``clstm.GRU`` and ``clstm.LSTM(peephole=..., coupled_gates=..., proj_size=...,
layer_norm=...)`` (README, "The cell family"); the same head, loss and Adam.
"""

import inspect

import numpy as np

import clstm

from adam import Adam as NumpyAdam
from common import BETA1, BETA2, CELLS, EPS, LR


def setup(n_threads):
    pass     # thread env vars are set before import; n_jobs is passed per model


def version():
    return clstm.__version__


def supports(cell):
    """Raise NotImplementedError if this build of clstm lacks the cell (e.g. before it exists)."""
    if cell.kind == "gru":
        if not hasattr(clstm, "GRU"):
            raise NotImplementedError(f"clstm {clstm.__version__} has no clstm.GRU")
        return
    accepted = inspect.signature(clstm.LSTM).parameters
    missing = [k for k in cell.clstm_kwargs(1) if k not in accepted]
    if missing:
        raise NotImplementedError(f"clstm {clstm.__version__}'s LSTM has no {', '.join(missing)}")


def make_net(cfg, cell=CELLS["lstm"], **kwargs):
    """The cell's clstm network (float32); kwargs: random_state, n_jobs."""
    cls = clstm.GRU if cell.kind == "gru" else clstm.LSTM
    return cls(cfg.I, cfg.H, num_layers=cfg.L, dtype="float32", **cell.clstm_kwargs(cfg.H), **kwargs)


def draw_params(cfg, seed, cell=CELLS["lstm"]):
    """The weights of a case: clstm's own initialisation, as a state dict."""
    return make_net(cfg, cell, random_state=seed).state_dict()


class Runner:
    def __init__(self, cfg, params, data, n_threads, cell=CELLS["lstm"]):
        self.cfg = cfg
        self.net = make_net(cfg, cell, random_state=0, n_jobs=n_threads)
        self.net.load_state_dict(params)
        self.X = np.ascontiguousarray(data["X"])
        self.y = np.ascontiguousarray(data["y"])
        self.head_w = data["head_w"].copy()      # (1, P)
        self.head_b = data["head_b"].copy()      # (1,)
        P = cell.out_size(cfg.H)
        self.grad_out = np.zeros((cfg.B, cfg.T, P), dtype=np.float32)
        self.grad_h_n = np.zeros((cfg.L, cfg.B, P), dtype=np.float32)
        self.grad_state = (self.grad_h_n,) + (None,) * (len(self.net.state_names) - 1)
        # the gradients' arrays, zeroed before each backward (torch's zero_grad
        # without set_to_none): the backward adds into them (grads_into)
        self.grads_into = {k: np.zeros_like(v) for k, v in self.net.params.items()}
        self._adam = None

    def params(self):
        p = dict(self.net.params)          # live arrays, updated in place
        p["head_w"] = self.head_w
        p["head_b"] = self.head_b
        return p

    def infer(self):
        # inference keeps no activations for a backward (as the peers' inference modes)
        out, _ = self.net.run(self.X, keep_cache=False)
        return out

    def loss_and_grads(self):
        net = self.net
        out, _ = net.forward(self.X)
        last = out[:, -1, :]                                  # (B, P)
        pred = last @ self.head_w.T + self.head_b              # (B, 1)
        diff = pred - self.y
        loss = float(np.vdot(diff, diff)) / diff.size         # (np.mean: 4 us more)
        d_pred = (2.0 / diff.size) * diff                      # (B, 1)
        grads_head = {"head_w": d_pred.T @ last, "head_b": d_pred.sum(axis=0)}
        self.grad_h_n[-1] = d_pred @ self.head_w               # (B, P)
        # no gradient of X (grad_inputs=False), as the peers', whose X needs none
        for g in self.grads_into.values():
            g.fill(0.0)
        net.backward_state(self.grad_out, self.grad_state, self.grads_into, grad_inputs=False)
        grads = dict(self.grads_into)
        grads.update(grads_head)
        return loss, grads

    def train_step(self):
        loss, grads = self.loss_and_grads()
        if self._adam is None:
            self._adam = _make_adam(self.params())
        self._adam.step(grads)
        return loss


class _ClstmAdam:
    """clstm.optimizers.Adam over the worker's parameters (network and head)."""

    def __init__(self, params):
        self.params = params
        self.opt = clstm.optimizers.Adam(LR, BETA1, BETA2, EPS)

    def step(self, grads):
        self.opt.step(self.params, grads)


def _make_adam(params):
    try:
        clstm.optimizers
    except AttributeError:
        return NumpyAdam(params)
    return _ClstmAdam(params)
