"""In-place NumPy Adam (torch.optim.Adam semantics), shared by the clstm and numpy workers."""

import numpy as np

from common import BETA1, BETA2, EPS, LR


class Adam:
    def __init__(self, params, lr=LR, beta1=BETA1, beta2=BETA2, eps=EPS):
        self.params = params
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.tmp = {k: np.empty_like(v) for k, v in params.items()}
        self.t = 0

    def step(self, grads):
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        bc1 = 1.0 - b1 ** self.t
        bc2 = 1.0 - b2 ** self.t
        step_size = self.lr / bc1
        inv_sqrt_bc2 = 1.0 / np.sqrt(bc2)
        for k, p in self.params.items():
            g = grads[k]
            m, v, tmp = self.m[k], self.v[k], self.tmp[k]
            m *= b1
            m += (1.0 - b1) * g
            v *= b2
            np.multiply(g, g, out=tmp)
            tmp *= (1.0 - b2)
            v += tmp
            # p -= step_size * m / (sqrt(v) / sqrt(bc2) + eps)
            np.sqrt(v, out=tmp)
            tmp *= inv_sqrt_bc2
            tmp += self.eps
            np.divide(m, tmp, out=tmp)
            tmp *= step_size
            p -= tmp
