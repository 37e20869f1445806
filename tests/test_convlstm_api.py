"""clstm.ConvLSTM's interface: construction, Keras-style initialisation, parameters,
configuration, pickling, and clear errors for bad input."""

import pickle

import numpy as np
import pytest

import clstm

C, F = 2, 3


def net2d(**kwargs):
    return clstm.ConvLSTM(C, F, 3, dtype="float64", random_state=0, **kwargs)


def maps(shape=(2, 3, 5, 4, C), seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# -- construction and initialisation ------------------------------------------------------

def test_parameter_layout_is_keras():
    net = clstm.ConvLSTM(C, F, (3, 1), num_layers=2, random_state=0)
    shapes = {k: v.shape for k, v in net.params.items()}
    assert shapes == {"kernel_l0": (3, 1, C, 4 * F), "recurrent_kernel_l0": (3, 1, F, 4 * F),
                      "bias_l0": (4 * F,), "kernel_l1": (3, 1, F, 4 * F),
                      "recurrent_kernel_l1": (3, 1, F, 4 * F), "bias_l1": (4 * F,)}
    net1d = clstm.ConvLSTM(C, F, 5, spatial_dims=1)
    assert net1d.params["kernel_l0"].shape == (5, C, 4 * F) and net1d.kernel_size == (5,)


def test_keras_initialisation():
    net = clstm.ConvLSTM(C, 4, 3, dtype="float64", random_state=0)
    bias = net.params["bias_l0"]
    np.testing.assert_array_equal(bias, np.r_[np.zeros(4), np.ones(4), np.zeros(8)])
    assert not clstm.ConvLSTM(C, 4, 3, unit_forget_bias=False).params["bias_l0"].any()
    # orthogonal recurrent kernel as a (k*F, 4F) = (36, 16) matrix: orthonormal columns
    w = net.params["recurrent_kernel_l0"].reshape(-1, 16)
    np.testing.assert_allclose(w.T @ w, np.eye(16), atol=1e-12)
    # Glorot uniform: |kernel| <= sqrt(6 / (fan_in + fan_out)), fans over 9 taps
    limit = np.sqrt(6.0 / (9 * C + 9 * 16))
    kernel = net.params["kernel_l0"]
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > 0.8 * limit
    # seeded
    np.testing.assert_array_equal(
        kernel, clstm.ConvLSTM(C, 4, 3, dtype="float64", random_state=0).params["kernel_l0"])


def test_config_state_dict_and_pickle_round_trip():
    net = clstm.ConvLSTM(C, F, (3, 5), num_layers=2, dropout=0.25, random_state=3,
                         unit_forget_bias=False)
    config = net.get_config()
    assert config == {"in_channels": C, "filters": F, "kernel_size": (3, 5), "num_layers": 2,
                      "spatial_dims": 2, "dtype": "float32", "dropout": 0.25, "n_jobs": None,
                      "unit_forget_bias": False}
    twin = clstm.ConvLSTM(**config).load_state_dict(net.state_dict())
    X = maps().astype(np.float32)
    out = net.forward(X)[0]
    np.testing.assert_array_equal(twin.forward(X)[0], out)
    back = pickle.loads(pickle.dumps(net))
    np.testing.assert_array_equal(back.forward(X)[0], out)
    assert back.get_config() == config
    assert "ConvLSTM(2, 3, kernel_size=(3, 5), num_layers=2" in repr(net)
    # state_dict hands out copies; load_state_dict copies too
    sd = net.state_dict()
    sd["bias_l0"][:] = 7
    assert not (net.params["bias_l0"] == 7).any()


def test_backward_needs_its_forward():
    net = net2d()
    with pytest.raises(RuntimeError, match="preceding forward"):
        net.backward(np.zeros((2, 3, 5, 4, F)))
    out, _ = net.forward(maps())
    net.params["kernel_l0"] += 0.1
    with pytest.raises(RuntimeError, match="modified in place"):
        net.backward(np.ones_like(out))


# -- refusals -------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,error,match", [
    (dict(kernel_size=2), ValueError, "odd"),
    (dict(kernel_size=(3, 4)), ValueError, "odd"),
    (dict(kernel_size=(3, 3, 3)), ValueError, "tuple of 2 ints"),
    (dict(kernel_size=0), ValueError, "odd and positive"),
    (dict(kernel_size=3.0), ValueError, "int or a tuple"),
    (dict(kernel_size=3, spatial_dims=3), ValueError, "spatial_dims must be 1 or 2"),
    (dict(kernel_size=(3, 3), spatial_dims=1), ValueError, "tuple of 1 ints"),
    (dict(kernel_size=3, peephole=True), ValueError, "no peepholes"),
    (dict(kernel_size=3, bidirectional=True), ValueError, "unidirectional"),
    (dict(kernel_size=3, unit_forget_bias=1), TypeError, "unit_forget_bias"),
    (dict(kernel_size=3, dropout=1.0), ValueError, "dropout"),
])
def test_bad_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        clstm.ConvLSTM(C, F, **kwargs)


