"""The fused Dense head and its loss (``_head_losses.dense_head_loss``) against the
NumPy path it replaces in training: the head as two GEMMs, the losses of
``clstm._losses``, the head's gradients as GEMMs and sums."""

import numpy as np
import pytest

from clstm import _head_losses
from clstm._losses import logistic_loss, squared_error
from clstm._model import _FUSED_HEAD_MAX, NonFiniteError, SequenceModel

KINDS = {"squared_error": (_head_losses.SQUARED_ERROR, squared_error),
         "log_loss": (_head_losses.LOGISTIC, logistic_loss)}


def numpy_head(feats, weight, bias, Y, W, norm, loss_fn):
    Z = feats @ weight + bias
    loss, grad_Z = loss_fn(Z, Y, W, norm)
    return loss, feats.T @ grad_Z, grad_Z.sum(axis=0), grad_Z @ weight.T


def problem(rng, M, F, K, dtype, loss):
    feats = rng.standard_normal((M, F)).astype(dtype)
    weight = rng.standard_normal((F, K)).astype(dtype)
    bias = rng.standard_normal(K).astype(dtype)
    if loss == "log_loss":
        Y = rng.integers(0, 2, (M, K)).astype(dtype)
    else:
        Y = rng.standard_normal((M, K)).astype(dtype)
    W = rng.uniform(0.5, 2.0, M)
    W[1::5] = 0.0                      # left-out rows: no loss, no gradient
    return feats, weight, bias, Y, W, float(W.sum())


def fused(feats, weight, bias, Y, W, norm, kind, grad_weight, grad_bias):
    grad_feats = np.full_like(feats, np.nan)         # every entry must be written
    loss, finite = _head_losses.dense_head_loss(feats, weight, bias, Y, W, norm, kind,
                                                grad_weight, grad_bias, grad_feats)
    return loss, finite, grad_feats


@pytest.mark.parametrize("loss", sorted(KINDS))
@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("M, F", [(1, 1), (7, 3), (32, 32), (45, 50)])
def test_matches_the_numpy_head(loss, dtype, rtol, M, F):
    kind, loss_fn = KINDS[loss]
    rng = np.random.default_rng(M * 100 + F)
    for K in ([1] if loss == "log_loss" else [1, 3]):
        feats, weight, bias, Y, W, norm = problem(rng, M, F, K, dtype, loss)
        ref = numpy_head(feats.astype(np.float64), weight.astype(np.float64),
                         bias.astype(np.float64), Y.astype(np.float64), W, norm, loss_fn)
        # the gradients are added to what the buffers hold
        start_w = rng.standard_normal((F, K)).astype(dtype)
        start_b = rng.standard_normal(K).astype(dtype)
        grad_w, grad_b = start_w.copy(), start_b.copy()
        got, finite, grad_feats = fused(feats, weight, bias, Y, W, norm, kind, grad_w, grad_b)
        assert finite
        assert got == pytest.approx(ref[0], rel=rtol)
        assert grad_feats.dtype == grad_w.dtype == dtype
        atol = rtol * max(1.0, float(np.abs(ref[1]).max()))
        np.testing.assert_allclose(grad_w - start_w, ref[1], rtol=rtol, atol=atol)
        np.testing.assert_allclose(grad_b - start_b, ref[2], rtol=rtol, atol=atol)
        np.testing.assert_allclose(grad_feats, ref[3], rtol=rtol, atol=atol)
        assert not grad_feats[W == 0.0].any()


def test_float32_rounds_as_the_numpy_losses():
    """In float32 the head's outputs and the loss gradient round as the NumPy path's:
    the loss agrees to double rounding of the same float32 differences."""
    rng = np.random.default_rng(0)
    feats, weight, bias, Y, W, norm = problem(rng, 32, 1, 1, np.float32, "squared_error")
    weight[:] = 1.0                    # one feature: z = x + b, the same float32 sum
    Z = feats @ weight + bias
    ref_loss, ref_grad = squared_error(Z, Y, W, norm)
    got, finite, grad_feats = fused(feats, weight, bias, Y, W, norm, _head_losses.SQUARED_ERROR,
                                    np.zeros((1, 1), np.float32), np.zeros(1, np.float32))
    assert got == pytest.approx(ref_loss, rel=1e-14)
    np.testing.assert_array_equal(grad_feats, ref_grad)


