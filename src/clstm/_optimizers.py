"""Stochastic optimizers: tiny objects with ``update_params(params, grads)``.

Modelled on scikit-learn's ``sklearn/neural_network/_stochastic_optimizers.py``,
with two differences: parameters are a dict (name -> array) and are updated
in place (the network's arrays keep their identity), and an optimizer saves
and restores itself: ``get_config()`` (its constructor arguments) plus
``get_state()`` / ``optimizer_from_state()`` (step count and per-parameter
slots), so that ``save``/``load`` and pickling continue training exactly
where it stopped.

Row-sparse gradients (:class:`clstm._tokens.RowGradient`, the embedding
table's) get lazy updates: only the rows in the gradient move, and only
their slots (moments, velocity) decay and accumulate, as in torch's
``SparseAdam`` (and TensorFlow's lazy Adam); the step count ``t`` (Adam's
bias correction) is the optimizer's. Rows that no batch touches keep their
values and slots exactly. Each ``_step`` is written once for all: it updates
the 1-D contiguous parameter and slot arrays it is handed in place (a flat
buffer, one parameter, or the rows' gathered copies that are then written
back), with the compiled loops of :mod:`clstm._optimizer_steps` (one pass,
NumPy's rounding).

Every optimizer carries a learning-rate schedule (:class:`LearningRateSchedule`):
per-epoch step sizes named as scikit-learn's MLP ``learning_rate``. The
schedule's position (epochs seen, plateau reductions) is part of the
optimizer's state, so it continues across ``warm_start``, ``partial_fit``,
pickling and ``save``/``load``.
"""

import copy
import math
import numbers

import numpy as np

from clstm._flat import flat_views
from clstm._optimizer_steps import (adam_dense_update, adam_step, adam_steps,
                                    rmsprop_dense_update, rmsprop_step, sgd_dense_update,
                                    sgd_step)

__all__ = ["SGDOptimizer", "AdamOptimizer", "RMSpropOptimizer", "LearningRateSchedule",
           "make_optimizer", "optimizer_from_state", "SCHEDULES"]

SCHEDULES = ("constant", "invscaling", "adaptive", "cosine")


class LearningRateSchedule:
    """The step size of each epoch, from ``learning_rate_init`` and the epochs seen.

    ``epoch`` counts the epochs begun so far over all calls (0 before the
    first); epoch ``e`` (1-based) uses

    * ``"constant"``: ``init``;
    * ``"invscaling"``: ``init / e ** power_t`` (scikit-learn's MLP counts
      samples seen instead of epochs);
    * ``"adaptive"``: ``init / FACTOR ** reductions``; the estimator adds a
      reduction (:meth:`reduce`) when the monitored quantity stalls, as
      scikit-learn's MLP does (divide by 5, down to 1e-6);
    * ``"cosine"``: ``floor + (init - floor) * (1 + cos(pi * p / period)) / 2``
      with ``p = (e - 1) % period`` (cosine annealing over ``period``
      epochs, ``floor = FLOOR * init``, then a warm restart; Loshchilov &
      Hutter 2017).
    """

    FACTOR = 5.0            # adaptive: divide by this on a plateau (scikit-learn's MLP)
    MIN_RATE = 1e-6         # adaptive: no reduction below this; training stops instead
    FLOOR = 0.01            # cosine: the rate at the end of a cycle, times init

    def __init__(self, kind="constant", power_t=0.5, period=1):
        if kind not in SCHEDULES:
            raise ValueError(f"learning rate schedule must be one of {SCHEDULES}, got {kind!r}")
        self.kind = kind
        self.power_t = float(power_t)
        self.period = int(period)
        self.epoch = 0
        self.reductions = 0

    def get_config(self):
        return {"kind": self.kind, "power_t": self.power_t, "period": self.period}

    def rate(self, init, epoch):
        """The step size of (1-based) epoch ``epoch``."""
        if self.kind == "invscaling":
            return init / epoch ** self.power_t
        if self.kind == "adaptive":
            return init / self.FACTOR ** self.reductions
        if self.kind == "cosine":
            floor = self.FLOOR * init
            phase = ((epoch - 1) % self.period) / self.period
            return floor + (init - floor) * 0.5 * (1.0 + math.cos(math.pi * phase))
        return init

    def can_reduce(self, current_rate):
        """Whether a plateau can still lower the rate (scikit-learn: above 1e-6)."""
        return self.kind == "adaptive" and current_rate > self.MIN_RATE

    def state_dict(self):
        return {"epoch": self.epoch, "reductions": self.reductions}

    def load_state_dict(self, scalars):
        for key in ("epoch", "reductions"):
            v = scalars.get(key, 0)      # files written before schedules: constant, 0
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 0:
                raise ValueError(f"learning rate schedule {key} must be an int >= 0, got {v!r}")
            setattr(self, key, int(v))


