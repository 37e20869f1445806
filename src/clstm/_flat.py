"""A model's parameters and their gradients as views of one flat array each.

The training loop updates every parameter once per mini-batch. With one
array per parameter that is a Python loop of small NumPy calls per
parameter (and per optimizer slot); with every parameter a view of one flat
buffer it is one vectorised update over all of them, the gradient norm is
one reduction, clipping one multiply and zeroing the gradients one fill.

This is an in-memory arrangement only: the model's parameter dicts still map
each name to an array of its own shape (now a view), ``state_dict``,
pickles and saved files see the same names, shapes and values as before.
Anything that replaces a parameter array (``load_state_dict``, unpickling,
a deep copy) simply leaves the flat buffer; the training loop checks
:meth:`FlatParameters.holds` once per epoch and gathers a new one if needed.

>>> import numpy as np
>>> flat = FlatParameters({"w": np.ones((2, 3), np.float32), "b": np.zeros(2, np.float32)})
>>> flat.values.shape, flat.params["w"].base is flat.values
((8,), True)
>>> flat.grads["b"][:] = 3.0
>>> float(flat.grad_norm())
4.242640687119285
"""

import math

import numpy as np

from clstm._optimizer_steps import sum_of_squares

__all__ = ["FlatParameters", "flat_views", "layout_size"]


def layout_size(layout):
    """Entries of a layout ((name, shape), ...) in total."""
    return sum(int(np.prod(shape, dtype=np.int64)) for _, shape in layout)


def flat_views(buffer, layout):
    """name -> the view of the 1-D ``buffer`` with that entry's shape, in layout order."""
    views, offset = {}, 0
    for name, shape in layout:
        size = int(np.prod(shape, dtype=np.int64))
        views[name] = buffer[offset:offset + size].reshape(shape)
        offset += size
    return views


class FlatParameters:
    """Parameters ``params`` (name -> array, one floating dtype) copied into one
    contiguous array ``values``; ``params`` / ``grads`` map each name to its
    view of ``values`` / of the gradient buffer ``grad`` (same shapes).

    The caller rebinds its parameters to the views in :attr:`params` (the
    model does: :meth:`clstm._model.TrainableModel.flat_params`).
    """

    def __init__(self, params):
        dtypes = {np.asarray(v).dtype for v in params.values()}
        if len(dtypes) != 1 or next(iter(dtypes)).kind != "f":
            raise ValueError(f"flat parameters need one floating dtype, got {sorted(map(str, dtypes))}")
        dtype = dtypes.pop()
        self.layout = tuple((name, np.shape(value)) for name, value in params.items())
        self.values = np.empty(layout_size(self.layout), dtype=dtype)
        self.grad = np.zeros_like(self.values)
        self.params = flat_views(self.values, self.layout)
        self.grads = flat_views(self.grad, self.layout)
        for name, value in params.items():
            self.params[name][...] = value

    def holds(self, params):
        """Whether every entry of ``params`` named here is this buffer's view
        (identity: a replaced array means the buffer is stale)."""
        return all(params.get(name) is view for name, view in self.params.items())

    def zero_grads(self):
        """Zero the gradient buffer (one fill); returns a new dict of its views."""
        self.grad.fill(0)
        return dict(self.grads)

    def gather_grads(self, grads):
        """``grads`` with every name here mapped to its view of ``grad``, which
        then holds the values: arrays already its views are left alone, others
        (e.g. gradients summed elsewhere, as the Dask training data returns
        them) are copied in. Other names pass through."""
        gathered = dict(grads)
        for name, view in self.grads.items():
            g = grads[name]
            if g is not view:
                np.copyto(view, g)
                gathered[name] = view
        return gathered

    def grad_norm(self):
        """The gradient's Euclidean norm, summed in float64 (one pass, no
        float64 copy of the gradient).

        A compiled loop, not ``np.dot``: above 10,000 entries OpenBLAS threads
        a dot product, and its threads then spin for a while after every
        mini-batch, doubling the CPU time of a 2-thread fit for no gain.
        """
        return math.sqrt(sum_of_squares(self.grad))
