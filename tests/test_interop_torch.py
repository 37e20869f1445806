"""torch.nn.LSTM / GRU modules from clstm networks and back (issue 12).

- to_torch: the module computes the network's results (ragged batches through
  pack_padded_sequence, initial states, final states) for LSTM, LSTM with
  projection and GRU, 1-2 layers, uni/bidirectional, float32 and float64.
- from_torch: the weights come back bit for bit; bias=False, dropout,
  batch_first=False modules.
- Every refusal message; without torch the functions name the extra.
"""

import sys

import numpy as np
import pytest

import clstm
from clstm.interop import from_torch, to_torch

B, T, I, H, P = 5, 6, 3, 4, 2
LENGTHS = np.array([3, 6, 1, 6, 2])
RTOL = {"float32": 1e-5, "float64": 1e-12}
KINDS = {"lstm": (clstm.LSTM, {}), "lstmp": (clstm.LSTM, dict(proj_size=P)),
         "gru": (clstm.GRU, {})}


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def rel_err(ours, theirs):
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
    return float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30))


def torch_forward(torch, module, X, state, lengths):
    """The module on batch-first X with packed sequences; numpy results."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    inp = pack_padded_sequence(torch.from_numpy(X), torch.from_numpy(lengths),
                               batch_first=True, enforce_sorted=False)
    state = tuple(torch.from_numpy(s) for s in state)
    with torch.no_grad():
        out, final = module(inp, state if len(state) > 1 else state[0])
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=X.shape[1])
    final = final if isinstance(final, tuple) else (final,)
    return [out.numpy(), *(f.numpy() for f in final)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["l1", "l2"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_round_trip(torch, kind, num_layers, bidirectional, dtype):
    cls, options = KINDS[kind]
    net = cls(I, H, num_layers=num_layers, bidirectional=bidirectional, dtype=dtype,
              random_state=num_layers, dropout=0.25, **options)
    module = to_torch(net)
    assert isinstance(module, torch.nn.LSTM if cls is clstm.LSTM else torch.nn.GRU)
    assert module.batch_first and not module.training
    assert module.dropout == (0.25 if num_layers > 1 else 0.0)    # torch: between layers
    assert module.weight_ih_l0.dtype == getattr(torch, dtype)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((B, T, I)).astype(dtype)
    sizes = net._state_sizes()
    state = tuple(rng.standard_normal((num_layers * net.num_directions, B, sizes[s]))
                  .astype(dtype) for s in net.state_names)
    out, final = net.run(X, state, LENGTHS, keep_cache=False)
    theirs = torch_forward(torch, module, X, state, LENGTHS)
    for name, o, t in zip(("out", "h_n", "c_n"), [out, *final], theirs):
        assert rel_err(o, t) <= RTOL[dtype], name
    back = from_torch(module)
    assert type(back) is cls and np.dtype(back.dtype) == np.dtype(dtype)
    config = net.get_config()
    if num_layers == 1:
        config["dropout"] = 0.0              # torch warns about (and ignores) it there
    assert back.get_config() == config
    for name, value in net.state_dict().items():
        np.testing.assert_array_equal(back.params[name], value, err_msg=name)


def test_from_torch_options(torch):
    torch.manual_seed(0)
    module = torch.nn.GRU(I, H, num_layers=2, bias=False, batch_first=False)
    net = from_torch(module)
    assert all(np.all(v == 0) for k, v in net.params.items() if k.startswith("bias_"))
    X = np.random.default_rng(1).standard_normal((B, T, I)).astype(np.float32)
    with torch.no_grad():                    # batch_first=False: time-major
        theirs = module(torch.from_numpy(X.transpose(1, 0, 2).copy()))[0].numpy()
    assert rel_err(net.run(X, keep_cache=False)[0], theirs.transpose(1, 0, 2)) <= 1e-5
    assert np.dtype(from_torch(module, dtype="float64").dtype) == np.float64
    half = torch.nn.LSTM(I, H).to(torch.bfloat16)
    assert np.dtype(from_torch(half).dtype) == np.float32


@pytest.mark.parametrize("options, names", [
    (dict(peephole=True), "peephole"), (dict(coupled_gates=True), "coupled_gates"),
    (dict(layer_norm=True, peephole=True), "peephole / layer_norm"),
])
def test_to_torch_refuses_cells_torch_lacks(torch, options, names):
    with pytest.raises(ValueError, match=f"torch.nn.LSTM has no {names} option"):
        to_torch(clstm.LSTM(I, H, **options))


def test_type_refusals(torch):
    with pytest.raises(TypeError, match="from_torch takes a torch.nn.LSTM or torch.nn.GRU, an "
                                        "EstimatorModule or a pair .*, got RNN"):
        from_torch(torch.nn.RNN(I, H))
    with pytest.raises(TypeError, match="to_torch takes a clstm.LSTM or clstm.GRU network or a "
                                        "fitted LSTMRegressor / LSTMClassifier, got str"):
        to_torch("net")


def test_without_torch_the_functions_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    message = r"needs the optional package 'torch'.*pip install 'clstm-learn\[torch\]'"
    with pytest.raises(ImportError, match="clstm.interop.to_torch " + message):
        to_torch(clstm.GRU(I, H))
    with pytest.raises(ImportError, match="clstm.interop.from_torch " + message):
        from_torch(None)
