"""Stochastic optimizers: tiny objects with ``update_params(params, grads)``.

Modelled on scikit-learn's ``sklearn/neural_network/_stochastic_optimizers.py``,
with two differences: parameters are a dict (name -> array) and are updated
in place (the network's arrays keep their identity), and the state is exposed
through ``state_dict()`` / ``load_state_dict()`` so that ``save``/``load`` and
pickling can continue training exactly where it stopped.
"""

import numpy as np

__all__ = ["SGDOptimizer", "AdamOptimizer", "RMSpropOptimizer", "make_optimizer"]


class BaseOptimizer:
    """Holds the learning rate and the step counter ``t``."""

    _slots = ()

    def __init__(self, learning_rate_init=1e-3):
        self.learning_rate_init = float(learning_rate_init)
        self.learning_rate = float(learning_rate_init)
        self.t = 0
        self.state = {slot: {} for slot in self._slots}

    def _slot(self, slot, name, like):
        buf = self.state[slot].get(name)
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype:
            buf = np.zeros_like(like)
            self.state[slot][name] = buf
        return buf

    def update_params(self, params, grads):
        """Apply one step: ``params[name] += update(grads[name])`` in place."""
        self.t += 1
        for name, param in params.items():
            param += self._update(name, param, grads[name])

    def state_dict(self):
        arrays = {f"{slot}/{name}": value.copy()
                  for slot, buf in self.state.items() for name, value in buf.items()}
        return {"t": self.t, "learning_rate": self.learning_rate}, arrays

    def load_state_dict(self, scalars, arrays):
        self.t = int(scalars["t"])
        self.learning_rate = float(scalars["learning_rate"])
        self.state = {slot: {} for slot in self._slots}
        for key, value in arrays.items():
            slot, name = key.split("/", 1)
            if slot not in self.state:
                raise ValueError(f"unknown optimizer slot {slot!r} for {type(self).__name__}")
            self.state[slot][name] = np.array(value)


class SGDOptimizer(BaseOptimizer):
    """SGD with momentum, optionally Nesterov's (scikit-learn's formulation).

    v <- momentum * v - lr * g;  update = v, or momentum * v - lr * g with Nesterov.
    """

    _slots = ("velocity",)

    def __init__(self, learning_rate_init=0.01, momentum=0.9, nesterov=True):
        super().__init__(learning_rate_init)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def _update(self, name, param, grad):
        lr = param.dtype.type(self.learning_rate)
        if self.momentum == 0:
            return -lr * grad
        mu = param.dtype.type(self.momentum)
        v = self._slot("velocity", name, param)
        v *= mu
        v -= lr * grad
        if self.nesterov:
            return mu * v - lr * grad
        return v.copy()


class AdamOptimizer(BaseOptimizer):
    """Adam (Kingma & Ba 2015), bias-corrected step size as in scikit-learn and Keras.

    m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
    update = -lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)
    """

    _slots = ("m", "v")

    def __init__(self, learning_rate_init=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8):
        super().__init__(learning_rate_init)
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)

    def update_params(self, params, grads):
        self._step_size = (self.learning_rate * np.sqrt(1 - self.beta_2 ** (self.t + 1))
                           / (1 - self.beta_1 ** (self.t + 1)))
        super().update_params(params, grads)

    def _update(self, name, param, grad):
        f = param.dtype.type
        m = self._slot("m", name, param)
        v = self._slot("v", name, param)
        m *= f(self.beta_1)
        m += f(1 - self.beta_1) * grad
        v *= f(self.beta_2)
        v += f(1 - self.beta_2) * np.square(grad)
        return f(-self._step_size) * m / (np.sqrt(v) + f(self.epsilon))


class RMSpropOptimizer(BaseOptimizer):
    """RMSprop (Tieleman & Hinton 2012), Keras formulation without momentum.

    s <- rho s + (1 - rho) g^2;  update = -lr * g / (sqrt(s) + eps)
    """

    _slots = ("square_avg",)

    def __init__(self, learning_rate_init=1e-3, rho=0.9, epsilon=1e-8):
        super().__init__(learning_rate_init)
        self.rho = float(rho)
        self.epsilon = float(epsilon)

    def _update(self, name, param, grad):
        f = param.dtype.type
        s = self._slot("square_avg", name, param)
        s *= f(self.rho)
        s += f(1 - self.rho) * np.square(grad)
        return f(-self.learning_rate) * grad / (np.sqrt(s) + f(self.epsilon))


def make_optimizer(est):
    """The optimizer an estimator's hyperparameters describe."""
    if est.solver == "adam":
        return AdamOptimizer(est.learning_rate_init, est.beta_1, est.beta_2, est.epsilon)
    if est.solver == "sgd":
        return SGDOptimizer(est.learning_rate_init, est.momentum, est.nesterovs_momentum)
    if est.solver == "rmsprop":
        return RMSpropOptimizer(est.learning_rate_init, est.rho, est.epsilon)
    raise ValueError(f"solver must be 'adam', 'sgd' or 'rmsprop', got {est.solver!r}")
