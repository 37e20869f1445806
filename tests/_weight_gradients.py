"""Shared by the weight-gradient tests (test_weight_gradient_blocks.py: the
BLAS path in row blocks; test_wgrad_kernel.py: clstm's kernel)."""

import numpy as np

import clstm

# name: (network class, options, input size)
CELLS = {
    "lstm-thin": (clstm.LSTM, {}, 3),             # [x | h] in one gradient product
    "lstm-wide": (clstm.LSTM, {}, 40),            # x and h products of their own
    "proj": (clstm.LSTM, {"proj_size": 4}, 3),
    "peephole": (clstm.LSTM, {"peephole": True}, 3),
    "layer_norm": (clstm.LSTM, {"layer_norm": True}, 3),
    "gru": (clstm.GRU, {}, 3),
    "two-layers-bidirectional": (clstm.LSTM, {"num_layers": 2, "bidirectional": True}, 3),
}


def gradients(net, X, lengths):
    """grad_X and every parameter gradient of one training step whose
    gradients reach the outputs and the final states."""
    net.train()
    out, state = net.run(X, None, lengths)
    grad_X = net.backward_state(np.cos(out).astype(out.dtype),
                                tuple(np.ones_like(s) for s in state))
    return {"grad_X": grad_X, **{k: g.copy() for k, g in net.grads.items()}}


def float32_and_reference(name, ragged, B, T, H):
    """A float32 network of cell ``name``, a batch (B, T, its inputs) with
    lengths when ``ragged``, and the float64 twin's gradients on it (the
    reference): (net32, X, lengths, want)."""
    cls, options, I = CELLS[name]
    rng = np.random.default_rng(0)
    X = rng.standard_normal((B, T, I)).astype(np.float32)
    lengths = rng.integers(1, T + 1, B) if ragged else None
    net32 = cls(I, H, random_state=0, **options)
    net64 = cls(I, H, random_state=0, dtype="float64", **options)
    net64.load_state_dict(net32.state_dict())
    return net32, X, lengths, gradients(net64, X.astype(np.float64), lengths)