def test_reports_a_non_finite_gradient():
    rng = np.random.default_rng(1)
    feats, weight, bias, Y, W, norm = problem(rng, 8, 4, 1, np.float32, "squared_error")
    weight[2, 0] = 3e38                # z overflows to inf: loss inf, gradient inf / NaN
    got, finite, _ = fused(feats, weight, bias, Y, W, norm, _head_losses.SQUARED_ERROR,
                           np.zeros((4, 1), np.float32), np.zeros(1, np.float32))
    assert not finite and not np.isfinite(got)
    # a finite loss in double whose float32 gradient overflows
    feats[:] = 0.0                     # z = b = 3e38, diff 3e38: loss 4.5e76 / 8
    weight[:] = 1e30                   # the gradient reaching feats: 3.75e37 * 1e30
    bias[:] = 3e38
    Y[:] = 0.0
    W[:] = 1.0
    got, finite, _ = fused(feats, weight, bias, Y, W, 8.0, _head_losses.SQUARED_ERROR,
                           np.zeros((4, 1), np.float32), np.zeros(1, np.float32))
    assert np.isfinite(got) and not finite


@pytest.mark.parametrize("bad", [
    dict(K=2, kind=_head_losses.LOGISTIC),            # logistic needs one output
    dict(kind=7),
    dict(targets_rows=5),
    dict(grad_feats_cols=3),
])
def test_rejects_inconsistent_arguments(bad):
    M, F, K = 6, 4, bad.get("K", 1)
    f = np.float64
    grad_feats = np.zeros((M, bad.get("grad_feats_cols", F)))
    with pytest.raises(ValueError, match="dense_head_loss"):
        _head_losses.dense_head_loss(np.zeros((M, F)), np.zeros((F, K)), np.zeros(K),
                                     np.zeros((bad.get("targets_rows", M), K), f), np.ones(M),
                                     1.0, bad.get("kind", _head_losses.SQUARED_ERROR),
                                     np.zeros((F, K)), np.zeros(K), grad_feats)


@pytest.mark.parametrize("loss, n_outputs", [("squared_error", 1), ("squared_error", 2),
                                             ("log_loss", 1)])
def test_model_gradients_are_those_of_the_numpy_head(monkeypatch, loss, n_outputs):
    """SequenceModel.loss_and_grad with the head fused and with the fusion off
    (_FUSED_HEAD_MAX = 0): the same loss and gradients to float64 rounding."""
    rng = np.random.default_rng(2)
    B, T, I, H = 9, 6, 3, 5
    network_params = dict(hidden_size=H, dtype="float64", n_jobs=None)
    model = SequenceModel.create(I, network_params, n_outputs, loss, False,
                                 np.random.RandomState(0))
    X = rng.standard_normal((B, T, I))
    lengths = rng.integers(2, T + 1, B)
    if loss == "log_loss":
        Y = rng.integers(0, 2, (B, 1)).astype(np.float64)
    else:
        Y = rng.standard_normal((B, n_outputs))
    W = rng.uniform(0.5, 1.5, B)
    assert B * H * n_outputs <= _FUSED_HEAD_MAX
    fused_loss, fused_grads = model.loss_and_grad(X, lengths, Y, W)
    monkeypatch.setattr("clstm._model._FUSED_HEAD_MAX", 0)
    ref_loss, ref_grads = model.loss_and_grad(X, lengths, Y, W)
    assert fused_loss == pytest.approx(ref_loss, rel=1e-13)
    assert fused_grads.keys() == ref_grads.keys()
    for name in ref_grads:
        np.testing.assert_allclose(fused_grads[name], ref_grads[name], rtol=1e-11,
                                   atol=1e-13, err_msg=name)


def test_model_raises_on_a_non_finite_head_gradient():
    """A finite loss (in double) whose float32 gradient overflows: |h| < 1, so z is
    about 1e30, the loss 1e60, and the gradient reaching h 1e30 * 1e30."""
    network_params = dict(hidden_size=3, dtype="float32", n_jobs=None)
    model = SequenceModel.create(2, network_params, 1, "squared_error", False,
                                 np.random.RandomState(0))
    model.head_weight[:] = 1e30
    X = np.ones((4, 5, 2), np.float32)
    with pytest.raises(NonFiniteError) as info:
        model.loss_and_grad(X, np.full(4, 5), np.zeros((4, 1), np.float32), np.ones(4))
    assert info.value.what == "gradient"
