"""clstm.ConvLSTM against live Keras 3 ConvLSTM2D / ConvLSTM1D on copied weights
(Keras on the torch backend; skipped without keras). The stored fixtures of
tests/test_convlstm.py cover the same parity, gradients included, without Keras."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")   # before keras is imported anywhere

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import clstm  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
RTOL = {"float32": 1e-5, "float64": 1e-12}


@pytest.fixture(scope="module")
def keras():
    return pytest.importorskip("keras")


def rel_err(ours, theirs):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30))


def keras_stack(keras, spatial, kernel, channels, filters, n_layers, dtype, randomize, seed=0):
    layer_cls = keras.layers.ConvLSTM2D if len(spatial) == 2 else keras.layers.ConvLSTM1D
    model = keras.Sequential(
        [keras.Input((None,) + spatial + (channels,), dtype=dtype)]
        + [layer_cls(filters, kernel, padding="same", return_sequences=True, dtype=dtype)
           for _ in range(n_layers)])
    if randomize:      # Keras initialises the bias to 0 / 1: random weights everywhere
        rng = np.random.default_rng(seed)
        model.set_weights([rng.uniform(-0.7, 0.7, w.shape).astype(dtype)
                           for w in model.get_weights()])
    return model


@pytest.mark.parametrize("spatial,kernel,n_layers,dtype,randomize", [
    ((6, 5), (3, 5), 2, "float64", True), ((6, 5), (3, 5), 2, "float32", True),
    ((4, 4), (1, 1), 1, "float32", False), ((9,), (5,), 2, "float64", True),
    ((9,), (5,), 2, "float32", False), ((3,), (3,), 1, "float32", True)],
    ids=["2d_l2_f64", "2d_l2_f32", "2d_k1_keras_init", "1d_l2_f64", "1d_l2_keras_init",
         "1d_small"])
def test_keras_parity(keras, spatial, kernel, n_layers, dtype, randomize):
    channels, filters = 3, 4
    model = keras_stack(keras, spatial, kernel, channels, filters, n_layers, dtype, randomize)
    net = clstm.ConvLSTM(channels, filters, kernel, num_layers=n_layers,
                         spatial_dims=len(spatial), dtype=dtype)
    weights = model.get_weights()           # per layer: kernel, recurrent_kernel, bias
    net.load_state_dict({f"{kind}_l{k}": weights[3 * k + j] for k in range(n_layers)
                         for j, kind in enumerate(("kernel", "recurrent_kernel", "bias"))})
    X = np.random.default_rng(1).standard_normal((3, 4) + spatial + (channels,)).astype(dtype)
    y = keras.ops.convert_to_numpy(model(X))
    out, (h_n, _) = net.forward(X)
    assert out.dtype == np.dtype(dtype) and rel_err(out, y) <= RTOL[dtype]
    np.testing.assert_array_equal(h_n[-1], out[:, -1])     # return_sequences=False


def test_clstm_initialisation_runs_in_keras(keras):
    """clstm's own initial weights load into Keras unchanged (same shapes and meaning)."""
    net = clstm.ConvLSTM(2, 3, 3, num_layers=2, random_state=0)
    model = keras_stack(keras, (5, 4), (3, 3), 2, 3, 2, "float32", randomize=False)
    model.set_weights([net.params[f"{kind}_l{k}"] for k in range(2)
                       for kind in ("kernel", "recurrent_kernel", "bias")])
    X = np.random.default_rng(2).standard_normal((2, 3, 5, 4, 2)).astype(np.float32)
    assert rel_err(net.forward(X)[0], keras.ops.convert_to_numpy(model(X))) <= RTOL["float32"]
