"""PyTorch worker: torch.nn.LSTM (batch_first) + nn.Linear(H, 1), MSELoss, torch.optim.Adam.

The cells: torch.nn.GRU, and torch.nn.LSTM(proj_size=H // 2) (head nn.Linear(P, 1))."""

import numpy as np
import torch

from common import BETA1, BETA2, CELLS, EPS, LR


def setup(n_threads):
    torch.set_num_threads(n_threads)
    try:
        torch.set_num_interop_threads(n_threads)
    except RuntimeError:
        pass


def version():
    return torch.__version__


def supports(cell):
    if cell.kind == "lstm" and (cell.peephole or cell.coupled_gates or cell.layer_norm):
        raise NotImplementedError(f"torch.nn.LSTM has no {cell.title}")


class _Model(torch.nn.Module):
    def __init__(self, cfg, cell=CELLS["lstm"]):
        super().__init__()
        if cell.kind == "gru":
            self.lstm = torch.nn.GRU(cfg.I, cfg.H, num_layers=cfg.L, batch_first=True)
        else:
            kw = {"proj_size": cell.out_size(cfg.H)} if cell.proj else {}
            self.lstm = torch.nn.LSTM(cfg.I, cfg.H, num_layers=cfg.L, batch_first=True, **kw)
        self.head = torch.nn.Linear(cell.out_size(cfg.H), 1)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1, :])


class Runner:
    def __init__(self, cfg, params, data, n_threads, cell=CELLS["lstm"]):
        self.cfg = cfg
        self.model = _Model(cfg, cell)
        with torch.no_grad():
            for name, value in params.items():
                getattr(self.model.lstm, name).copy_(torch.from_numpy(value))
            self.model.head.weight.copy_(torch.from_numpy(data["head_w"]))
            self.model.head.bias.copy_(torch.from_numpy(data["head_b"]))
        self.X = torch.from_numpy(np.ascontiguousarray(data["X"]))
        self.y = torch.from_numpy(np.ascontiguousarray(data["y"]))
        self.loss_fn = torch.nn.MSELoss()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=LR, betas=(BETA1, BETA2), eps=EPS)
        self.param_names = list(params) + ["head_w", "head_b"]

    def _named(self):
        d = {name: getattr(self.model.lstm, name) for name in self.param_names[:-2]}
        d["head_w"] = self.model.head.weight
        d["head_b"] = self.model.head.bias
        return d

    def params(self):
        return {k: v.detach().numpy().copy() for k, v in self._named().items()}

    def infer(self):
        with torch.inference_mode():
            out, _ = self.model.lstm(self.X)
        return out

    def loss_and_grads(self):
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(self.X), self.y)
        loss.backward()
        return float(loss), {k: v.grad.numpy().copy() for k, v in self._named().items()}

    def train_step(self):
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.model(self.X), self.y)
        loss.backward()
        self.opt.step()
        return loss
