"""Keras 3 layers from clstm networks and back (issue 12), on the torch backend.

- clstm -> Keras -> clstm for LSTM and GRU, 1-2 layers, uni/bidirectional,
  float32 and float64: the Keras model computes the network's output, and the
  weights come back bit for bit.
- Keras-built models (stacked Sequential, Bidirectional, a single layer,
  use_bias=False, return_sequences=False) -> clstm: equal outputs.
- Every refusal message; without keras the functions name the extra.
"""

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")   # before keras is imported anywhere

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import clstm  # noqa: E402
from clstm.interop import from_keras, to_keras  # noqa: E402

# Keras 3.15's torch backend warns about numpy 2's __array__(copy=) inside
# its own variable handling: not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

B, T, I, H = 4, 7, 3, 5
RTOL = {"float32": 1e-5, "float64": 1e-12}


@pytest.fixture(scope="module")
def keras():
    return pytest.importorskip("keras")


def rel_err(ours, theirs):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30))


def run_keras(keras, model, X):
    return keras.ops.convert_to_numpy(model(X))


def data(dtype="float32", seed=0):
    return np.random.default_rng(seed).standard_normal((B, T, I)).astype(dtype)


def random_net(cls, num_layers, bidirectional, dtype, seed=0):
    net = cls(I, H, num_layers=num_layers, bidirectional=bidirectional, dtype=dtype,
              random_state=seed)
    rng = np.random.default_rng(seed)
    return net.load_state_dict({k: rng.uniform(-0.8, 0.8, v.shape)
                                for k, v in net.state_dict().items()})


def randomize(keras, model, seed=0):
    """Random weights everywhere (Keras initialises biases to zero)."""
    rng = np.random.default_rng(seed)
    model.set_weights([rng.uniform(-0.8, 0.8, w.shape).astype(w.dtype)
                       for w in model.get_weights()])
    return model


# -- clstm -> Keras -> clstm -------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["l1", "l2"])
@pytest.mark.parametrize("cls", [clstm.LSTM, clstm.GRU], ids=["lstm", "gru"])
def test_round_trip(keras, cls, num_layers, bidirectional, dtype):
    net = random_net(cls, num_layers, bidirectional, dtype)
    model = to_keras(net)
    kinds = [type(layer).__name__ for layer in model.layers]
    wrapped = "Bidirectional" if bidirectional else cls.__name__
    assert kinds == [wrapped] * num_layers
    X = data(dtype)
    out, final = net.run(X, keep_cache=False)
    y = run_keras(keras, model, X)
    assert y.dtype == np.dtype(dtype) and rel_err(y, out) <= RTOL[dtype]
    back = from_keras(model)
    assert type(back) is cls and back.get_config() == net.get_config()
    for name, value in net.state_dict().items():
        # LSTM: the two biases come back summed in bias_ih
        if cls is clstm.LSTM and name.startswith("bias_"):
            continue
        np.testing.assert_array_equal(back.params[name], value, err_msg=name)
    assert rel_err(back.run(X, keep_cache=False)[0], out) <= RTOL[dtype]
    # the last layer returning its final output only: h_n of the last layer
    y_last = run_keras(keras, to_keras(net, return_sequences=False), X)
    D = net.num_directions
    h_n = final[0][-D:]                                   # (D, B, H)
    assert rel_err(y_last, np.concatenate(list(h_n), axis=-1)) <= RTOL[dtype]


def test_lstm_biases_are_summed(keras):
    net = random_net(clstm.LSTM, 1, False, "float64")
    kernel, recurrent, bias = to_keras(net).layers[0].get_weights()
    np.testing.assert_array_equal(kernel, net.params["weight_ih_l0"].T)
    np.testing.assert_array_equal(recurrent, net.params["weight_hh_l0"].T)
    np.testing.assert_allclose(bias, net.params["bias_ih_l0"] + net.params["bias_hh_l0"])
    back = from_keras(to_keras(net))
    np.testing.assert_array_equal(back.params["bias_hh_l0"], 0.0)


def test_gru_gate_order_and_two_biases(keras):
    net = random_net(clstm.GRU, 1, False, "float64")
    kernel, recurrent, bias = to_keras(net).layers[0].get_weights()
    r, z, n = np.split(net.params["weight_ih_l0"], 3)
    np.testing.assert_array_equal(kernel, np.concatenate([z, r, n]).T)     # Keras: z, r, h
    b_r, b_z, b_n = np.split(net.params["bias_hh_l0"], 3)
    assert bias.shape == (2, 3 * H)
    np.testing.assert_array_equal(bias[1], np.concatenate([b_z, b_r, b_n]))


# -- Keras-built models -> clstm ---------------------------------------------------------

@pytest.mark.parametrize("kind", ["LSTM", "GRU"])
def test_stacked_bidirectional_sequential(keras, kind):
    layer = getattr(keras.layers, kind)
    model = randomize(keras, keras.Sequential([
        keras.Input((None, I)),
        keras.layers.Bidirectional(layer(H, return_sequences=True)),
        keras.layers.Bidirectional(layer(H, return_sequences=True)),
        keras.layers.Bidirectional(layer(H)),                # the last: final outputs
    ]))
    net = from_keras(model)
    assert type(net).__name__ == kind and net.num_layers == 3 and net.bidirectional
    X = data()
    _, final = net.run(X, keep_cache=False)
    y = run_keras(keras, model, X)
    assert rel_err(y, np.concatenate([final[0][-2], final[0][-1]], axis=-1)) <= RTOL["float32"]


