"""clstm.ConvLSTM's numerics (issue 14): the compiled scan against independent oracles.

- im2col / col2im twins against a padded-map NumPy oracle, and col2im is
  the adjoint of im2col;
- forward and backward against the pure-NumPy reference (clstm._reference:
  tap-by-tap convolutions over a padded map, one sequence at a time), 1-D and
  2-D maps, 1 and 2 layers, ragged lengths, initial states;
- central finite differences in float64 for every parameter, X, h0 and c0
  (also through dropout between layers, with the masks replayed);
- ragged batches: the padding (even NaN) never changes a result, and each
  sequence equals itself run alone;
- float32 against float64; threads against one thread; step() against forward;
- Keras 3 parity from stored fixtures (tests/fixtures/make_convlstm_fixtures.py),
  so it runs without Keras.
"""

import pathlib

import numpy as np
import pytest

import clstm
from clstm import _scan
from clstm._reference import reference_convlstm_backward, reference_convlstm_forward

pytestmark = pytest.mark.kernel

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
B, T, C, F = 2, 3, 2, 3

# (spatial_dims, map shape, kernel size)
GEOMETRIES = {"2d_k33": (2, (5, 4), (3, 3)), "2d_k13": (2, (5, 4), (1, 3)),
              "1d_k3": (1, (6,), (3,)), "2d_k55_big": (2, (3, 2), (5, 5))}


def random_net(geometry, num_layers=1, dtype="float64", seed=0, **kwargs):
    spatial_dims, _, kernel = GEOMETRIES[geometry]
    net = clstm.ConvLSTM(C, F, kernel, num_layers=num_layers, spatial_dims=spatial_dims,
                         dtype=dtype, random_state=seed, **kwargs)
    rng = np.random.default_rng(seed + 100)
    return net.load_state_dict({k: rng.uniform(-0.6, 0.6, v.shape)
                                for k, v in net.state_dict().items()})


def random_inputs(geometry, num_layers=1, batch=B, steps=T, seed=1):
    _, shape, _ = GEOMETRIES[geometry]
    rng = np.random.default_rng(seed)
    state_shape = (num_layers, batch) + shape + (F,)
    return (rng.standard_normal((batch, steps) + shape + (C,)),
            rng.standard_normal(state_shape), rng.standard_normal(state_shape))


def rel_err(ours, theirs):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30))


# -- im2col / col2im -------------------------------------------------------------------

def columns_oracle(maps, kernel):
    """(n, mh, mw, C) -> (n*mh*mw, kh*kw*C) by padding and slicing."""
    n, mh, mw, c = maps.shape
    kh, kw = kernel
    padded = np.pad(maps, [(0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)])
    taps = [padded[:, dy:dy + mh, dx:dx + mw] for dy in range(kh) for dx in range(kw)]
    return np.concatenate(taps, axis=-1).reshape(n * mh * mw, kh * kw * c)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape,kernel", [((5, 4), (3, 3)), ((1, 7), (1, 3)), ((3, 2), (5, 5)),
                                          ((4, 4), (1, 1)), ((2, 6), (3, 1))])
