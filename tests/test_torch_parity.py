"""Parity with torch.nn.LSTM(batch_first=True): outputs, final states and all gradients.

Stored fixtures (tests/fixtures/torch_lstm_*.npz, written by
fixtures/make_torch_fixtures.py) let this run without torch; the live tests,
skipped without torch, compare on fresh random inputs, check the stored
fixtures against the installed torch, and exchange weights both ways.
Packed sequences use pack_padded_sequence(enforce_sorted=False) and
pad_packed_sequence(total_length=T) on the torch side, ``lengths`` on ours.

Errors are normwise relative: max|ours - torch| / max|torch| per array.
"""

import importlib.util
import pathlib

import numpy as np
import pytest

import clstm

FIXTURES = pathlib.Path(__file__).resolve().parent / "fixtures"
FIXTURE_FILES = sorted(FIXTURES.glob("torch_lstm_*.npz"))
RTOL = {"float64": 1e-10, "float32": 1e-5}


def _maker():
    """The fixture script as a module (the torch side of the live tests)."""
    spec = importlib.util.spec_from_file_location("make_torch_fixtures",
                                                  FIXTURES / "make_torch_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _clstm_results(arrays, num_layers, bidirectional):
    """clstm.LSTM forward + backward on the arrays of a fixture."""
    dtype = arrays["X"].dtype.name
    params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    net = clstm.LSTM(arrays["X"].shape[2], params["weight_hh_l0"].shape[1],
                     num_layers=num_layers, bidirectional=bidirectional, dtype=dtype)
    net.load_state_dict(params)
    out, (h_n, c_n) = net.forward(arrays["X"], arrays.get("h0"), arrays.get("c0"),
                                  arrays.get("lengths"))
    grad_X = net.backward(arrays["grad_out"], arrays["grad_h_n"], arrays["grad_c_n"])
    result = {"out": out, "h_n": h_n, "c_n": c_n, "grad_X": grad_X,
              "grad_h0": net.grads["h0"], "grad_c0": net.grads["c0"]}
    result.update({"grad/" + k: v for k, v in net.grads.items() if k not in ("h0", "c0")})
    return result


def _assert_parity(ours, theirs, dtype):
    expected = {k for k in theirs if k in ("out", "h_n", "c_n", "grad_X", "grad_h0", "grad_c0")
                or k.startswith("grad/")}
    assert set(ours) == expected, set(ours) ^ expected
    errors = {k: _rel_err(ours[k], theirs[k]) for k in sorted(expected)}
    bad = {k: e for k, e in errors.items() if not e <= RTOL[dtype]}
    assert not bad, f"relative errors above {RTOL[dtype]}: {bad}"
    for k in expected:
        assert ours[k].dtype == np.dtype(dtype), k
    return errors


# --- stored fixtures (no torch needed) -------------------------------------------

def test_fixtures_present():
    names = {p.name for p in FIXTURE_FILES}
    assert len(names) >= 10
    assert any("packed" in n and "bi" in n for n in names)


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=[p.stem[len("torch_lstm_"):]
                                                     for p in FIXTURE_FILES])
def test_matches_stored_torch_results(path):
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    num_layers = int(arrays.pop("config/num_layers"))
    bidirectional = bool(arrays.pop("config/bidirectional"))
    arrays.pop("config/torch_version")
    theirs = {k: arrays[k] for k in list(arrays)
              if k in ("out", "h_n", "c_n", "grad_X", "grad_h0", "grad_c0")
              or k.startswith("grad/")}
    ours = _clstm_results(arrays, num_layers, bidirectional)
    _assert_parity(ours, theirs, arrays["X"].dtype.name)
    if "lengths" in arrays:
        # the fixtures hold NaN in the padding of X: it reached nothing
        assert np.isnan(arrays["X"]).any()
        for b, L in enumerate(arrays["lengths"]):
            assert np.all(ours["out"][b, L:] == 0.0)
            assert np.all(ours["grad_X"][b, L:] == 0.0)


# --- live torch ---------------------------------------------------------------

