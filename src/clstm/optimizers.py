"""Optimizers for the network API: one compiled pass per parameter and step.

The estimators train with these; a loop of your own over ``clstm.LSTM``,
``clstm.GRU`` or ``clstm.ConvLSTM`` (a custom loss, a head of your own)
uses them the same way::

    >>> import numpy as np, clstm
    >>> net = clstm.LSTM(3, 8, random_state=0)
    >>> opt = clstm.optimizers.Adam(learning_rate=1e-2)
    >>> X = np.random.default_rng(0).standard_normal((4, 5, 3))
    >>> before = net.params["weight_hh_l0"].copy()
    >>> out, _ = net.forward(X)
    >>> _ = net.backward(2 * out / out.size)          # d(mean(out ** 2)) / d out
    >>> opt.step(net)                                # or opt.step(net.params, net.grads)
    >>> opt.iterations, bool(np.any(net.params["weight_hh_l0"] != before))
    (1, True)

Each step updates the arrays of ``params`` in place (the network keeps its
arrays; its compiled plan sees the new values), and their slots (Adam's
moments, the momentum, RMSprop's average) with them, in one nogil loop per
parameter that reads the gradient and the slots once (``clstm._optimizer_steps``).
Any extra dict of float arrays works too (a head's weights beside the
network's). A step checks everything before it changes anything: a missing
gradient, a gradient of the wrong shape, a NaN or infinite gradient or a
read-only parameter raise ``ValueError`` and leave parameters and slots as
they were.

The formulas are Keras's (and scikit-learn's MLP's): Adam's epsilon is added
to ``sqrt(v)`` after the bias correction is folded into the step size, which
differs from PyTorch's ``torch.optim.Adam`` only in entries whose gradient is
within a few epsilon of zero. ``global_clipnorm`` rescales all gradients
together when their joint L2 norm exceeds it (Keras's argument of that
name; PyTorch's ``clip_grad_norm_``).
"""

import math
import numbers

import numpy as np

from clstm._optimizer_steps import dense_sum_of_squares, sum_of_squares
from clstm._optimizers import AdamOptimizer, RMSpropOptimizer, SGDOptimizer

__all__ = ["Optimizer", "Adam", "SGD", "RMSprop"]