def test_single_layers_and_no_bias(keras):
    X = data()
    for layer in (keras.layers.LSTM(H, return_sequences=True, use_bias=False),
                  keras.layers.GRU(H, return_sequences=True, use_bias=False),
                  keras.layers.LSTM(H, return_sequences=True)):
        layer.build((None, None, I))
        randomize(keras, layer)
        net = from_keras(layer)
        if not layer.use_bias:
            assert all(np.all(v == 0) for k, v in net.params.items() if k.startswith("bias"))
        y = run_keras(keras, layer, X)
        assert rel_err(y, net.run(X, keep_cache=False)[0]) <= RTOL["float32"]
    # float64 Keras weights give a float64 network, unless asked otherwise
    layer = keras.layers.GRU(H, return_sequences=True, dtype="float64")
    layer.build((None, None, I))
    assert np.dtype(from_keras(layer).dtype) == np.float64
    assert np.dtype(from_keras(layer, dtype="float32").dtype) == np.float32


# -- refusals ----------------------------------------------------------------------------

def _built(keras, *layers):
    return keras.Sequential([keras.Input((None, I)), *layers])


@pytest.mark.parametrize("make, message", [
    (lambda k: _built(k, k.layers.LSTM(H), k.layers.Dense(1), k.layers.RepeatVector(2)),
     r"from_keras converts recurrent layers .* into a network, or .* a Dense head .* into an "
     r"estimator; the model also has 'dense.*' \(Dense\), 'repeat_vector.*'"),
    (lambda k: _built(k, k.layers.GRU(H, reset_after=False)),
     "has reset_after=False .* clstm's GRU is torch's, which is Keras's reset_after=True"),
    (lambda k: _built(k, k.layers.LSTM(H, activation="relu")),
     "has activation='relu'; clstm's cells use tanh"),
    (lambda k: _built(k, k.layers.GRU(H, recurrent_activation="hard_sigmoid")),
     "has recurrent_activation='hard_sigmoid'; clstm's cells use sigmoid"),
    (lambda k: _built(k, k.layers.Bidirectional(k.layers.LSTM(H), merge_mode="sum")),
     "has merge_mode='sum'; clstm concatenates the directions"),
    (lambda k: _built(k, k.layers.LSTM(H, go_backwards=True)),
     "has go_backwards=True; clstm runs a reverse direction only inside a bidirectional"),
    (lambda k: _built(k, k.layers.LSTM(H, return_sequences=True), k.layers.LSTM(H + 1)),
     "has units=6 but .* has 5; a clstm network has one value for all layers"),
    (lambda k: _built(k, k.layers.LSTM(H, return_sequences=True), k.layers.GRU(H)),
     "has kind='gru' but .* has 'lstm'"),
    (lambda k: _built(k, k.layers.LSTM(H, return_sequences=True),
                      k.layers.Bidirectional(k.layers.LSTM(H))),
     "has bidirectional=True but .* has False"),
    (lambda k: _built(k, k.layers.LSTM(H), k.layers.RepeatVector(2), k.layers.LSTM(H)),
     r"the model also has 'repeat_vector.*' \(RepeatVector\)"),
    (lambda k: k.layers.LSTM(H),
     "is not built .* call it on data or build the model first"),
    (lambda k: k.Sequential([]), "the Keras model has no layers"),
], ids=["dense-not-last", "reset_after", "activation", "recurrent_activation", "merge_mode",
        "go_backwards", "units", "kinds", "directions", "other-layer", "unbuilt", "empty"])
def test_from_keras_refusals(keras, make, message):
    with pytest.raises(ValueError, match=message):
        from_keras(make(keras))


def test_from_keras_refuses_an_unstackable_layer(keras):
    # a layer that returns no sequences cannot feed another; Keras itself
    # refuses to build such a model, so set the flag after building
    model = _built(keras, keras.layers.LSTM(H, return_sequences=True), keras.layers.LSTM(H))
    model.layers[0].return_sequences = False
    with pytest.raises(ValueError, match="does not return sequences, so no layer can be "
                                         "stacked on it"):
        from_keras(model)


def test_type_refusals(keras):
    with pytest.raises(TypeError, match="from_keras takes a keras.layers.LSTM / GRU / "
                                        "Bidirectional layer or a keras.Sequential"):
        from_keras(keras.layers.Dense(3))
    with pytest.raises(TypeError, match="to_keras takes a clstm.LSTM or clstm.GRU network or a "
                                        "fitted LSTMRegressor / LSTMClassifier, got object"):
        to_keras(object())


@pytest.mark.parametrize("options, names", [
    (dict(proj_size=2), "proj_size"), (dict(peephole=True), "peephole"),
    (dict(coupled_gates=True, layer_norm=True), "coupled_gates / layer_norm"),
])
def test_to_keras_refuses_cells_keras_lacks(keras, options, names):
    with pytest.raises(ValueError, match=f"keras.layers.LSTM has no {names} option"):
        to_keras(clstm.LSTM(I, H, **options))


def test_without_keras_the_functions_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras", None)
    message = r"needs the optional package 'keras'.*pip install 'clstm-learn\[keras\]'"
    with pytest.raises(ImportError, match="clstm.interop.to_keras " + message):
        to_keras(clstm.LSTM(I, H))
    with pytest.raises(ImportError, match="clstm.interop.from_keras " + message):
        from_keras(None)
