"""clstm worker: clstm.LSTM kernels plus a plain-NumPy Dense(1) head, MSE and Adam."""

import numpy as np

import clstm

from adam import Adam


def setup(n_threads):
    pass     # thread env vars are set before import; n_jobs is passed per model


def version():
    return clstm.__version__


class Runner:
    def __init__(self, cfg, params, data, n_threads):
        self.cfg = cfg
        self.net = clstm.LSTM(cfg.I, cfg.H, num_layers=cfg.L, dtype="float32",
                              random_state=0, n_jobs=n_threads)
        self.net.load_state_dict(params)
        self.X = np.ascontiguousarray(data["X"])
        self.y = np.ascontiguousarray(data["y"])
        self.head_w = data["head_w"].copy()      # (1, H)
        self.head_b = data["head_b"].copy()      # (1,)
        self.grad_out = np.zeros((cfg.B, cfg.T, cfg.H), dtype=np.float32)
        self.grad_h_n = np.zeros((cfg.L, cfg.B, cfg.H), dtype=np.float32)
        self._adam = None

    def params(self):
        p = dict(self.net.params)          # live arrays, updated in place
        p["head_w"] = self.head_w
        p["head_b"] = self.head_b
        return p

    def infer(self):
        out, _ = self.net.forward(self.X)
        return out

    def loss_and_grads(self):
        net = self.net
        out, _ = net.forward(self.X)
        last = out[:, -1, :]                                  # (B, H)
        pred = last @ self.head_w.T + self.head_b              # (B, 1)
        diff = pred - self.y
        loss = float(np.mean(diff * diff))
        d_pred = (2.0 / diff.size) * diff                      # (B, 1)
        grads_head = {"head_w": d_pred.T @ last, "head_b": d_pred.sum(axis=0)}
        self.grad_h_n[-1] = d_pred @ self.head_w               # (B, H)
        net.backward(self.grad_out, self.grad_h_n)
        grads = {k: v for k, v in net.grads.items() if k not in ("h0", "c0")}
        grads.update(grads_head)
        return loss, grads

    def train_step(self):
        loss, grads = self.loss_and_grads()
        if self._adam is None:
            self._adam = Adam(self.params())
        self._adam.step(grads)
        return loss