@pytest.mark.parametrize("args,match", [((0, F), "in_channels"), ((C, 2.5), "filters"),
                                        ((C, True), "filters")])
def test_bad_sizes_are_named(args, match):
    with pytest.raises((TypeError, ValueError), match=match):
        clstm.ConvLSTM(*args, 3)


def test_bad_inputs():
    net = net2d()
    with pytest.raises(ValueError, match=r"5-D \(batch, T, height, width, channels\)"):
        net.forward(np.zeros((2, 3, 5, C)))
    with pytest.raises(ValueError, match="4-D \\(batch, T, width, channels\\)"):
        clstm.ConvLSTM(C, F, 3, spatial_dims=1).forward(np.zeros((2, 3, 5, 4, C)))
    with pytest.raises(ValueError, match="3 channels.*in_channels=2"):
        net.forward(np.zeros((2, 3, 5, 4, 3)))
    with pytest.raises(ValueError, match="at least one"):
        net.forward(np.zeros((2, 3, 0, 4, C)))
    for bad in (np.nan, np.inf):
        X = maps()
        X[1, 2, 0, 0, 1] = bad
        with pytest.raises(ValueError, match="NaN or infinite"):
            net.forward(X)
    with pytest.raises(ValueError, match=r"h0 must have shape .* \(1, 2, 5, 4, 3\)"):
        net.forward(maps(), h0=np.zeros((1, 2, 4, 5, F)))
    with pytest.raises(ValueError, match="c0 contains"):
        net.forward(maps(), c0=np.full((1, 2, 5, 4, F), np.nan))
    with pytest.raises(ValueError, match="lengths"):
        net.forward(maps(), lengths=[0, 3])
    out, _ = net.forward(maps())
    with pytest.raises(ValueError, match="grad_out has shape"):
        net.backward(out[:, :, :4])
    with pytest.raises(ValueError, match="grad_h_n must have shape"):
        net.backward(out, grad_h_n=np.zeros((2, 5, 4, F)))
    with pytest.raises(ValueError, match="x_t must be 4-D"):
        net.step(np.zeros((2, 5, 4)))


def test_load_state_dict_is_strict():
    net = net2d()
    sd = net.state_dict()
    with pytest.raises(ValueError, match="missing keys"):
        net.load_state_dict({k: v for k, v in sd.items() if k != "bias_l0"})
    with pytest.raises(ValueError, match="shape"):
        net.load_state_dict(dict(sd, kernel_l0=np.zeros((3, 3, C + 1, 4 * F))))
    with pytest.raises(ValueError, match="NaN"):
        net.load_state_dict(dict(sd, bias_l0=np.full(4 * F, np.nan)))


def test_generic_run_interface():
    """run() / backward_state(): what models and persistence call on every network."""
    net = net2d()
    X = maps()
    out, (h_n, c_n) = net.forward(X)
    out2, (h2, c2) = net.run(X, keep_cache=False)
    np.testing.assert_array_equal(out2, out)
    np.testing.assert_array_equal(c2, c_n)
    out3, _ = net.run(X)
    np.testing.assert_array_equal(net.backward_state(np.ones_like(out3), retain_cache=True),
                                  net.backward(np.ones_like(out)))
    with pytest.raises(RuntimeError, match="already run for this forward"):
        net.backward(np.ones_like(out))
    with pytest.raises(ValueError, match="tuple \\(h0, c0\\)"):
        net.run(X, (h_n,))


def test_maps_of_any_size_with_one_network():
    net = net2d()
    for shape in ((1, 1, 1, 1, C), (3, 2, 7, 2, C), (1, 4, 1, 9, C)):
        out, (h_n, c_n) = net.forward(maps(shape))
        assert out.shape == shape[:-1] + (F,) and h_n.shape == (1,) + shape[:1] + shape[2:-1] + (F,)
        np.testing.assert_array_equal(h_n[0], out[:, -1])
