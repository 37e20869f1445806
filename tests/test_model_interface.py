"""The model (network + head + loss) uses its network only through the generic interface.

A wrapper that exposes nothing but that interface trains, predicts, copies and
saves exactly like the network it wraps; a network whose state is ``("h",)``
alone (as a GRU's) works unchanged, gradients included.
"""

import numpy as np
import pytest

from clstm import LSTM
from clstm import _model
from clstm._model import SequenceModel

# What models and persistence may use (see _lstm.py, "generic interface").
INTERFACE = {"state_names", "output_size", "run", "backward_state", "clear_cache",
             "get_config", "rng_state", "state_dict", "load_state_dict", "params", "grads",
             "train", "eval", "num_directions", "num_layers"}


class PublicOnly:
    """An LSTM seen only through the interface: anything else is an AttributeError."""

    def __init__(self, **config):
        object.__setattr__(self, "_net", LSTM(**config))

    def __getattr__(self, name):
        if name not in INTERFACE:
            raise AttributeError(f"the model used {name!r}, outside the network interface")
        return getattr(object.__getattribute__(self, "_net"), name)

    def __setattr__(self, name, value):
        if name not in INTERFACE:
            raise AttributeError(f"the model set {name!r}, outside the network interface")
        setattr(self._net, name, value)


class HiddenStateOnly(PublicOnly):
    """A network whose state is h alone: an LSTM whose c restarts at 0 on each call."""

    state_names = ("h",)

    def run(self, X, state=None, lengths=None, *, keep_cache=True):
        h0 = None if state is None else state[0]
        out, (h_n, _) = self._net.run(X, None if h0 is None else (h0, np.zeros_like(h0)),
                                      lengths, keep_cache=keep_cache)
        return out, (h_n,)

    def backward_state(self, grad_out, grad_state=None):
        return self._net.backward_state(
            grad_out, None if grad_state is None else (grad_state[0], None))


CONFIG = dict(input_size=2, hidden_size=3, num_layers=2, bidirectional=True, dtype="float64",
              dropout=0.0, recurrent_dropout=0.0, n_jobs=None)


def _models(network_cls, loss, return_sequences):
    """The same model on a plain LSTM and on ``network_cls``."""
    plain = LSTM(**CONFIG, random_state=0)
    wrapped = network_cls(**CONFIG, random_state=1)
    wrapped.load_state_dict(plain.state_dict())
    rng = np.random.default_rng(0)
    n_out = 1 if loss == "log_loss" else 3
    head_w = rng.normal(size=(6, n_out))
    head_b = rng.normal(size=n_out)
    return (SequenceModel(plain, head_w, head_b, loss, return_sequences),
            SequenceModel(wrapped, head_w, head_b, loss, return_sequences))


def _batch(loss, return_sequences, B=4, T=6):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(B, T, 2))
    lengths = np.array([6, 3, 5, 1])
    lead = (B, T) if return_sequences else (B,)
    W = rng.uniform(0.5, 2, size=lead)
    if return_sequences:
        W[np.arange(T)[None] >= lengths[:, None]] = 0
    if loss == "softmax":
        Y = rng.integers(0, 3, lead)
    elif loss == "log_loss":
        Y = rng.integers(0, 2, lead + (1,)).astype(float)
    else:
        Y = rng.normal(size=lead + (3,))
    return X, lengths, Y, W


@pytest.mark.parametrize("loss,return_sequences", [("squared_error", False),
                                                   ("softmax", True), ("log_loss", False)])
def test_the_model_needs_nothing_beyond_the_interface(loss, return_sequences, monkeypatch):
    plain, wrapped = _models(PublicOnly, loss, return_sequences)
    X, lengths, Y, W = _batch(loss, return_sequences)
    loss_a, grads_a = plain.loss_and_grad(X, lengths, Y, W, alpha=0.1)
    loss_b, grads_b = wrapped.loss_and_grad(X, lengths, Y, W, alpha=0.1)
    assert loss_a == loss_b
    for name, g in grads_a.items():
        np.testing.assert_array_equal(g, grads_b[name])
    np.testing.assert_array_equal(plain.predict_raw(X, lengths), wrapped.predict_raw(X, lengths))
    # copy for further training with a changed configuration, and save / restore
    resumed = wrapped.resume(dropout=0.5)
    assert type(resumed.network) is PublicOnly
    assert resumed.network.get_config()["dropout"] == 0.5
    np.testing.assert_array_equal(resumed.predict_raw(X, lengths), plain.predict_raw(X, lengths))
    monkeypatch.setitem(_model._NETWORKS, "PublicOnly", PublicOnly)
    restored = SequenceModel.from_state(*wrapped.get_state())
    np.testing.assert_array_equal(restored.predict_raw(X, lengths),
                                  plain.predict_raw(X, lengths))


@pytest.mark.parametrize("tbptt_steps", [None, 2])
def test_a_network_with_one_state_trains_with_exact_gradients(tbptt_steps):
    """State tuples follow state_names: an h-only network needs no model change.
    Central differences of the loss, float64. (With truncated BPTT, which
    carries the state between chunks, only the head's gradient is the full
    loss's: no gradient crosses a chunk boundary, by design.)"""
    config = dict(CONFIG, bidirectional=tbptt_steps is None)
    net = HiddenStateOnly(**config, random_state=0)
    D = 2 if config["bidirectional"] else 1
    rng = np.random.default_rng(2)
    model = SequenceModel(net, rng.normal(size=(3 * D, 3)), rng.normal(size=3),
                          "squared_error", False)
    X, lengths, Y, W = _batch("squared_error", False)
    loss, grads = model.loss_and_grad(X, lengths, Y, W, alpha=0.2, tbptt_steps=tbptt_steps)
    eps = 1e-6
    for name, p in model.params.items():
        if tbptt_steps is not None and not name.startswith("head."):
            continue
        flat = p.reshape(-1)
        for i in rng.choice(flat.size, size=min(4, flat.size), replace=False):
            old = flat[i]
            flat[i] = old + eps
            up, _ = model.loss_and_grad(X, lengths, Y, W, alpha=0.2, tbptt_steps=tbptt_steps,
                                        need_grad=False)
            flat[i] = old - eps
            down, _ = model.loss_and_grad(X, lengths, Y, W, alpha=0.2,
                                          tbptt_steps=tbptt_steps, need_grad=False)
            flat[i] = old
            num = (up - down) / (2 * eps)
            assert abs(grads[name].reshape(-1)[i] - num) <= 1e-6 + 1e-5 * abs(num), (name, i)


def test_the_head_reads_output_size_units_per_direction():
    """The head's fan-in is D * output_size (with a projection that is not hidden_size)."""
    net = LSTM(**dict(CONFIG, bidirectional=True), random_state=0)
    with pytest.raises(ValueError, match=r"head weight has shape \(7, 2\), expected \(6, 2\)"):
        SequenceModel(net, np.zeros((7, 2)), np.zeros(2), "squared_error", False)
    with pytest.raises(ValueError, match="head bias contains NaN"):
        SequenceModel(net, np.zeros((6, 2)), np.array([0.0, np.nan]), "squared_error", False)
    with pytest.raises(ValueError, match="dtype float32, expected float64"):
        SequenceModel(net, np.zeros((6, 2), np.float32), np.zeros(2), "squared_error", False)