def _positive(name, value, allow_zero=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return float(value)


def _fraction(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")
    return float(value)


class Optimizer:
    """Base of the public optimizers: the step, the checks, the state.

    A subclass builds ``self._opt`` (the estimators' optimizer of its kind,
    :mod:`clstm._optimizers`, which holds the learning rate, the step count and
    the slots) and names its other hyperparameters in ``_hyper``.
    """

    def __init__(self, global_clipnorm):
        self.global_clipnorm = (None if global_clipnorm is None
                                else _positive("global_clipnorm", global_clipnorm))

    @property
    def learning_rate(self):
        """The step size of the next steps; assign to change it (a schedule of your own)."""
        return self._opt.learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        self._opt.learning_rate = _positive("learning_rate", value)

    @property
    def iterations(self):
        """Steps taken so far (Adam's bias correction counts them)."""
        return self._opt.t

    def get_config(self):
        """Constructor arguments: ``type(opt)(**opt.get_config())`` is a fresh optimizer."""
        return {"learning_rate": self.learning_rate, "global_clipnorm": self.global_clipnorm,
                **self._hyper()}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"

    # -- the step ---------------------------------------------------------------
    def step(self, params, grads=None):
        """One update of ``params`` (name -> array, changed in place) from
        ``grads`` (name -> array of the same shape; extra names, such as a
        network's ``"h0"``, are ignored). ``params`` may be a network: then
        its ``params`` and ``grads`` (after ``backward``)."""
        if grads is None and hasattr(params, "params") and hasattr(params, "grads"):
            params, grads = params.params, params.grads
        if not isinstance(params, dict) or not isinstance(grads, dict):
            raise TypeError("step(params, grads): two dicts name -> array, or step(network) "
                            f"after its backward; got {type(params).__name__} and "
                            f"{type(grads).__name__}")
        if not params:
            raise ValueError("step: no parameters to update")
        if not grads:
            raise ValueError("step: no gradients; run the network's backward before step")
        # the common case (a network's gradients) checked in one compiled call;
        # anything else, or a gradient that is not finite, takes the loop below
        total = dense_sum_of_squares(params, grads)
        if total is not None and math.isfinite(total):
            self._update(params, {name: grads[name] for name in params}, total)
            return
        chosen, total = {}, 0.0
        for name, param in params.items():
            if not isinstance(param, np.ndarray) or param.dtype.kind != "f":
                raise TypeError(f"parameter {name!r} must be a float NumPy array, got "
                                f"{type(param).__name__}"
                                + (f" of {param.dtype}" if isinstance(param, np.ndarray) else ""))
            if not param.flags.writeable:
                raise ValueError(f"parameter {name!r} is read-only; a step updates it in place")
            if name not in grads:
                raise ValueError(f"no gradient for parameter {name!r}; gradients are given "
                                 f"for {sorted(grads)}")
            grad = grads[name]
            sparse = hasattr(grad, "rows")       # a row-sparse gradient (an embedding's)
            values = np.asarray(grad.values if sparse else grad)
            if values.dtype.kind not in "fiu":
                raise TypeError(f"gradient of {name!r} must be a float array, got {values.dtype}")
            shape = tuple(grad.shape) if sparse else values.shape
            if shape != param.shape:
                raise ValueError(f"gradient of {name!r} has shape {shape}, the "
                                 f"parameter {param.shape}")
            if sparse and len(grad.rows) and not (0 <= np.min(grad.rows)
                                                  and np.max(grad.rows) < param.shape[0]):
                raise ValueError(f"gradient of {name!r} names rows outside the parameter's "
                                 f"{param.shape[0]}")
            flat = np.ascontiguousarray(values, dtype=param.dtype).reshape(-1)
            # (dense: the gradient as the step reads it, in the parameter's dtype)
            chosen[name] = grad if sparse else flat.reshape(param.shape)
            squares = sum_of_squares(flat)
            if not math.isfinite(squares):
                raise ValueError(f"gradient of {name!r} is not finite (NaN or inf); nothing "
                                 "was updated. Lower the learning rate, clip the gradients "
                                 "(global_clipnorm) or check the loss and the inputs")
            total += squares
        self._update(params, chosen, total)

    def _update(self, params, chosen, total):
        """The step from checked gradients ``chosen`` (name -> array) whose
        squares sum to ``total``: scaled to global_clipnorm where they exceed it."""
        if self.global_clipnorm is not None:
            norm = math.sqrt(total)
            if norm > self.global_clipnorm:
                scale = self.global_clipnorm / norm
                chosen = {name: _scaled(g, scale) for name, g in chosen.items()}
        self._opt.update_params(params, chosen)

    # -- state --------------------------------------------------------------------
    def state_dict(self):
        """``{"iterations": int, "slots": {"slot/param": array}}``, copies."""
        scalars, arrays = self._opt.state_dict()
        return {"iterations": int(scalars["t"]), "slots": arrays}

    def load_state_dict(self, state, params=None):
        """Continue from :meth:`state_dict`'s output; with ``params``, every slot
        is checked against its parameter's shape and dtype."""
        if not isinstance(state, dict) or set(state) != {"iterations", "slots"}:
            raise ValueError("optimizer state must be a dict with the keys 'iterations' and "
                             "'slots' (what state_dict() returns)")
        rate = self.learning_rate
        self._opt.load_state_dict({"t": state["iterations"]}, dict(state["slots"]), params)
        self._opt.learning_rate = rate


def _scaled(grad, scale):
    if hasattr(grad, "rows"):
        return type(grad)(grad.rows, grad.values * grad.values.dtype.type(scale), grad.shape)
    grad = np.asarray(grad)
    return grad * grad.dtype.type(scale)


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) as Keras writes it::

        m <- beta_1 m + (1 - beta_1) g;   v <- beta_2 v + (1 - beta_2) g^2
        p <- p - learning_rate * sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v) + epsilon)
    """

    def __init__(self, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 global_clipnorm=None):
        super().__init__(global_clipnorm)
        self._opt = AdamOptimizer(_positive("learning_rate", learning_rate),
                                  _fraction("beta_1", beta_1),
                                  _fraction("beta_2", beta_2), _positive("epsilon", epsilon))

    def _hyper(self):
        o = self._opt
        return {"beta_1": o.beta_1, "beta_2": o.beta_2, "epsilon": o.epsilon}


class SGD(Optimizer):
    """SGD, with momentum (and Nesterov's) as scikit-learn writes it::

        v <- momentum v - learning_rate g;   p <- p + v
        (nesterov: p <- p + momentum v - learning_rate g)
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, global_clipnorm=None):
        super().__init__(global_clipnorm)
        self._opt = SGDOptimizer(_positive("learning_rate", learning_rate),
                                 _fraction("momentum", momentum), bool(nesterov))

    def _hyper(self):
        return {"momentum": self._opt.momentum, "nesterov": self._opt.nesterov}


class RMSprop(Optimizer):
    """RMSprop (Tieleman & Hinton 2012) as Keras writes it, without momentum::

        s <- rho s + (1 - rho) g^2;   p <- p - learning_rate g / (sqrt(s) + epsilon)
    """

    def __init__(self, learning_rate=1e-3, rho=0.9, epsilon=1e-7, global_clipnorm=None):
        super().__init__(global_clipnorm)
        self._opt = RMSpropOptimizer(_positive("learning_rate", learning_rate),
                                     _fraction("rho", rho),
                                     _positive("epsilon", epsilon))

    def _hyper(self):
        return {"rho": self._opt.rho, "epsilon": self._opt.epsilon}