def test_conv_columns_and_adjoint(dtype, shape, kernel):
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((3,) + shape + (2,)).astype(dtype)
    cols = _scan.conv_columns(maps.reshape(-1, 2), shape, kernel)
    np.testing.assert_array_equal(cols, columns_oracle(maps, kernel))
    # col2im is the adjoint: <im2col(x), y> == <x, col2im(y)>
    y = rng.standard_normal(cols.shape).astype(dtype)
    back = _scan.conv_columns_adjoint(y, shape, kernel, 2)
    assert back.shape == (maps.size // 2, 2)
    lhs = np.vdot(cols.astype(np.float64), y.astype(np.float64))
    rhs = np.vdot(maps.reshape(-1, 2).astype(np.float64), back.astype(np.float64))
    assert abs(lhs - rhs) <= (1e-4 if dtype == "float32" else 1e-12) * max(1.0, abs(lhs))


def test_conv_columns_refuses_bad_layouts():
    x = np.zeros((20, 2))
    with pytest.raises(ValueError, match="conv geometry"):
        _scan.conv_columns(x, (3, 3), (3, 3))            # 20 rows are not whole 3x3 maps
    with pytest.raises(ValueError, match="conv geometry"):
        _scan.conv_columns(x, (5, 4), (2, 3))            # even kernel
    with pytest.raises(ValueError, match="x"):
        _scan.conv_columns(x[:, :1], (5, 4), (3, 3))     # not contiguous


# -- against the pure-NumPy reference --------------------------------------------------

@pytest.mark.parametrize("lengths", [None, [2, 3]], ids=["full", "ragged"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
def test_forward_backward_match_reference(geometry, num_layers, lengths):
    net = random_net(geometry, num_layers)
    X, h0, c0 = random_inputs(geometry, num_layers)
    out, (h_n, c_n) = net.forward(X, h0, c0, lengths=lengths)
    r_out, (r_h, r_c), cache = reference_convlstm_forward(net.params, X, h0, c0, lengths)
    for ours, theirs in ((out, r_out), (h_n, r_h), (c_n, r_c)):
        assert rel_err(ours, theirs) < 1e-13
    rng = np.random.default_rng(2)
    g_out, g_h, g_c = (rng.standard_normal(a.shape) for a in (out, h_n, c_n))
    grad_X = net.backward(g_out, g_h, g_c)
    r_grad_X, r_grads = reference_convlstm_backward(g_out, g_h, g_c, cache)
    assert rel_err(grad_X, r_grad_X) < 1e-12
    assert set(net.grads) == set(r_grads)
    for name, value in r_grads.items():
        assert rel_err(net.grads[name], value) < 1e-12, name


# -- finite differences ------------------------------------------------------------------

def loss_and_grads(net, X, h0, c0, lengths, weights):
    out, (h_n, c_n) = net.forward(X, h0, c0, lengths=lengths)
    w_out, w_h, w_c = weights
    loss = np.sum(out * w_out) + np.sum(h_n * w_h) + np.sum(c_n * w_c)
    grad_X = net.backward(w_out, w_h, w_c)
    return loss, grad_X, dict(net.grads)


def central_differences(f, x, eps=1e-6):
    grad = np.zeros_like(x)
    for idx in np.ndindex(x.shape):
        keep = x[idx]
        x[idx] = keep + eps
        up = f()
        x[idx] = keep - eps
        down = f()
        x[idx] = keep
        grad[idx] = (up - down) / (2 * eps)
    return grad


@pytest.mark.parametrize("geometry,num_layers,lengths",
                         [("2d_k33", 1, [2, 3]), ("2d_k13", 2, None), ("1d_k3", 2, [3, 1])])
def test_finite_differences(geometry, num_layers, lengths):
    net = random_net(geometry, num_layers)
    X, h0, c0 = random_inputs(geometry, num_layers)
    rng = np.random.default_rng(3)
    out, (h_n, _) = net.forward(X, h0, c0, lengths=lengths)
    weights = (rng.standard_normal(out.shape), rng.standard_normal(h_n.shape),
               rng.standard_normal(h_n.shape))
    _, grad_X, grads = loss_and_grads(net, X, h0, c0, lengths, weights)

    def loss():
        out, (h_n, c_n) = net.run(X, (h0, c0), lengths, keep_cache=False)
        return np.sum(out * weights[0]) + np.sum(h_n * weights[1]) + np.sum(c_n * weights[2])

    for name in net.params:
        numeric = central_differences(loss, net.params[name])
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-6, atol=1e-7, err_msg=name)
    for name, value, analytic in (("X", X, grad_X), ("h0", h0, grads["h0"]),
                                  ("c0", c0, grads["c0"])):
        numeric = central_differences(loss, value)
        np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-7, err_msg=name)
    if lengths is not None:          # nothing past a length matters
        for b, n in enumerate(lengths):
            assert not grad_X[b, n:].any()


def test_finite_differences_through_dropout():
    net = random_net("2d_k33", 2, dropout=0.4).train()
    X, h0, c0 = random_inputs("2d_k33", 2)
    rng = np.random.default_rng(4)
    start = net.rng_state
    out, (h_n, _) = net.forward(X, h0, c0)
    weights = (rng.standard_normal(out.shape), rng.standard_normal(h_n.shape),
               rng.standard_normal(h_n.shape))
    net.rng_state = start
    _, grad_X, grads = loss_and_grads(net, X, h0, c0, None, weights)

    def loss():
        net.rng_state = start                    # the same masks every time
        out, (h_n, c_n) = net.run(X, (h0, c0), keep_cache=False)
        return np.sum(out * weights[0]) + np.sum(h_n * weights[1]) + np.sum(c_n * weights[2])

    for name in ("kernel_l0", "recurrent_kernel_l1"):
        np.testing.assert_allclose(grads[name], central_differences(loss, net.params[name]),
                                   rtol=1e-6, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(grad_X, central_differences(loss, X), rtol=1e-6, atol=1e-7)
    net.eval()
    assert rel_err(net.forward(X, h0, c0)[0], random_net("2d_k33", 2).forward(X, h0, c0)[0]) == 0
    assert rel_err(out, net.forward(X, h0, c0)[0]) > 1e-3       # the masks did something


# -- ragged batches ----------------------------------------------------------------------

def test_padding_is_never_read_and_sequences_are_independent():
    net = random_net("2d_k33", 2)
    X, h0, c0 = random_inputs("2d_k33", 2, batch=4, steps=5)
    lengths = np.array([3, 5, 1, 4])
    out, (h_n, c_n) = net.forward(X, h0, c0, lengths=lengths)
    rng = np.random.default_rng(5)
    g_out = rng.standard_normal(out.shape)
    grad_X = net.backward(g_out)
    grads = dict(net.grads)
    garbage = X.copy()
    for b, n in enumerate(lengths):
        garbage[b, n:] = 1e6 * rng.standard_normal(garbage[b, n:].shape)
    garbage[2, 1:] = np.nan
    out2, (h2, c2) = net.forward(garbage, h0, c0, lengths=lengths)
    np.testing.assert_array_equal(out2, out)
    np.testing.assert_array_equal(h2, h_n)
    np.testing.assert_array_equal(c2, c_n)
    np.testing.assert_array_equal(net.backward(g_out), grad_X)
    for name, value in grads.items():
        np.testing.assert_array_equal(net.grads[name], value, err_msg=name)
    for b, n in enumerate(lengths):
        assert not out[b, n:].any()
        alone, (h_b, c_b) = net.forward(X[b:b + 1, :n], h0[:, b:b + 1], c0[:, b:b + 1])
        assert rel_err(alone[0], out[b, :n]) < 1e-14
        assert rel_err(h_b[:, 0], h_n[:, b]) < 1e-14 and rel_err(c_b[:, 0], c_n[:, b]) < 1e-14


# -- precision, threads, stepping --------------------------------------------------------

@pytest.mark.parametrize("geometry", ["2d_k33", "1d_k3"])
def test_float32_matches_float64(geometry):
    net64 = random_net(geometry, 2)
    net32 = clstm.ConvLSTM(**dict(net64.get_config(), dtype="float32"))
    net32.load_state_dict(net64.state_dict())
    X, h0, c0 = random_inputs(geometry, 2, batch=3, steps=4)
    lengths = [4, 2, 3]
    out64, (h64, c64) = net64.forward(X, h0, c0, lengths=lengths)
    out32, (h32, c32) = net32.forward(X, h0, c0, lengths=lengths)
    assert out32.dtype == np.float32
    for a, b in ((out32, out64), (h32, h64), (c32, c64)):
        assert rel_err(a, b) < 1e-5
    g = np.random.default_rng(6).standard_normal(out64.shape)
    assert rel_err(net32.backward(g), net64.backward(g)) < 1e-4
    for name in net64.params:
        assert rel_err(net32.grads[name], net64.grads[name]) < 1e-4, name


def test_threads_equal_one_thread():
    rng = np.random.default_rng(7)
    nets = [clstm.ConvLSTM(2, 16, 3, dtype="float64", random_state=0, n_jobs=n) for n in (1, 2)]
    X = rng.standard_normal((6, 5, 12, 12, 2))      # enough work for two threads
    lengths = [5, 3, 5, 2, 4, 1]
    outs = [net.forward(X, lengths=lengths) for net in nets]
    # it did split, the same way for both (parts fixed by the shape)
    assert len(nets[1]._cache["chunks"]) > 1
    assert nets[1]._cache["chunks"] == nets[0]._cache["chunks"]
    assert np.array_equal(outs[1][0], outs[0][0])
    g = rng.standard_normal(outs[0][0].shape)
    grads_X = [net.backward(g) for net in nets]
    assert np.array_equal(grads_X[1], grads_X[0])
    for name in nets[0].params:          # bit-identical for every n_jobs
        assert np.array_equal(nets[1].grads[name], nets[0].grads[name]), name


def test_step_equals_forward():
    net = random_net("2d_k33", 2)
    X, h0, c0 = random_inputs("2d_k33", 2, steps=4)
    out, (h_n, c_n) = net.forward(X, h0, c0)
    state = (h0, c0)
    for t in range(X.shape[1]):
        y, state = net.step(X[:, t], state)
        assert rel_err(y, out[:, t]) < 1e-14
    assert rel_err(state[0], h_n) < 1e-14 and rel_err(state[1], c_n) < 1e-14


# -- Keras 3 parity from stored fixtures --------------------------------------------------

FIXTURE_FILES = sorted(FIXTURES.glob("convlstm_*.npz"))


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=[p.stem for p in FIXTURE_FILES])
def test_keras_fixture_parity(path):
    case = np.load(path)
    dtype = "float32" if path.stem.endswith("float32") else "float64"
    kernel = tuple(int(k) for k in case["kernel_size"])
    n_layers = case["h0"].shape[0]
    net = clstm.ConvLSTM(case["X"].shape[-1], case["bias_l0"].shape[0] // 4, kernel,
                         num_layers=n_layers, spatial_dims=len(kernel), dtype=dtype)
    net.load_state_dict({name: case[name] for name in net.params})
    out, (h_n, c_n) = net.forward(case["X"], case["h0"], case["c0"])
    tol_fwd, tol_bwd = (1e-5, 1e-4) if dtype == "float32" else (1e-13, 1e-12)
    for ours, name in ((out, "out"), (h_n, "h_n"), (c_n, "c_n")):
        assert rel_err(ours, case[name]) < tol_fwd, name
    grad_X = net.backward(case["grad_out"], case["grad_h_n"], case["grad_c_n"])
    assert rel_err(grad_X, case["grad_X"]) < tol_bwd
    assert rel_err(net.grads["h0"], case["grad_h0"]) < tol_bwd
    assert rel_err(net.grads["c0"], case["grad_c0"]) < tol_bwd
    for name in net.params:
        assert rel_err(net.grads[name], case["grad_" + name]) < tol_bwd, name


def test_fixtures_are_present():
    assert len(FIXTURE_FILES) == 8