class BaseOptimizer:
    """Holds the learning rate and the step counter ``t``. A subclass names its
    slots (``_slots``) and defines ``_step(param, grad, *slots)``: one step
    over 1-D contiguous arrays of one dtype, in place."""

    _slots = ()

    def __init__(self, learning_rate_init=1e-3, schedule=None):
        self.learning_rate_init = float(learning_rate_init)
        self.schedule = LearningRateSchedule(**(schedule or {}))
        self.learning_rate = float(learning_rate_init)
        self.t = 0
        self.state = {slot: {} for slot in self._slots}

    def get_config(self):
        """Constructor arguments: ``type(opt)(**opt.get_config())`` is a fresh copy."""
        return {"learning_rate_init": self.learning_rate_init,
                "schedule": self.schedule.get_config()}

    # -- the schedule: called by the training loop once per epoch ---------------
    def start_epoch(self):
        """Advance the schedule to the next epoch; returns that epoch's step size."""
        self.schedule.epoch += 1
        self.learning_rate = self.schedule.rate(self.learning_rate_init, self.schedule.epoch)
        return self.learning_rate

    def reduce_on_plateau(self):
        """``"adaptive"``: divide the rate by the schedule's factor; False when the
        schedule cannot (another kind, or the rate is at its minimum)."""
        if not self.schedule.can_reduce(self.learning_rate):
            return False
        self.schedule.reductions += 1
        self.learning_rate = self.schedule.rate(self.learning_rate_init, self.schedule.epoch)
        return True

    def _slot(self, slot, name, like):
        buf = self.state[slot].get(name)
        if buf is None or buf.shape != like.shape or buf.dtype != like.dtype:
            buf = np.zeros_like(like)
            self.state[slot][name] = buf
        return buf

    def update_params(self, params, grads, flat=None):
        """Apply one step: ``params[name] += update(grads[name])`` in place (for a
        row-sparse gradient: ``params[name][rows] += update(values)``).

        ``flat`` (a :class:`clstm._flat.FlatParameters` whose views are some of
        ``params``): those parameters take one vectorised step over the flat
        buffer, their slots kept as views of one flat array per slot. The
        arithmetic is elementwise and the same, so the result is bitwise
        what the per-parameter loop gives.
        """
        self.t += 1
        # the common case (every gradient and slot ready to step in place) in
        # one compiled call: this loop's steps, without its Python
        if flat is None and self._dense_update(params, grads):
            return
        names = params.keys()
        if flat is not None:
            grads = flat.gather_grads(grads)
            self._step(flat.values, flat.grad, *self._flat_slots(flat))
            names = [name for name in params if name not in flat.params]
        batch = []        # the common case, stepped together below: no copies, no checks
        kept = self.__dict__.setdefault("_views", {})
        in_use = self._slots_in_use()
        for name in names:
            param = params[name]
            grad = grads[name]
            if (type(grad) is np.ndarray and grad.dtype == param.dtype
                    and grad.flags.c_contiguous):
                views = self._flat_views(name, param, kept.get(name), in_use)
                if views is not None:
                    batch.append((views[0], grad.reshape(-1), *views[1:]))
                    continue
            slots = [self._slot(slot, name, param) for slot in self._slots_in_use()]
            rows = getattr(grad, "rows", None)
            if rows is None:
                _step_in_place(self._step, param, grad, slots)
                continue
            gathered = [param[rows]] + [s[rows] for s in slots]
            _step_in_place(self._step, gathered[0], grad.values, gathered[1:])
            for whole, part in zip([param] + slots, gathered):
                whole[rows] = part
        if batch:
            self._steps(batch)

    def _dense_update(self, params, grads):
        """The step of every parameter in one compiled call (a subclass's
        ``*_dense_update`` of clstm._optimizer_steps), where every gradient
        and slot is ready to step in place: True; else False, nothing changed."""
        return False

    def _steps(self, batch):
        """``_step(*args)`` for each args of ``batch`` (each parameter's own
        arrays: independent steps); a solver may take them in one call."""
        for args in batch:
            self._step(*args)

    def _flat_views(self, name, param, kept, slots):
        """1-D views of a C-contiguous ``param`` and of its slots (made as
        :meth:`_slot` makes them), kept while the parameter and its slots are
        the same objects (``kept``: what this returned last for ``name``, or
        None; ``slots``: the slots in use); None where one of them is not
        C-contiguous."""
        if kept is not None and kept[0] is param:
            state = self.state
            for slot, s in zip(slots, kept[1]):     # (a loop: all() of a generator
                if state[slot].get(name) is not s:  # cost more than the step here)
                    break
            else:
                return kept[2]
        arrays = [self._slot(slot, name, param) for slot in slots]
        if not (param.flags.c_contiguous and all(a.flags.c_contiguous for a in arrays)):
            return None
        views = (param.reshape(-1), *[a.reshape(-1) for a in arrays])
        self._views[name] = (param, tuple(arrays), views)
        return views

    def _flat_slots(self, flat):
        """One flat array per slot in use, laid out like ``flat.values``; the
        per-parameter entries of :attr:`state` become its views (values carried
        over, zeros where a slot is new or no longer fits, as :meth:`_slot`).
        Built again only when :attr:`state` was replaced or changed."""
        slots = self._slots_in_use()
        built = self.__dict__.get("_flat_state")
        if (built is not None and (built[0] is flat.layout or built[0] == flat.layout) and all(
                self.state[slot].get(name) is view
                for slot in slots for name, view in built[1][slot][1].items())):
            return [built[1][slot][0] for slot in slots]
        arrays = {}
        for slot in slots:
            buffer = np.zeros_like(flat.values)
            views = flat_views(buffer, flat.layout)
            for name, view in views.items():
                old = self.state[slot].get(name)
                if old is not None and old.shape == view.shape and old.dtype == view.dtype:
                    view[...] = old
                self.state[slot][name] = view
            arrays[slot] = (buffer, views)
        self._flat_state = (flat.layout, arrays)
        return [arrays[slot][0] for slot in slots]

    def __getstate__(self):
        # the flat slot buffers are an in-memory arrangement: copies (pickle,
        # deepcopy) keep the per-parameter slots only (a copied view would
        # no longer share the copied buffer's memory)
        state = self.__dict__.copy()
        state.pop("_flat_state", None)
        state.pop("_views", None)
        return state

    def __deepcopy__(self, memo):
        # what copy.deepcopy makes of __getstate__'s dict, with the slots'
        # arrays copied by NumPy in one pass rather than one deepcopy dispatch
        # each (the training loop copies the optimizer every epoch)
        state = self.__getstate__()
        slots = state.pop("state")
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        new.__dict__.update(copy.deepcopy(state, memo))
        new.state = {slot: {name: np.array(value) for name, value in buf.items()}
                     for slot, buf in slots.items()}
        return new

    def state_dict(self):
        """(scalars, arrays): the step count and copies of the slots, keyed ``slot/param``."""
        arrays = {f"{slot}/{name}": value.copy()
                  for slot, buf in self.state.items() for name, value in buf.items()}
        return {"t": self.t, **self.schedule.state_dict()}, arrays

    def _slots_in_use(self):
        """The slots every parameter has once a step was taken."""
        return self._slots

    def load_state_dict(self, scalars, arrays, params=None):
        """Restore :meth:`state_dict`'s output; with ``params`` (name -> array),
        every slot must belong to a parameter and have its shape and dtype, and
        after a step every parameter must have its slots."""
        t = scalars["t"]
        if isinstance(t, bool) or not isinstance(t, numbers.Integral) or t < 0:
            raise ValueError(f"optimizer step count must be an int >= 0, got {t!r}")
        state = {slot: {} for slot in self._slots}
        for key, value in arrays.items():
            slot, _, name = key.partition("/")
            if slot not in state:
                raise ValueError(f"unknown optimizer slot {slot!r} for {type(self).__name__}")
            value = np.asarray(value)
            if params is not None:
                if name not in params:
                    raise ValueError(f"optimizer slot {key!r} names no parameter of the model")
                ref = params[name]
                if value.shape != ref.shape or value.dtype != ref.dtype:
                    raise ValueError(f"optimizer slot {key!r} has shape {value.shape} / dtype "
                                     f"{value.dtype}, its parameter {ref.shape} / {ref.dtype}")
            if value.dtype.kind != "f" or not np.isfinite(value).all():
                raise ValueError(f"optimizer slot {key!r} is not a finite float array")
            state[slot][name] = np.array(value)
        if params is not None:
            for slot in self._slots_in_use():
                expected = set(params) if t > 0 else set()
                if set(state[slot]) != expected:
                    raise ValueError(f"optimizer slot {slot!r} after {t} steps has entries for "
                                     f"{sorted(state[slot])}, expected {sorted(expected)}")
        self.schedule.load_state_dict(scalars)
        self.t = int(t)
        self.state = state
        self.learning_rate = self.schedule.rate(self.learning_rate_init,
                                                max(self.schedule.epoch, 1))

    def get_state(self):
        """(metadata, arrays) that :func:`optimizer_from_state` turns back into this optimizer."""
        scalars, arrays = self.state_dict()
        return {"class": type(self).__name__, "config": self.get_config(), **scalars}, arrays

    def __setstate__(self, state):
        # read-only slots (e.g. joblib memory maps) -> writable copies (updated in place)
        self.__dict__.update(state)
        for buf in self.state.values():
            for name, value in list(buf.items()):
                if not value.flags.writeable:
                    buf[name] = np.array(value)


