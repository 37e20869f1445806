"""Losses of the output head, with their gradients.

Every loss takes raw head outputs ``Z`` (..., n_outputs), targets, and
per-entry weights ``W`` (the leading shape of ``Z``; padding and left-out
samples have weight 0), and returns the weighted mean

    loss = sum(W * l) / norm,        grad_Z = W * dl/dZ / norm

where ``norm`` is the total weight of the mini-batch (passed in, so that
chunks of one batch, as in truncated BPTT, add up to the batch's loss).
Sums are accumulated in float64; gradients keep the dtype of ``Z``.
"""

import numpy as np
from scipy.special import expit

__all__ = ["squared_error", "logistic_loss", "softmax_cross_entropy", "LOSSES"]


def squared_error(Z, Y, W, norm):
    """l = 0.5 * mean_k (z_k - y_k)^2 (scikit-learn's MLP convention); Y like Z."""
    diff = Z - Y
    n_outputs = Z.shape[-1]
    # the mean over outputs as np.mean computes it (a sum, then / n), without
    # its per-call overhead (this runs once per mini-batch)
    squares = np.square(diff, dtype=np.float64)
    per_entry = squares[..., 0] if n_outputs == 1 else squares.sum(axis=-1) / n_outputs
    per_entry *= 0.5
    loss = float((W * per_entry).sum() / norm)
    grad = diff * (W[..., None] / (norm * n_outputs)).astype(Z.dtype)
    return loss, grad


def logistic_loss(Z, Y, W, norm):
    """Binary cross-entropy on a logit: l = log(1 + exp(z)) - y z, Z and Y of shape (..., 1).

    Evaluated as max(z, 0) - y z + log1p(exp(-|z|)), finite for every finite z.
    """
    z = Z[..., 0].astype(np.float64)
    y = Y[..., 0].astype(np.float64)
    per_entry = np.maximum(z, 0.0) - y * z + np.log1p(np.exp(-np.abs(z)))
    loss = float(np.sum(W * per_entry) / norm)
    grad = ((expit(z) - y) * W / norm)[..., None].astype(Z.dtype)
    return loss, grad


def softmax_cross_entropy(Z, Y, W, norm):
    """l = logsumexp(z) - z_y, Z of shape (..., K), Y integer class codes of shape (...).

    Computed by the fused kernel ``clstm._head_losses.cross_entropy`` (no float64
    copy of Z: a language model's Z has a column per vocabulary entry): sums,
    the log and the loss in double; the exps in double for float64 Z, in
    float32 by a vectorized polynomial (a few ulp) for float32 Z; the gradient
    in Z's dtype.
    """
    from clstm import _head_losses

    K = Z.shape[-1]
    logits = np.ascontiguousarray(Z).reshape(-1, K)
    codes = np.ascontiguousarray(Y, dtype=np.int64).reshape(-1)
    weights = np.ascontiguousarray(W, dtype=np.float64).reshape(-1) / norm
    used = codes[weights != 0]
    if used.size and (used.min() < 0 or used.max() >= K):
        raise ValueError(f"class codes must lie in [0, {K}), got values in "
                         f"[{used.min()}, {used.max()}]")
    grad = np.empty_like(logits)
    loss = _head_losses.cross_entropy(logits, codes, weights, grad, np.empty(K))
    return float(loss), grad.reshape(Z.shape)


LOSSES = {
    "squared_error": squared_error,
    "log_loss": logistic_loss,
    "softmax": softmax_cross_entropy,
}