def _torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("case", list(_maker().CASES))
def test_matches_live_torch(case, dtype):
    _torch()
    maker = _maker()
    cfg = maker.CASES[case]
    arrays = maker.make_inputs(cfg, dtype, seed=1000 + list(maker.CASES).index(case))
    theirs = maker.torch_results(arrays, cfg)
    ours = _clstm_results(arrays, cfg["num_layers"], cfg["bidirectional"])
    _assert_parity(ours, theirs, dtype)


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=[p.stem[len("torch_lstm_"):]
                                                     for p in FIXTURE_FILES])
def test_stored_fixtures_agree_with_installed_torch(path):
    # the committed oracle is still what torch computes
    _torch()
    maker = _maker()
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    cfg = {"num_layers": int(arrays["config/num_layers"]),
           "bidirectional": bool(arrays["config/bidirectional"]),
           "lengths": arrays.get("lengths")}
    live = maker.torch_results(arrays, cfg)
    dtype = arrays["X"].dtype.name
    for k, v in live.items():
        assert _rel_err(v, arrays[k]) <= RTOL[dtype] / 10, k


@pytest.mark.parametrize("num_layers,bidirectional", [(1, False), (2, True), (3, True)])
def test_state_dict_names_and_shapes_equal_torch(num_layers, bidirectional):
    torch = _torch()
    ref = torch.nn.LSTM(5, 7, num_layers=num_layers, bidirectional=bidirectional,
                        batch_first=True)
    net = clstm.LSTM(5, 7, num_layers=num_layers, bidirectional=bidirectional)
    theirs = [(k, tuple(v.shape)) for k, v in ref.state_dict().items()]
    ours = [(k, v.shape) for k, v in net.state_dict().items()]
    assert ours == theirs                     # same names, shapes and order
    # torch accepts ours strictly, we accept torch's strictly
    ref.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()},
                        strict=True)
    for k, v in ref.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), net.state_dict()[k])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_load_state_dict_accepts_torch_parameters(dtype):
    torch = _torch()
    tdtype = getattr(torch, dtype)
    torch.manual_seed(0)
    ref = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True,
                        dtype=tdtype)
    named = dict(ref.named_parameters())
    assert all(p.requires_grad for p in named.values())
    net = clstm.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=dtype)
    net.load_state_dict(named)               # Parameters with requires_grad
    for k, p in named.items():
        np.testing.assert_array_equal(net.params[k], p.detach().numpy())
        assert net.params[k].dtype == np.dtype(dtype)
    # the loaded arrays are ours: changing torch's parameters later changes nothing
    snapshot = net.state_dict()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(1.0)
    for k, v in snapshot.items():
        np.testing.assert_array_equal(net.params[k], v)
    # and the detached state_dict() tensors of torch work too
    with torch.no_grad():
        for p in ref.parameters():
            p.sub_(1.0)
    net2 = clstm.LSTM(3, 4, num_layers=2, bidirectional=True, dtype=dtype)
    net2.load_state_dict(ref.state_dict())
    X = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(dtype)
    out, (h_n, c_n) = net.forward(X)
    out2, _ = net2.forward(X)
    with torch.no_grad():
        t_out, (t_h, t_c) = ref(torch.from_numpy(X))
    assert _rel_err(out, t_out.numpy()) <= RTOL[dtype]
    assert _rel_err(out2, t_out.numpy()) <= RTOL[dtype]
    assert _rel_err(h_n, t_h.numpy()) <= RTOL[dtype]
    assert _rel_err(c_n, t_c.numpy()) <= RTOL[dtype]


def test_load_state_dict_casts_torch_float32_into_float64_net():
    torch = _torch()
    ref = torch.nn.LSTM(3, 4, batch_first=True)       # float32
    net = clstm.LSTM(3, 4, dtype="float64").load_state_dict(dict(ref.named_parameters()))
    for k, p in ref.named_parameters():
        assert net.params[k].dtype == np.float64
        np.testing.assert_array_equal(net.params[k], p.detach().double().numpy())