class SGDOptimizer(BaseOptimizer):
    """SGD with momentum, optionally Nesterov's (scikit-learn's formulation).

    v <- momentum * v - lr * g;  update = v, or momentum * v - lr * g with Nesterov.
    """

    _slots = ("velocity",)

    def __init__(self, learning_rate_init=0.01, momentum=0.9, nesterov=True, schedule=None):
        super().__init__(learning_rate_init, schedule)
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}

    def _slots_in_use(self):
        return () if self.momentum == 0 else self._slots

    def _step(self, param, grad, velocity=None):
        f = param.dtype.type
        sgd_step(param, grad, None if self.momentum == 0 else velocity,
                 f(self.learning_rate), f(self.momentum), self.nesterov)

    def _dense_update(self, params, grads):
        return sgd_dense_update(params, grads,
                                None if self.momentum == 0 else self.state["velocity"],
                                self.learning_rate, self.momentum, self.nesterov)


class AdamOptimizer(BaseOptimizer):
    """Adam (Kingma & Ba 2015), bias-corrected step size as in scikit-learn and Keras.

    m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
    update = -lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)
    """

    _slots = ("m", "v")

    def __init__(self, learning_rate_init=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 schedule=None):
        super().__init__(learning_rate_init, schedule)
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.epsilon = float(epsilon)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon}

    def update_params(self, params, grads, flat=None):
        self._step_size = (self.learning_rate * math.sqrt(1 - self.beta_2 ** (self.t + 1))
                           / (1 - self.beta_1 ** (self.t + 1)))
        super().update_params(params, grads, flat)

    def _dense_update(self, params, grads):
        return adam_dense_update(params, grads, self.state["m"], self.state["v"], self.beta_1,
                                 1 - self.beta_1, self.beta_2, 1 - self.beta_2,
                                 -self._step_size, self.epsilon)

    def _step(self, param, grad, m, v):
        # (the compiled step rounds the scalars to the array's dtype, as NumPy would)
        adam_step(param, grad, m, v, self.beta_1, 1 - self.beta_1, self.beta_2,
                  1 - self.beta_2, -self._step_size, self.epsilon)

    def _steps(self, batch):
        adam_steps(batch, self.beta_1, 1 - self.beta_1, self.beta_2, 1 - self.beta_2,
                   -self._step_size, self.epsilon)


class RMSpropOptimizer(BaseOptimizer):
    """RMSprop (Tieleman & Hinton 2012), Keras formulation without momentum.

    s <- rho s + (1 - rho) g^2;  update = -lr * g / (sqrt(s) + eps)
    """

    _slots = ("square_avg",)

    def __init__(self, learning_rate_init=1e-3, rho=0.9, epsilon=1e-8, schedule=None):
        super().__init__(learning_rate_init, schedule)
        self.rho = float(rho)
        self.epsilon = float(epsilon)

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "epsilon": self.epsilon}

    def _step(self, param, grad, s):
        f = param.dtype.type
        rmsprop_step(param, grad, s, f(self.rho), f(1 - self.rho), f(-self.learning_rate),
                     f(self.epsilon))

    def _dense_update(self, params, grads):
        return rmsprop_dense_update(params, grads, self.state["square_avg"], self.rho,
                                    1 - self.rho, -self.learning_rate, self.epsilon)


def make_optimizer(est):
    """The optimizer an estimator's hyperparameters describe (schedule included:
    ``learning_rate``, ``power_t``, and ``max_iter`` as the cosine period)."""
    schedule = {"kind": est.learning_rate, "power_t": est.power_t, "period": est.max_iter}
    if est.solver == "adam":
        return AdamOptimizer(est.learning_rate_init, est.beta_1, est.beta_2, est.epsilon,
                             schedule=schedule)
    if est.solver == "sgd":
        return SGDOptimizer(est.learning_rate_init, est.momentum, est.nesterovs_momentum,
                            schedule=schedule)
    if est.solver == "rmsprop":
        return RMSpropOptimizer(est.learning_rate_init, est.rho, est.epsilon, schedule=schedule)
    raise ValueError(f"solver must be 'adam', 'sgd' or 'rmsprop', got {est.solver!r}")


def _step_in_place(step, param, grad, slots):
    """``step`` over ``param`` and its ``slots`` as 1-D contiguous arrays, the
    gradient cast to their dtype; arrays that are not C-contiguous are
    stepped as contiguous copies and written back."""
    arrays = [param, *slots]
    work = [a if a.flags.c_contiguous else np.ascontiguousarray(a) for a in arrays]
    step(work[0].reshape(-1), np.ascontiguousarray(grad, dtype=param.dtype).reshape(-1),
         *[w.reshape(-1) for w in work[1:]])
    for a, w in zip(arrays, work):
        if w is not a:
            a[...] = w


_OPTIMIZERS = {cls.__name__: cls for cls in (SGDOptimizer, AdamOptimizer, RMSpropOptimizer)}


def optimizer_from_state(meta, arrays, params):
    """The optimizer :meth:`BaseOptimizer.get_state` described, its slots checked
    against the model parameters ``params``."""
    cls = _OPTIMIZERS.get(meta["class"])
    if cls is None:
        raise ValueError(f"unknown optimizer {meta['class']!r} (one of {sorted(_OPTIMIZERS)})")
    optimizer = cls(**meta["config"])
    scalars = {k: meta[k] for k in ("t", "epoch", "reductions") if k in meta}
    optimizer.load_state_dict(scalars, arrays, params)
    return optimizer
